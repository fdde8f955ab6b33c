"""NonFiniteGuard: a NaN/inf training loss or monitored metric stops the run with TrainingDiverged.

Skipped and tolerated steps, the guard's place among the callbacks and its arguments here; the
weights in test_non_finite_weights.py, every logged loss and the evaluation stages in
test_non_finite_losses.py, several DDP processes in test_non_finite_guard_ddp.py.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import lightning as L
import pytest
import torch
from non_finite_models import Scripted, checkpoint, fit, loader, trainer_for

from lightning_recipes.callbacks import EarlyStopping, GradientMonitor, NonFiniteGuard, TrainingDiverged


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
