"""EarlyStopping: missing monitor key fails at the first validation, NaN/inf as no improvement (what a NaN
does is NonFiniteGuard's decision), state in checkpoints."""

from __future__ import annotations

import logging

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_recipes.callbacks import EarlyStopping, NonFiniteGuard, TrainingDiverged


class Scripted(L.LightningModule):
    """Logs ``val/loss`` from a script of values, one per validation epoch."""

    def __init__(self, values: list[float]) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)
        self.values = values
        self.train_steps = 0

    def training_step(self, batch, batch_idx):
        self.train_steps += 1
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        value = self.values[min(self.current_epoch, len(self.values) - 1)]
        self.log("val/loss", torch.tensor(value))
        self.log("val/acc", torch.tensor(0.5))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def data() -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)


def fit(tmp_path, model, callback, max_epochs=10, ckpt_path=None, **kwargs):
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        callbacks=callback if isinstance(callback, list) else [callback],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=str(tmp_path),
        limit_train_batches=1,
        limit_val_batches=1,
        **kwargs,
    )
    trainer.fit(model, data(), data(), ckpt_path=ckpt_path)
    return trainer


@pytest.mark.parametrize("strict", [True, False])
def test_unknown_monitor_fails_at_sanity_check_with_logged_keys(tmp_path, strict):
    model = Scripted([1.0])
    with pytest.raises(ValueError, match=r"'val/los'.*\['val/acc', 'val/loss'\].*Did you mean 'val/loss'"):
        fit(tmp_path, model, EarlyStopping(monitor="val/los", strict=strict), num_sanity_val_steps=1)
    assert model.train_steps == 0  # failed before any training


def test_unknown_monitor_without_sanity_check_fails_at_first_validation(tmp_path):
    model = Scripted([1.0])
    with pytest.raises(ValueError, match="val/accuracy.*Logged keys"):
        fit(tmp_path, model, EarlyStopping(monitor="val/accuracy", mode="max"), num_sanity_val_steps=0)
    assert model.train_steps == 1


def test_train_key_is_accepted(tmp_path):
    trainer = fit(
        tmp_path,
        Scripted([1.0]),
        EarlyStopping(monitor="train/loss", patience=100),
        max_epochs=2,
        num_sanity_val_steps=1,
    )
    assert trainer.current_epoch == 2


def stop_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("EarlyStopping:")]


def test_patience_stops_training(tmp_path, caplog):
    es = EarlyStopping(monitor="val/loss", patience=2)
    with caplog.at_level(logging.INFO):
        trainer = fit(tmp_path, Scripted([3.0, 2.0, 2.5, 2.6, 1.0]), es)
    assert es.stopped_epoch == 3 and trainer.current_epoch == 4
    assert es.best_score.item() == 2.0
    assert stop_lines(caplog) == [
        "EarlyStopping: stopped training at epoch 3: "
        "val/loss = 2.6 did not improve on 2 for 2 checks (patience 2)."
    ]


def test_a_nan_stops_the_run_by_the_guards_decision(tmp_path, caplog):
    es = EarlyStopping(monitor="val/loss", patience=5)
    with caplog.at_level(logging.INFO), pytest.raises(TrainingDiverged) as info:
        fit(tmp_path, Scripted([3.0, float("nan"), 1.0]), [es, NonFiniteGuard()])  # guard: non_finite="stop"
    # at the validation's end, before EarlyStopping's check at the training epoch's end: it saw no NaN
    assert info.value.epoch == 1 and es.non_finite_count == es.wait_count == 0
    assert info.value.what == "val/loss = nan (monitored by EarlyStopping)"
    assert stop_lines(caplog) == []  # EarlyStopping itself never stops on a NaN/inf


def test_without_a_guard_nan_never_stops_training_here(tmp_path):
    es = EarlyStopping(monitor="val/loss", patience=5)
    assert es.check_finite is False
    trainer = fit(tmp_path, Scripted([3.0, float("nan"), 1.0]), es, max_epochs=3)
    assert trainer.current_epoch == 3 and es.non_finite_count == 1 and es.best_score.item() == 1.0
    with pytest.raises(TypeError, match="check_finite"):  # no second place deciding what a NaN does
        EarlyStopping(monitor="val/loss", check_finite=True)


def test_tolerated_non_finite_values_count_as_no_improvement(tmp_path, caplog):
    es = EarlyStopping(monitor="val/loss", patience=3)
    values = [3.0, float("nan"), float("-inf"), 1.0, 2.0, 2.0, 2.0]
    with caplog.at_level(logging.INFO):
        trainer = fit(tmp_path, Scripted(values), [es, NonFiniteGuard("tolerate")])
    assert es.non_finite_count == 2
    assert es.best_score.item() == 1.0  # -inf never became the best score; 1.0 at epoch 3 reset the wait
    assert es.stopped_epoch == 6 and trainer.current_epoch == 7
    assert stop_lines(caplog) == [
        "EarlyStopping: stopped training at epoch 6: "
        "val/loss = 2 did not improve on 1 for 3 checks (patience 3)."
    ]


def test_thresholds_and_no_stop_say_it(tmp_path, caplog):
    es = EarlyStopping(monitor="val/loss", stopping_threshold=1.5)
    with caplog.at_level(logging.INFO):
        fit(tmp_path, Scripted([3.0, 1.0]), es)
    assert stop_lines(caplog) == [
        "EarlyStopping: stopped training at epoch 1: val/loss = 1 reached stopping_threshold 1.5."
    ]
    caplog.clear()
    es = EarlyStopping(monitor="val/loss", patience=0, divergence_threshold=5.0)
    with caplog.at_level(logging.INFO):
        fit(tmp_path, Scripted([3.0, 2.0, 9.0]), es)
    assert stop_lines(caplog) == [
        "EarlyStopping: stopped training at epoch 2: val/loss = 9 crossed divergence_threshold 5.0."
    ]
    caplog.clear()
    with caplog.at_level(logging.INFO):
        fit(tmp_path, Scripted([3.0, 2.0]), EarlyStopping(monitor="val/loss"), max_epochs=2)
    assert stop_lines(caplog) == []  # ran to max_epochs: nothing to explain


def test_missing_monitor_hint_reads_naturally():
    err = EarlyStopping(monitor="val/los")._missing_monitor_error({"val/loss": 1.0})
    assert str(err).endswith("Set `monitor` to one of them (e.g. `val/loss`, `val/acc`).")


def test_state_is_in_checkpoint_and_restored(tmp_path):
    es = EarlyStopping(monitor="val/loss", patience=3)
    trainer = fit(
        tmp_path, Scripted([3.0, float("nan"), 4.0]), [es, NonFiniteGuard("tolerate")], max_epochs=3
    )
    path = tmp_path / "es.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=False)["callbacks"][es.state_key]
    assert saved["wait_count"] == 2 and saved["non_finite_count"] == 1 and float(saved["best_score"]) == 3.0

    resumed = EarlyStopping(monitor="val/loss", patience=3)
    trainer = fit(
        tmp_path,
        Scripted([3.0, float("nan"), 4.0, 5.0, 0.5]),
        [resumed, NonFiniteGuard("tolerate")],
        max_epochs=10,
        ckpt_path=path,
    )
    # one more epoch without improvement exhausts the patience carried over from the checkpoint
    assert resumed.stopped_epoch == 3 and trainer.current_epoch == 4
