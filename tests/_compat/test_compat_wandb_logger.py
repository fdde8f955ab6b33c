"""Lightning's WandbLogger in lightning_recipes/_compat/_lightning.py, one test per entry.

An upgrade breaking a private API fails here, loudly, naming the library, its installed version, the
private name and the version the entry was checked against (``compat_helpers.broken``).
"""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest
from compat_helpers import broken, params
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger

from lightning_recipes import _compat


@pytest.fixture
def fake_wandb_init(monkeypatch):
    """``wandb.init`` returning a stand-in run (no wandb process); the kwargs of each call are recorded."""
    import wandb

    calls = []

    def init(**kwargs):
        calls.append(kwargs)
        return SimpleNamespace(id="run123", name="fake", _attach_id="attach123")

    monkeypatch.setattr(wandb, "init", init)
    monkeypatch.setattr(wandb, "run", None)
    return calls


@pytest.fixture
def wandb_logger(fake_wandb_init, tmp_path) -> LightningWandbLogger:
    return LightningWandbLogger(project="p", save_dir=str(tmp_path), tags=["t"])


def test_wandb_init_kwargs(wandb_logger):
    init_kwargs = _compat.wandb_init_kwargs(wandb_logger)
    assert (
        isinstance(init_kwargs, dict) and init_kwargs.get("project") == "p" and init_kwargs["tags"] == ["t"]
    ), broken("lightning", f"WandbLogger._wandb_init (the wandb.init kwargs) is {init_kwargs!r}")
    assert init_kwargs is _compat.wandb_init_kwargs(wandb_logger)  # the live dict, edits reach wandb.init


def test_wandb_run_pending_and_lightning_experiment(wandb_logger, fake_wandb_init):
    assert _compat.wandb_run_pending(wandb_logger), broken(
        "lightning", "WandbLogger._experiment is not None before use"
    )
    _compat.wandb_init_kwargs(wandb_logger)["mode"] = "offline"
    run = _compat.lightning_wandb_experiment(wandb_logger)
    assert run.id == "run123" and fake_wandb_init == [_compat.wandb_init_kwargs(wandb_logger)], broken(
        "lightning", "WandbLogger.experiment.fget no longer starts the run with the _wandb_init kwargs"
    )
    assert fake_wandb_init[0]["mode"] == "offline"
    assert not _compat.wandb_run_pending(wandb_logger) and wandb_logger.experiment is run, broken(
        "lightning", "WandbLogger._experiment does not hold the run"
    )
    # spawn: the pickled logger attaches to the parent's run instead of starting one (_attach_id)
    state = wandb_logger.__getstate__()
    child = LightningWandbLogger.__new__(LightningWandbLogger)
    child.__dict__.update(state)
    assert getattr(child, "_attach_id", None) == "attach123" and not _compat.wandb_run_pending(child), broken(
        "lightning", f"WandbLogger.__getstate__ no longer stores _attach_id: {sorted(state)}"
    )


def test_wandb_logged_model_times(wandb_logger):
    times = _compat.wandb_logged_model_times(wandb_logger)
    assert times == {} and times is _compat.wandb_logged_model_times(wandb_logger), broken(
        "lightning", "WandbLogger._logged_model_time (path -> mtime of uploaded checkpoints)"
    )


def test_wandb_checkpoint_artifact_name(wandb_logger, tmp_path):
    assert _compat.wandb_checkpoint_artifact_name(wandb_logger) == "model-run123", broken(
        "lightning", "WandbLogger._checkpoint_name"
    )
    assert wandb_logger._checkpoint_name == "model-run123"  # kept
    named = LightningWandbLogger(project="p", save_dir=str(tmp_path), checkpoint_name="mine")
    assert _compat.wandb_checkpoint_artifact_name(named) == "mine", broken(
        "lightning", "WandbLogger(checkpoint_name=...) no longer stored in _checkpoint_name"
    )


def test_wandb_logger_private_overrides_keep_their_contract(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    for name, expected in _compat.WANDB_LOGGER_OVERRIDES.items():
        method = getattr(LightningWandbLogger, name, None)
        assert callable(method), broken("lightning", f"WandbLogger.{name} is gone")
        assert tuple(params(method)) == expected, broken(
            "lightning", f"WandbLogger.{name}{inspect.signature(method)}, expected parameters {expected}"
        )
    calls = []

    class Probe(LightningWandbLogger):
        def _scan_and_log_checkpoints(self, checkpoint_callback):
            calls.append(checkpoint_callback)

    checkpoint = ModelCheckpoint(dirpath=tmp_path)
    Probe(project="p", save_dir=str(tmp_path), log_model="all").after_save_checkpoint(checkpoint)
    assert calls == [checkpoint], broken(
        "lightning", "after_save_checkpoint(log_model='all') no longer scans"
    )
    logger = Probe(project="p", save_dir=str(tmp_path), log_model=True)
    logger.after_save_checkpoint(checkpoint)
    logger._experiment = SimpleNamespace(id="x")  # a run exists
    logger.finalize("success")
    assert calls == [checkpoint, checkpoint], broken("lightning", "finalize(log_model=True) no longer scans")
