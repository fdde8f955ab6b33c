"""Lightning's EarlyStopping in lightning_recipes/_compat/_lightning.py, one test per entry.

An upgrade breaking a private API fails here, loudly, naming the library, its installed version, the
private name and the version the entry was checked against (``compat_helpers.broken``).
"""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import torch
from compat_helpers import Tiny, broken, data, params, tiny_trainer
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping

from lightning_recipes import _compat


def test_early_stopping_reason_exists_from_lightning_2_6():
    assert _compat.EarlyStoppingReason is not None, broken(
        "lightning",
        "lightning.pytorch.callbacks.early_stopping.EarlyStoppingReason (added in 2.6.0) is missing",
    )
    callback = LightningEarlyStopping(monitor="val/loss")
    assert callback.stopping_reason == _compat.EarlyStoppingReason.NOT_STOPPED, broken(
        "lightning", "EarlyStopping.stopping_reason"
    )
    _compat.set_patience_exhausted(callback)
    assert callback.stopping_reason == _compat.EarlyStoppingReason.PATIENCE_EXHAUSTED
    state = callback.state_dict()
    assert state.get("stopping_reason") == _compat.EarlyStoppingReason.PATIENCE_EXHAUSTED.value, broken(
        "lightning", f"EarlyStopping.state_dict() no longer stores the stopping reason: {state}"
    )


def test_early_stopping_reason_is_optional_before_lightning_2_6(monkeypatch):
    """lightning 2.4 and 2.5 lack EarlyStoppingReason: _compat falls back to None, no reason is set."""
    import importlib

    def reload_compat() -> None:  # the module that imports it, then the package that re-exports it
        importlib.reload(_compat._lightning)
        importlib.reload(_compat)

    import lightning.pytorch.callbacks.early_stopping as lightning_early_stopping

    monkeypatch.delattr(lightning_early_stopping, "EarlyStoppingReason")
    try:
        reload_compat()
        assert _compat.EarlyStoppingReason is None
        callback = SimpleNamespace()
        _compat.set_patience_exhausted(callback)
        assert not hasattr(callback, "stopping_reason")
    finally:
        monkeypatch.undo()
        reload_compat()
    assert _compat.EarlyStoppingReason is lightning_early_stopping.EarlyStoppingReason


def test_early_stopping_private_overrides_keep_their_contract(tmp_path):
    for name, expected in _compat.EARLY_STOPPING_OVERRIDES.items():
        method = getattr(LightningEarlyStopping, name, None)
        assert callable(method), broken("lightning", f"EarlyStopping.{name} is gone")
        assert tuple(params(method)) == expected, broken(
            "lightning", f"EarlyStopping.{name}{inspect.signature(method)}, expected parameters {expected}"
        )
    callback = LightningEarlyStopping(monitor="val/loss", patience=1)
    first, second = callback._evaluate_stopping_criteria(torch.tensor(1.0)), None
    second = callback._evaluate_stopping_criteria(torch.tensor(2.0))
    assert first[0] is False and second[0] is True and isinstance(second[1], str), broken(
        "lightning", f"_evaluate_stopping_criteria returned {first}, {second}, expected (should_stop, reason)"
    )
    assert callback.best_score.item() == 1.0 and callback.wait_count == 1, broken(
        "lightning", "_evaluate_stopping_criteria no longer updates best_score / wait_count"
    )
    calls = []

    class Probe(LightningEarlyStopping):
        def _evaluate_stopping_criteria(self, current):
            calls.append(float(current))
            return super()._evaluate_stopping_criteria(current)

    trainer = tiny_trainer(tmp_path, [Probe(monitor="val/loss")], max_epochs=2, limit_train_batches=1)
    trainer.fit(Tiny(), data(), data(16))
    assert len(calls) == 2, broken(
        "lightning", "EarlyStopping no longer calls _evaluate_stopping_criteria per check"
    )


def test_checks_on_train_epoch_end_reads_the_resolved_setting(tmp_path):
    assert (
        _compat.checks_on_train_epoch_end(LightningEarlyStopping("m", check_on_train_epoch_end=True)) is True
    )
    for every_n_epochs, expected in ((1, True), (2, False)):
        callback = LightningEarlyStopping("m")
        assert _compat.checks_on_train_epoch_end(callback) is None, broken(
            "lightning", "EarlyStopping._check_on_train_epoch_end is not the argument as given"
        )
        trainer = tiny_trainer(tmp_path, [callback], check_val_every_n_epoch=every_n_epochs)
        callback.setup(trainer, Tiny(), "fit")
        assert _compat.checks_on_train_epoch_end(callback) is expected, broken(
            "lightning", "EarlyStopping.setup no longer resolves _check_on_train_epoch_end"
        )
