"""GlobalBatch: accumulation from the world size, schedules sized from it, and clear conflicts."""

from __future__ import annotations

from functools import partial

import lightning as L
import pytest
import torch
from torch.utils.data import TensorDataset

from lightning_recipes import ImageClassifier
from lightning_recipes.callbacks import GlobalBatch
from lightning_recipes.callbacks.global_batch import accumulation
from lightning_recipes.schedulers import WarmupDecay


def data(batch_size: int | None = 4) -> L.LightningDataModule:
    dm = L.LightningDataModule.from_datasets(
        TensorDataset(torch.randn(16, 3, 32, 32), torch.randint(0, 2, (16,))), batch_size=batch_size or 4
    )
    if batch_size is not None:
        dm.batch_size = batch_size
    return dm


def trainer(tmp_path, **kwargs) -> L.Trainer:
    quiet = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    return L.Trainer(accelerator="cpu", max_epochs=2, enable_model_summary=False, default_root_dir=tmp_path,
                     **quiet, **kwargs)  # fmt: skip


def test_accumulation_keeps_the_global_batch_across_world_sizes() -> None:
    assert [accumulation(64, 8, n) for n in (1, 2, 4, 8)] == [8, 4, 2, 1]
    with pytest.raises(ValueError, match="use a global batch of 32 or 48, or another batch_size"):
        accumulation(40, 8, 2)
    with pytest.raises(ValueError, match="use a global batch of 16, or another batch_size"):
        accumulation(8, 8, 2)


def test_the_warmup_schedule_counts_optimizer_steps_of_the_global_batch(tmp_path) -> None:
    scheduler = partial(WarmupDecay, warmup_ratio=0.25)
    model = ImageClassifier("test_resnet", num_classes=2, pretrained=False, lr_scheduler=scheduler,
                            scheduler_interval="step")  # fmt: skip
    t = trainer(tmp_path, callbacks=[GlobalBatch(size=8)])
    t.fit(model, datamodule=data(4))
    (config,) = t.lr_scheduler_configs
    assert isinstance(config.scheduler, WarmupDecay)
    # 16 samples / 8 per step = 2 optimizer steps per epoch, 2 epochs: the schedule is 4 steps long
    assert (t.accumulate_grad_batches, t.global_step, config.scheduler.total_steps) == (2, 4, 4)


def test_conflicts_and_a_missing_batch_size_are_errors(tmp_path) -> None:
    model = ImageClassifier("test_resnet", num_classes=2, pretrained=False)
    t = trainer(tmp_path, callbacks=[GlobalBatch(size=8)], accumulate_grad_batches=3)
    with pytest.raises(ValueError, match=r"accumulate_grad_batches=3 and GlobalBatch\(size=8\) both set"):
        t.fit(model, datamodule=data(4))
    with pytest.raises(ValueError, match="GlobalBatch needs the per-device batch_size"):
        trainer(tmp_path, callbacks=[GlobalBatch(size=8)]).fit(model, datamodule=data(None))
    with pytest.raises(ValueError, match="must be >= 1, got 0"):
        GlobalBatch(size=0)
