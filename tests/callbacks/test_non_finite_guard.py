"""NonFiniteGuard: a NaN/inf loss or monitored metric stops fit with TrainingDiverged, never a NaN best."""

from __future__ import annotations

import pickle
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_recipes.callbacks import EarlyStopping, GradientMonitor, NonFiniteGuard, TrainingDiverged


class Scripted(L.LightningModule):
    """Head/backbone groups at different LRs; NaN losses at ``nan_steps``; ``val/loss`` scripted per epoch."""

    def __init__(self, nan_steps=(), val=(1.0,)) -> None:
        super().__init__()
        self.backbone = nn.Linear(4, 8)
        self.head = nn.Linear(8, 3)
        self.nan_steps, self.val = set(nan_steps), list(val)
        self.backward_steps: list[int] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.head(self.backbone(x)), y)
        if self.global_step in self.nan_steps:
            loss = loss * float("nan")
        self.log("train/loss", loss)
        return loss

    def on_after_backward(self) -> None:
        self.backward_steps.append(self.global_step)

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", torch.tensor(self.val[min(self.current_epoch, len(self.val) - 1)]))

    def configure_optimizers(self):
        groups = [
            {"name": "head", "params": self.head.parameters(), "lr": 0.1},
            {"name": "backbone", "params": self.backbone.parameters(), "lr": 0.01},
        ]
        return torch.optim.SGD(groups)


def loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(
        TensorDataset(torch.randn(16, 4, generator=g), torch.randint(0, 3, (16,), generator=g)), 8
    )


def fit(tmp_path, model, callbacks, max_epochs=3, guard=True, **kwargs):
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        **kwargs,
    )
    if guard:
        NonFiniteGuard.attach(trainer)  # as the CLI does: after the Trainer is built
    trainer.fit(model, loader(), loader())
    return trainer


def checkpoint(tmp_path, **kwargs) -> ModelCheckpoint:
    return ModelCheckpoint(
        dirpath=tmp_path / "ckpt", monitor="val/loss", filename="best-{epoch}", save_last=True, **kwargs
    )


def test_nan_training_loss_stops_before_the_step_with_one_message(tmp_path):
    model, mc = Scripted(nan_steps={3}), checkpoint(tmp_path)
    with pytest.raises(TrainingDiverged) as info:
        fit(tmp_path, model, [mc])
    err = info.value
    assert (err.epoch, err.step) == (1, 3)
    assert err.learning_rates == {"head": 0.1, "backbone": 0.01}
    assert err.last_finite_checkpoint == str(tmp_path / "ckpt" / "last.ckpt")
    message = str(err)
    assert "\n" not in message
    assert message.startswith("Training diverged at epoch 1, global step 3: the training loss is nan.")
    assert "Learning rates: head=0.1, backbone=0.01." in message
    assert f"Last checkpoint with finite monitored values: {tmp_path / 'ckpt' / 'last.ckpt'}." in message
    assert model.backward_steps == [0, 1, 2]  # stopped before the NaN backward pass and optimizer step
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert pickle.loads(pickle.dumps(err)).args == err.args


def test_nan_at_the_first_step_names_no_checkpoint(tmp_path):
    with pytest.raises(TrainingDiverged, match="epoch 0, global step 0: .* Last checkpoint .*: none"):
        fit(tmp_path, Scripted(nan_steps={0}), [checkpoint(tmp_path)])


@pytest.mark.parametrize(("values", "epoch"), [([1.0, float("-inf")], 1), ([float("nan")], 0)])
def test_non_finite_monitored_value_never_becomes_the_best_checkpoint(tmp_path, values, epoch):
    # Lightning alone: -inf (mode min) becomes the best score; a first NaN becomes the best checkpoint.
    mc = checkpoint(tmp_path / "plain")
    fit(tmp_path, Scripted(val=values), [mc], max_epochs=2, guard=False)
    assert not torch.isfinite(mc.best_model_score)
    # With the guard: the run stops before ModelCheckpoint records the value.
    mc = checkpoint(tmp_path)
    with pytest.raises(TrainingDiverged, match=rf"epoch {epoch}, .*: val/loss = -?(nan|inf) \(monitored by "):
        fit(tmp_path, Scripted(val=values), [mc], max_epochs=2)
    saved = [
        float(torch.load(p, weights_only=False)["callbacks"][mc.state_key]["current_score"])
        for p in (tmp_path / "ckpt").glob("best-*.ckpt")
    ]
    assert all(torch.isfinite(torch.tensor(s)) for s in saved)
    if epoch == 0:
        assert mc.best_model_path == "" and mc.best_model_score is None and saved == []
    else:
        assert Path(mc.best_model_path).name == "best-epoch=0.ckpt" and mc.best_model_score.item() == 1.0


