"""NonFiniteGuard under DDP (2 CPU processes): every rank stops together when one diverges."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from non_finite_models import finite_files

DDP_SCRIPT = """
import os, sys
sys.path.insert(0, {tests!r})
import lightning as L
from non_finite_models import Scripted, loader
from lightning_recipes.callbacks import NonFiniteGuard, TrainingDiverged

class RankOneDiverges(Scripted):
    def training_step(self, batch, batch_idx):
        if self.global_rank == 1 and self.global_step == 2:
            self.nan_steps = {{2}}
        return super().training_step(batch, batch_idx)

trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=3, limit_train_batches=2,
                    limit_val_batches=1, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, default_root_dir={root!r})
NonFiniteGuard.attach(trainer)
model = RankOneDiverges()
try:
    trainer.fit(model, loader(), loader())
    result = "finished"
except TrainingDiverged as err:
    result = f"diverged {{err.epoch}} {{err.step}} {{err.what}} {{model.backward_steps}}"
with open(os.path.join({root!r}, f"rank{{trainer.global_rank}}.txt"), "w") as f:
    f.write(result)
"""


@pytest.mark.slow
def test_all_ddp_ranks_stop_together(tmp_path, run_script):
    """NaN on rank 1 only (a batch per rank and epoch): both processes raise at step 2, before backward."""
    run_script(DDP_SCRIPT.format(tests=str(Path(__file__).parent), root=str(tmp_path)))
    rank0, rank1 = ((tmp_path / f"rank{r}.txt").read_text() for r in (0, 1))
    assert rank0 == "diverged 2 2 the training loss is not finite on another process [0, 1]"
    assert rank1 == "diverged 2 2 the training loss is nan [0, 1]"


DDP_WEIGHTS_SCRIPT = """
import os, sys
from datetime import timedelta
sys.path.insert(0, {tests!r})
import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy
from non_finite_models import Poisoned, finite_files, loader
from lightning_recipes.callbacks import NonFiniteGuard, TrainingDiverged
from lightning_recipes.runs import CrashCheckpoint

class RankOneDiverges(Poisoned):
    def _poison(self, optimizer, args, kwargs):
        if self.global_rank == 1:
            super()._poison(optimizer, args, kwargs)

root = {root!r}
mc = ModelCheckpoint(dirpath=os.path.join(root, "ckpt"), monitor="val/loss", save_last=True)
trainer = L.Trainer(accelerator="cpu", devices=2, strategy=DDPStrategy(timeout=timedelta(seconds=60)),
                    max_epochs=3, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0,
                    logger=False, callbacks=[mc, CrashCheckpoint()], enable_progress_bar=False,
                    enable_model_summary=False, default_root_dir=root)
NonFiniteGuard.attach(trainer)
model = RankOneDiverges(at=1, target="backbone.1.running_var", value=float("nan"))
try:
    trainer.fit(model, loader(), loader())
except TrainingDiverged as err:
    with open(os.path.join(root, f"rank{{trainer.global_rank}}.txt"), "w") as f:
        f.write(f"{{err.epoch}} {{err.step}} {{err.weights_finite}} {{err.what}} {{model.batches['train']}}")
    raise
"""


@pytest.mark.slow
def test_ddp_ranks_stop_together_when_one_ranks_weights_go_nan(tmp_path):
    """Rank 1 alone writes a NaN after step 1 (a batch per rank and epoch): both processes raise there,
    the run exits non-zero, no checkpoint of NaN weights is written (on_exception.ckpt neither)."""
    script = tmp_path / "script.py"
    script.write_text(DDP_WEIGHTS_SCRIPT.format(tests=str(Path(__file__).parent), root=str(tmp_path)))
    proc = subprocess.run(
        [sys.executable, str(script)],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0 and "TrainingDiverged" in proc.stderr, proc.stderr[-3000:]
    rank0, rank1 = ((tmp_path / f"rank{r}.txt").read_text() for r in (0, 1))
    assert (
        rank0
        == "1 2 False the weights are not finite after the optimizer step on another process [(0, 0), (1, 0)]"
    )
    assert rank1 == (
        "1 2 False the weights are not finite after the optimizer step (1 of 8 tensors: "
        "backbone.1.running_var) [(0, 0), (1, 0)]"
    )
    assert "no checkpoint saved (the weights are NaN/inf; last one with finite values: " in proc.stderr
    assert not list(tmp_path.rglob("on_exception.ckpt"))
    assert finite_files(tmp_path / "ckpt") == {"epoch=0-step=1.ckpt": True, "last.ckpt": True}
