"""ProgressLog: one line per epoch and every N batches, with the fields a cluster user needs."""

from __future__ import annotations

import io
import re

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from lightning_recipes import ImageClassifier
from lightning_recipes.callbacks import ProgressLog

LINE = re.compile(
    r"epoch (\d+)/3 (?:batch (\d+)/5 )?step (\d+)/15 train/loss (\S+)(?: val/loss (\S+) val/acc (\S+))?"
    r" elapsed \d+:\d\d:\d\d eta (\d+:\d\d:\d\d|\?)$"
)


def test_lines_per_epoch_and_every_n_batches(tmp_path) -> None:
    torch.manual_seed(0)
    x, y = torch.randn(10, 3, 32, 32), torch.randint(0, 2, (10,))
    data = DataLoader(TensorDataset(x, y), batch_size=2)
    out = io.StringIO()
    trainer = L.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[ProgressLog(every_n_steps=2, stream=out), ModelCheckpoint(monitor="val/acc", mode="max")],
    )
    trainer.fit(ImageClassifier("test_resnet", num_classes=2, pretrained=False), data, data)
    lines = out.getvalue().splitlines()
    matches = [LINE.match(line) for line in lines]
    assert all(matches), lines
    # per epoch: batches 2 and 4 of 5, then the epoch's end with validation loss and the monitored metric
    expected = [(e, b, 5 * (e - 1) + (b or 5)) for e in (1, 2, 3) for b in (2, 4, None)]
    assert [(int(m[1]), m[2] and int(m[2]), int(m[3])) for m in matches] == expected
    end = matches[-1]
    assert float(end[6]) == pytest.approx(float(trainer.callback_metrics["val/acc"]), abs=1e-4)
    assert float(end[5]) == pytest.approx(float(trainer.callback_metrics["val/loss"]), abs=1e-4)
    assert end[7] == "0:00:00"  # nothing left after the last step
    assert all(m[5] is None for m in matches if m[2])  # mid-epoch lines carry no validation values


def test_default_interval_and_bad_value() -> None:
    class Trainer:
        num_training_batches = 1000

    assert ProgressLog().interval(Trainer()) == 100
    Trainer.num_training_batches = 99
    assert ProgressLog().interval(Trainer()) == 0 and ProgressLog(every_n_steps=7).interval(Trainer()) == 7
    with pytest.raises(ValueError, match="every_n_steps must be >= 0 .* got -1"):
        ProgressLog(every_n_steps=-1)