def test_guard_runs_before_checkpoint_callbacks_and_is_attached_once(tmp_path):
    mc = checkpoint(tmp_path)
    trainer = L.Trainer(callbacks=[mc], logger=False, enable_progress_bar=False)
    guard = NonFiniteGuard.attach(trainer)
    assert NonFiniteGuard.attach(trainer) is guard
    assert trainer.callbacks.index(guard) < trainer.callbacks.index(mc)
    own = NonFiniteGuard(monitor=["val/acc"])
    trainer = L.Trainer(callbacks=[own, mc], logger=False, enable_progress_bar=False)
    assert NonFiniteGuard.attach(trainer) is own
    assert own.monitored_keys(trainer) == {"val/acc": ["NonFiniteGuard"], "val/loss": ["ModelCheckpoint"]}


def test_skipped_steps_are_let_through_up_to_max_consecutive_skips(tmp_path):
    model, monitor = Scripted(nan_steps={1, 2}), GradientMonitor(skip_non_finite=True)
    trainer = fit(tmp_path, model, [monitor, checkpoint(tmp_path)])
    assert monitor.skipped_steps == 2 and trainer.global_step == 6
    model = Scripted(nan_steps={1, 2, 3})
    guard = NonFiniteGuard(max_consecutive_skips=2)
    with pytest.raises(TrainingDiverged, match=r"global step 3: the training loss is nan \(3 steps in a row"):
        fit(tmp_path, model, [GradientMonitor(skip_non_finite=True), guard])
    with pytest.raises(TrainingDiverged, match="global step 1"):  # without skipping: the first one
        fit(tmp_path, Scripted(nan_steps={1}), [GradientMonitor()])


def test_early_stopping_ignore_is_honoured_unless_the_value_would_become_best(tmp_path):
    es, mc = EarlyStopping(monitor="val/loss", non_finite="ignore", patience=5), checkpoint(tmp_path)
    fit(tmp_path, Scripted(val=[1.0, float("nan"), 0.5]), [es, mc])
    assert es.non_finite_count == 1 and mc.best_model_score.item() == 0.5
    es, mc = EarlyStopping(monitor="val/loss", non_finite="ignore", patience=5), checkpoint(tmp_path / "b")
    with pytest.raises(TrainingDiverged, match="epoch 0, .*val/loss = nan .*Last checkpoint .*: none"):
        fit(tmp_path, Scripted(val=[float("nan"), 1.0]), [es, mc])  # no finite best yet: it would be the best


def test_early_stopping_stop_policy_also_fails_the_run(tmp_path):
    es = EarlyStopping(monitor="val/loss", non_finite="stop")
    with pytest.raises(
        TrainingDiverged, match=r"val/loss = nan \(monitored by EarlyStopping, ModelCheckpoint\)"
    ):
        fit(tmp_path, Scripted(val=[1.0, float("nan")]), [es, checkpoint(tmp_path)])


def test_a_finite_run_is_unchanged(tmp_path):
    torch.manual_seed(0)
    a, b = Scripted(), Scripted()
    b.load_state_dict(a.state_dict())
    fit(tmp_path, a, [], guard=False)
    trainer = fit(tmp_path, b, [])
    assert any(isinstance(cb, NonFiniteGuard) for cb in trainer.callbacks)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


def test_bad_argument():
    with pytest.raises(ValueError, match="max_consecutive_skips"):
        NonFiniteGuard(max_consecutive_skips=-1)


DDP_SCRIPT = """
import os, sys
sys.path.insert(0, {tests!r})
import lightning as L
from test_non_finite_guard import Scripted, loader
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
