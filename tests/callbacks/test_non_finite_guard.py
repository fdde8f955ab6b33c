"""NonFiniteGuard: NaN/inf weights, logged losses or monitored metrics stop the run with TrainingDiverged."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_recipes.callbacks import (
    EarlyStopping,
    GradientMonitor,
    NonFiniteGuard,
    TrainingDiverged,
    _finite,
    non_finite_guard,
)


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


def loader(batch_size: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(
        TensorDataset(torch.randn(16, 4, generator=g), torch.randint(0, 3, (16,), generator=g)), batch_size
    )


def trainer_for(tmp_path, callbacks, max_epochs=3, guard=True, **kwargs) -> L.Trainer:
    settings = {"limit_train_batches": 2, "limit_val_batches": 1, "num_sanity_val_steps": 0, **kwargs}
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        **settings,
    )
    if guard:
        NonFiniteGuard.attach(trainer)  # as the CLI does: after the Trainer is built
    return trainer


def fit(tmp_path, model, callbacks, max_epochs=3, guard=True, batch_size=8, ckpt_path=None, **kwargs):
    trainer = trainer_for(tmp_path, callbacks, max_epochs, guard, **kwargs)
    trainer.fit(model, loader(batch_size), loader(batch_size), ckpt_path=ckpt_path)
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
    copy = pickle.loads(pickle.dumps(err))
    assert copy.args == err.args and (copy.stage, copy.weights_finite) == ("fit", True)


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
    mc, monitor, es = checkpoint(tmp_path), GradientMonitor(), EarlyStopping(monitor="val/loss")
    trainer = trainer_for(tmp_path, [mc, monitor, es], guard=False)
    guard = NonFiniteGuard.attach(trainer)
    assert NonFiniteGuard.attach(trainer) is guard and guard.non_finite == "stop"
    order = [monitor, guard, es, mc]  # ahead of the callbacks that act on a value
    assert [cb for cb in trainer.callbacks if cb in order] == order
    trainer.fit(Scripted(), loader(), loader())  # Lightning keeps that order; the guard re-sorts nothing
    assert [cb for cb in trainer.callbacks if cb in order] == order
    own = NonFiniteGuard(monitor=["val/acc"])
    trainer = L.Trainer(callbacks=[own, mc], logger=False, enable_progress_bar=False)
    assert NonFiniteGuard.attach(trainer) is own
    assert own.monitored_keys(trainer) == {"val/acc": ["NonFiniteGuard"], "val/loss": ["ModelCheckpoint"]}


def test_skipped_steps_are_let_through_up_to_max_consecutive_skips(tmp_path):
    model, guard = Scripted(nan_steps={1, 2}), NonFiniteGuard("skip")
    trainer = fit(tmp_path, model, [GradientMonitor(), guard, checkpoint(tmp_path)])
    assert guard.skipped_steps == 2 and trainer.global_step == 6
    model = Scripted(nan_steps={1, 2, 3})
    guard = NonFiniteGuard("skip", max_consecutive_skips=2)
    with pytest.raises(TrainingDiverged, match=r"global step 3: the training loss is nan \(3 steps in a row"):
        fit(tmp_path, model, [GradientMonitor(), guard])
    assert guard.skipped_steps == 2 and model.backward_steps == [0, 1, 2]  # stopped before backward
    with pytest.raises(TrainingDiverged, match="global step 1"):  # without skipping: the first one
        fit(tmp_path, Scripted(nan_steps={1}), [GradientMonitor()])


class NanGradient(Scripted):
    """A finite loss whose gradients are NaN at ``grad_steps`` (0 * inf in the backward pass)."""

    def __init__(self, grad_steps) -> None:
        super().__init__()
        self.grad_steps = set(grad_steps)

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        if self.global_step in self.grad_steps:
            loss = loss + (self.head.bias * 0).sum().sqrt()  # d sqrt(x)/dx at 0: inf, times 0: NaN
        return loss


@pytest.mark.parametrize("non_finite", ["skip", "tolerate"])
def test_steps_with_finite_loss_and_non_finite_gradients_are_skipped_and_bounded(tmp_path, non_finite):
    model, guard = NanGradient(grad_steps={1}), NonFiniteGuard(non_finite)
    trainer = fit(tmp_path, model, [guard])
    assert guard.skipped_steps == 1 and trainer.global_step == 6 and guard.consecutive_skips == 0
    assert all(torch.isfinite(p).all() for p in model.parameters())
    guard = NonFiniteGuard(non_finite, max_consecutive_skips=1)
    with pytest.raises(TrainingDiverged) as info:
        fit(tmp_path, NanGradient(grad_steps={1, 2}), [guard])
    assert (info.value.step, info.value.weights_finite) == (2, True)
    assert info.value.what == "the gradients are not finite (2 steps in a row; 1 skipped before this one)"
    # stop (the default): the step is taken and its NaN weights stop the run after it
    with pytest.raises(TrainingDiverged, match="global step 2: the weights are not finite after the"):
        fit(tmp_path, NanGradient(grad_steps={1}), [])


def test_tolerate_lets_an_early_stopping_key_through_unless_the_value_would_become_best(tmp_path):
    es, mc = EarlyStopping(monitor="val/loss", patience=5), checkpoint(tmp_path)
    fit(tmp_path, Scripted(val=[1.0, float("nan"), 0.5]), [es, NonFiniteGuard("tolerate"), mc])
    assert es.non_finite_count == 1 and mc.best_model_score.item() == 0.5
    es, mc = EarlyStopping(monitor="val/loss", patience=5), checkpoint(tmp_path / "b")
    with pytest.raises(TrainingDiverged, match="epoch 0, .*val/loss = nan .*Last checkpoint .*: none"):
        # no finite best yet: it would be the best
        fit(tmp_path, Scripted(val=[float("nan"), 1.0]), [es, NonFiniteGuard("tolerate"), mc])


@pytest.mark.parametrize("non_finite", ["stop", "skip"])
def test_a_monitored_nan_fails_the_run_unless_tolerated(tmp_path, non_finite):
    es = EarlyStopping(monitor="val/loss")
    with pytest.raises(
        TrainingDiverged, match=r"epoch 1, .*val/loss = nan \(monitored by EarlyStopping, ModelCheckpoint\)"
    ):
        guard = NonFiniteGuard(non_finite)
        fit(tmp_path, Scripted(val=[1.0, float("nan")]), [guard, es, checkpoint(tmp_path)])
    assert es.non_finite_count == es.wait_count == 0  # the guard, listed first, decided first


def test_tolerate_refuses_an_early_stopping_that_would_stop_on_nan_itself(tmp_path):
    from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping

    es = LightningEarlyStopping(monitor="val/loss")  # check_finite=True: it would decide too
    with pytest.raises(ValueError, match=r"non_finite='tolerate'.*check_finite=True.*check_finite=False"):
        fit(tmp_path, Scripted(), [es, NonFiniteGuard("tolerate")])
    es = LightningEarlyStopping(monitor="val/loss", check_finite=False)
    fit(tmp_path, Scripted(val=[1.0, float("nan")]), [es, NonFiniteGuard("tolerate")])


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
    with pytest.raises(ValueError, match=r"non_finite must be 'stop', 'skip' or 'tolerate', got 'ignore'"):
        NonFiniteGuard(non_finite="ignore")


# ---- weights, every logged loss, evaluation stages (issue: a diverged run never passes) ---------------

NAN, INF = float("nan"), float("inf")


class Poisoned(Scripted):
    """Scripted with a BatchNorm in its backbone (parameters and buffers: 8 float tensors).

    After the 0-based optimizer step ``at``, ``value`` is written into the first element of ``target``
    (a parameter or buffer); ``logs`` is ``{stage: {key: per-epoch value}}``, logged per epoch in that
    stage's steps; ``epoch_loss`` also logs the training loss per step and epoch (``train/avg_loss_*``).
    """

    def __init__(self, at=None, target="head.weight", value=NAN, logs=None, epoch_loss=False, **kwargs):
        super().__init__(**kwargs)
        self.backbone = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8))
        self.at, self.target, self.value = at, target, value
        self.logs, self.epoch_loss = logs or {}, epoch_loss
        self.batches: dict[str, list] = {"train": [], "val": [], "test": [], "predict": []}

    def _log(self, stage, batch_idx):
        self.batches[stage].append((self.current_epoch, batch_idx))
        for key, values in self.logs.get(stage, {}).items():
            value = torch.tensor(float(values[min(self.current_epoch, len(values) - 1)]))
            self.log(key, value, on_step=False, on_epoch=True)

    def training_step(self, batch, batch_idx):
        self._log("train", batch_idx)
        loss = super().training_step(batch, batch_idx)
        if self.epoch_loss:
            self.log("train/avg_loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        super().validation_step(batch, batch_idx)
        self._log("val", batch_idx)

    def test_step(self, batch, batch_idx):
        self._log("test", batch_idx)

    def predict_step(self, batch, batch_idx):
        self._log("predict", batch_idx)
        return self.head(self.backbone(batch[0]))

    def configure_optimizers(self):
        optimizer = super().configure_optimizers()
        optimizer.register_step_post_hook(self._poison)
        return optimizer

    def _poison(self, optimizer, args, kwargs) -> None:
        if self.trainer.global_step == self.at:  # during step k, global_step is still k
            with torch.no_grad():
                poison(self, self.target, self.value)


def poison(module: nn.Module, target: str, value: float) -> None:
    tensors = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    tensors[target].view(-1)[0] = value


def finite_files(folder: Path) -> dict[str, bool]:
    """``{file name: every float tensor of its state_dict is finite}`` for the checkpoints in ``folder``."""
    return {
        p.name: all(
            bool(torch.isfinite(t).all())
            for t in torch.load(p, weights_only=False)["state_dict"].values()
            if t.is_floating_point()
        )
        for p in sorted(folder.glob("*.ckpt"))
    }


@pytest.mark.parametrize(
    ("target", "value"),
    [("head.weight", NAN), ("backbone.0.bias", INF), ("head.bias", -INF), ("backbone.1.running_var", INF)],
)
def test_non_finite_weights_stop_the_run_after_the_step_that_made_them(tmp_path, target, value):
    """Step 2 (epoch 1, first batch) leaves one NaN/inf in a parameter or a buffer: the run stops there,
    before the next batch, the validation and any checkpoint (also one saving every step)."""
    model, mc = Poisoned(at=2, target=target, value=value), checkpoint(tmp_path)
    steps = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1, filename="{step}"
    )
    with pytest.raises(TrainingDiverged) as info:
        fit(tmp_path, model, [mc, steps])
    err = info.value
    assert (err.epoch, err.step, err.weights_finite) == (1, 3, False)
    assert err.what == f"the weights are not finite after the optimizer step (1 of 8 tensors: {target})"
    assert model.batches["train"] == [(0, 0), (0, 1), (1, 0)] and model.batches["val"] == [(0, 0)]
    files = finite_files(tmp_path / "ckpt")
    assert files == {"best-epoch=0.ckpt": True, "last.ckpt": True, "step=1.ckpt": True, "step=2.ckpt": True}
    assert err.last_finite_checkpoint in {str(tmp_path / "ckpt" / name) for name in files}


def test_weights_are_checked_once_per_optimizer_step_under_gradient_accumulation(tmp_path, monkeypatch):
    calls: list[int] = []
    original = non_finite_guard.all_finite

    def counted(tensors):
        calls.append(1)
        return original(tensors)

    monkeypatch.setattr(non_finite_guard, "all_finite", counted)
    # 4 batches of 4 per epoch, 2 per step: 2 steps per epoch; one check at the start, one per step.
    kwargs = {"batch_size": 4, "accumulate_grad_batches": 2, "limit_train_batches": 4}
    trainer = fit(tmp_path, Poisoned(), [], max_epochs=2, **kwargs)
    assert trainer.global_step == 4 and len(calls) == 1 + 4
    # NaN written by the first step (after batches 0 and 1): stopped before batch 2.
    model = Poisoned(at=0)
    with pytest.raises(TrainingDiverged, match=r"epoch 0, global step 1: the weights are not finite after"):
        fit(tmp_path, model, [], max_epochs=2, **kwargs)
    assert model.batches["train"] == [(0, 0), (0, 1)]


@pytest.mark.parametrize("sanity_steps", [0, 1])
def test_non_finite_weights_at_the_start_refuse_the_fit(tmp_path, sanity_steps):
    model = Poisoned()
    with torch.no_grad():
        poison(model, "head.bias", NAN)
    with pytest.raises(TrainingDiverged) as info:
        fit(tmp_path, model, [], num_sanity_val_steps=sanity_steps)
    assert info.value.what == (
        "the weights of the model as built are not finite before training (1 of 8 tensors: head.bias)"
    )
    assert model.batches["train"] == model.batches["val"] == [] and not info.value.weights_finite
    # Resuming from a checkpoint whose weights are NaN: named.
    good = fit(tmp_path, Poisoned(), [], max_epochs=1)
    bad = tmp_path / "bad.ckpt"
    good.save_checkpoint(bad)
    state = torch.load(bad, weights_only=False)
    state["state_dict"]["backbone.1.running_mean"][0] = NAN
    torch.save(state, bad)
    with pytest.raises(
        TrainingDiverged, match=rf"epoch 1, global step 2: the weights loaded from {bad} are not"
    ):
        fit(tmp_path, Poisoned(), [], ckpt_path=bad, num_sanity_val_steps=sanity_steps)


class WithMask(Poisoned):
    def __init__(self, mask) -> None:
        super().__init__()
        self.register_buffer("mask", torch.tensor(mask))


def test_buffers_holding_inf_from_the_start_are_constants_but_nan_is_refused(tmp_path):
    trainer = fit(tmp_path, WithMask([0.0, -INF]), [], max_epochs=1)  # an attention-style mask
    assert trainer.global_step == 2
    with pytest.raises(TrainingDiverged, match=r"before training \(1 of 9 tensors: mask\)"):
        fit(tmp_path, WithMask([0.0, NAN]), [], max_epochs=1)


@pytest.mark.parametrize(
    ("logs", "val", "what", "epoch", "saved"),
    [
        ({"val": {"val/acc": [0.5, 0.6]}}, [1.0, NAN], "val/loss = nan", 1, [0]),  # the issue: val/acc finite
        ({"val": {"val/acc": [0.5], "val/aux_loss": [1.0, INF]}}, [1.0], "val/aux_loss = inf", 1, [0]),
        ({"val": {"val/acc": [0.5]}}, [-INF], "val/loss = -inf", 0, []),
        # a training loss logged per epoch (the backpropagated one is finite): at the training epoch's end,
        # where ModelCheckpoint saves when validation runs every epoch: epoch 2 is not saved
        (
            {"train": {"train/aux_loss": [1, 2, NAN]}, "val": {"val/acc": [0.5]}},
            [1.0],
            "train/aux_loss = nan",
            2,
            [0, 1],
        ),
    ],
)
def test_every_logged_loss_is_checked_whatever_is_monitored(tmp_path, logs, val, what, epoch, saved):
    mc = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/acc", mode="max", save_top_k=-1)
    model = Poisoned(logs=logs, val=val)
    with pytest.raises(TrainingDiverged) as info:
        fit(tmp_path, model, [mc])
    assert (info.value.what, info.value.epoch, info.value.weights_finite) == (what, epoch, True)
    files = sorted((tmp_path / "ckpt").glob("*.ckpt"))
    assert sorted(torch.load(p, weights_only=False)["epoch"] for p in files) == saved
    assert all(finite_files(tmp_path / "ckpt").values())


@pytest.mark.parametrize("stage", ["validate", "test"])
def test_a_nan_evaluation_loss_fails_the_evaluation_stage(tmp_path, stage):
    key = "val/loss" if stage == "validate" else "test/loss"
    model = Poisoned(
        logs={"val": {"val/acc": [0.5]}, "test": {"test/acc": [0.5], "test/loss": [NAN]}}, val=[NAN]
    )
    trainer = trainer_for(tmp_path, [], limit_test_batches=1)
    with pytest.raises(TrainingDiverged) as info:
        getattr(trainer, stage)(model, loader())
    err = info.value
    assert (err.stage, err.what, err.weights_finite, err.weights_from) == (stage, f"{key} = nan", True, None)
    assert str(err).startswith(f"Evaluation ({stage}) failed: {key} = nan. Weights: ")
    # finite losses: the same stage passes
    trainer = trainer_for(tmp_path, [], limit_test_batches=1)
    getattr(trainer, stage)(Poisoned(logs={"test": {"test/loss": [1.0]}}), loader())


@pytest.mark.parametrize("stage", ["validate", "test", "predict"])
def test_evaluation_refuses_non_finite_weights_naming_the_checkpoint(tmp_path, stage):
    trainer = fit(tmp_path, Poisoned(), [], max_epochs=1)
    bad = tmp_path / "bad.ckpt"
    trainer.save_checkpoint(bad)
    state = torch.load(bad, weights_only=False)
    state["state_dict"]["head.weight"][1, 2] = INF
    torch.save(state, bad)
    model = Poisoned()
    with pytest.raises(TrainingDiverged) as info:
        getattr(trainer_for(tmp_path, [], limit_test_batches=1), stage)(model, loader(), ckpt_path=bad)
    assert str(info.value) == (
        f"Evaluation ({stage}) failed: the weights are not finite (1 of 8 tensors: "
        f"head.weight). Weights: {bad}. NaN/inf weights or losses give no {stage} results; use a checkpoint "
        "with finite weights."
    )
    assert (info.value.stage, info.value.weights_from, info.value.weights_finite) == (stage, str(bad), False)
    assert model.batches["val"] == model.batches["test"] == model.batches["predict"] == []
    getattr(trainer_for(tmp_path, [], limit_test_batches=1), stage)(Poisoned(), loader(), ckpt_path=None)


def test_tolerate_lets_early_stopping_keys_through_and_nothing_else(tmp_path):
    def run(model):
        es = EarlyStopping(monitor="val/loss", patience=5)
        mc = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/acc", mode="max", save_last=True)
        return fit(tmp_path, model, [es, NonFiniteGuard("tolerate"), mc]), es

    logs = {"val": {"val/acc": [0.5, 0.6, 0.7]}}
    trainer, es = run(Poisoned(val=[1.0, NAN, 0.5], logs=logs))  # the case, made an opt-in
    assert trainer.current_epoch == 3 and es.non_finite_count == 1
    guard = next(cb for cb in trainer.callbacks if isinstance(cb, NonFiniteGuard))
    assert guard.let_through == 2  # at the validation's end and the training epoch's end
    with pytest.raises(TrainingDiverged, match="epoch 1, .*: val/aux_loss = nan"):  # another loss
        run(Poisoned(val=[1.0, NAN], logs={"val": {"val/acc": [0.5], "val/aux_loss": [1.0, NAN]}}))
    with pytest.raises(TrainingDiverged, match="epoch 1, global step 3: the weights are not finite"):
        run(Poisoned(at=2, val=[1.0, NAN], logs=logs))  # never the weights


def test_skipped_steps_tolerate_their_training_losses_but_no_validation_loss(tmp_path):
    # Step 1 (the last of epoch 0) is skipped: train/loss_step and train/loss_epoch are NaN, let through.
    guard = NonFiniteGuard("skip")
    trainer = fit(tmp_path, Poisoned(nan_steps={1}, epoch_loss=True), [guard, checkpoint(tmp_path)])
    assert guard.skipped_steps == 1 and trainer.global_step == 6
    assert all(finite_files(tmp_path / "ckpt").values())
    with pytest.raises(TrainingDiverged, match="epoch 0, global step 2: val/loss = nan"):
        fit(tmp_path, Poisoned(nan_steps={1}, val=[NAN]), [NonFiniteGuard("skip")])


@pytest.mark.parametrize(
    ("key", "loss"),
    [
        ("train/loss", True),
        ("val/loss_epoch", True),
        ("test/loss/dataloader_idx_1", True),
        ("val/nll_loss", True),
        ("Loss", True),
        ("val/acc", False),
        ("loss/val_acc", False),
        ("grad/scale", False),
    ],
)
def test_is_loss_key(key, loss):
    assert non_finite_guard.is_loss_key(key) is loss


@pytest.mark.parametrize("check", ["all_finite", "largest_abs"])  # the CPU path, the accelerator path
def test_the_weight_check_cannot_overflow_and_sees_every_nan_and_inf(check):
    big = torch.full((4,), 3e38)  # finite: a sum or 2-norm would overflow to inf
    finite = [big, -big, torch.ones(2, dtype=torch.bfloat16), torch.ones(3, dtype=torch.float16)]
    if check == "all_finite":
        ok = non_finite_guard.all_finite
        assert ok([*finite, torch.empty(0)]) and ok([])
    else:

        def ok(tensors):
            return bool(torch.isfinite(_finite.largest_abs(tensors)))

    assert ok(finite)
    for bad in (NAN, INF, -INF):
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            assert not ok([*finite, torch.tensor([1.0, bad], dtype=dtype)]), (bad, dtype)


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


DDP_WEIGHTS_SCRIPT = """
import os, sys
from datetime import timedelta
sys.path.insert(0, {tests!r})
import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy
from test_non_finite_guard import Poisoned, finite_files, loader
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
