"""ProgressLog: a start line, one line per epoch, every N batches and every N seconds in any stage, with the
fields a cluster user needs."""

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
    r"epoch (\d+)/3 (?:batch (\d+)/5 )?step (\d+)/15 \d+\.\d\d s/batch train/loss (\S+)"
    r"(?: val/loss (\S+) val/acc (\S+))? elapsed \d+:\d\d:\d\d eta (\d+:\d\d:\d\d|\?)$"
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
    start, *lines = out.getvalue().splitlines()
    assert start == "fit: 3 epochs of 5 batches, 15 optimizer steps; a line every 30 s and per epoch"
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


def test_lines_every_n_seconds_in_every_stage(tmp_path) -> None:
    """With a period shorter than a batch, every batch of every stage gets a line (sanity check excluded)."""
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 2, (6,))
    data = DataLoader(TensorDataset(x, y), batch_size=2)
    out = io.StringIO()
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        callbacks=[ProgressLog(every_n_seconds=1e-9, stream=out)],
    )
    model = ImageClassifier("test_resnet", num_classes=2, pretrained=False)
    trainer.fit(model, data, data)
    trainer.test(model, data)
    trainer.predict(model, data)
    lines = [line.split(" elapsed")[0] for line in out.getvalue().splitlines()]
    train = [line.split(" step")[0] for line in lines if line.startswith("epoch 1/1")]
    assert train == ["epoch 1/1 batch 1/3", "epoch 1/1 batch 2/3", "epoch 1/1"]  # the 3rd ends the epoch
    assert [line for line in lines if "validate" in line] == [
        f"epoch 1 validate batch {b}/3" for b in (1, 2, 3)
    ]
    assert [line for line in lines if line.startswith(("test", "predict"))] == [
        *(f"test batch {b}/3" for b in (1, 2, 3)),
        *(f"predict batch {b}/3" for b in (1, 2, 3)),
    ]
    training = [line for line in out.getvalue().splitlines() if line.startswith("epoch 1/1")]
    assert len(training) == 3 and all(re.search(r" \d+\.\d\d s/batch ", line) for line in training)


def test_time_and_count_periods_and_bad_values(monkeypatch) -> None:
    from lightning_recipes.callbacks import progress_log

    now = [100.0]
    monkeypatch.setattr(progress_log.time, "monotonic", lambda: now[0])
    log = ProgressLog(every_n_seconds=30, every_n_steps=7)
    log._last_line = 100.0
    now[0] = 129.0
    assert not log.due(1) and log.due(7)  # 29 s: only the count
    now[0] = 130.0
    assert log.due(1)  # 30 s since the last line
    assert not ProgressLog(every_n_seconds=0).due(5)  # neither by time nor by count
    with pytest.raises(ValueError, match="every_n_steps must be >= 0 .* got -1"):
        ProgressLog(every_n_steps=-1)
    with pytest.raises(ValueError, match="every_n_seconds must be >= 0 .* got -1"):
        ProgressLog(every_n_seconds=-1)


def test_time_per_batch_leaves_validation_out(tmp_path, monkeypatch) -> None:
    """A slow validation (0.5 s a batch here) does not count as training time in ``s/batch``. The clock
    ProgressLog reads is a fake one that each training batch moves 0.1 s and each validation batch 0.5 s,
    so the figure is exact whatever the machine's load."""
    from types import SimpleNamespace

    from lightning_recipes.callbacks import progress_log

    now = [0.0]
    monkeypatch.setattr(progress_log, "time", SimpleNamespace(monotonic=lambda: now[0]))

    class Clock(L.Callback):
        def on_train_batch_end(self, *args, **kwargs) -> None:
            now[0] += 0.1

        def on_validation_batch_end(self, *args, **kwargs) -> None:
            now[0] += 0.5

    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 2, (8,))
    data = DataLoader(TensorDataset(x, y), batch_size=4)
    out = io.StringIO()
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        callbacks=[Clock(), ProgressLog(stream=out)],
    )
    trainer.fit(ImageClassifier("test_resnet", num_classes=2, pretrained=False), data, data)
    ends = [line for line in out.getvalue().splitlines() if line.startswith("epoch 2/2")]
    # epoch 2's validation (2 x 0.5 s) comes before its end line, and is not counted: 0.1 s a batch
    assert " 0.10 s/batch " in ends[-1], out.getvalue()
