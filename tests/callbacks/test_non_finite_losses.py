"""NonFiniteGuard: every logged loss is checked, in training and in the evaluation stages."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from non_finite_models import INF, NAN, Poisoned, checkpoint, finite_files, fit, loader, trainer_for

from lightning_recipes.callbacks import EarlyStopping, NonFiniteGuard, TrainingDiverged, non_finite_guard


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
