"""lightning run on a cluster: plain progress lines instead of a live bar, and no dependency noise."""

from __future__ import annotations

import logging
import sys
import warnings

import lightning as L
import pytest
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_info

from lightning_recipes.callbacks import ProgressLog
from lightning_recipes.cluster import progress_mode, quiet_dependency_noise, use_progress_log


class Tty:
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("tty", "env", "mode"),
    [
        (True, {}, "bar"),
        (False, {}, "log"),  # nohup, a pipe, a SLURM output file
        (True, {"SLURM_JOB_ID": "7"}, "log"),  # srun --pty still logs plainly
        (True, {"TORCHELASTIC_RUN_ID": "x"}, "log"),  # a torchrun worker
        (False, {"LIGHTNING_RECIPES_PROGRESS": "bar"}, "bar"),
        (True, {"LIGHTNING_RECIPES_PROGRESS": "LOG"}, "log"),
    ],
)
def test_progress_mode(monkeypatch, tty, env, mode) -> None:
    for name in ("SLURM_JOB_ID", "TORCHELASTIC_RUN_ID", "LIGHTNING_RECIPES_PROGRESS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if tty:
        monkeypatch.setattr(sys, "stdout", Tty())
    assert progress_mode() == mode


def test_bad_progress_setting_names_the_choices(monkeypatch) -> None:
    monkeypatch.setenv("LIGHTNING_RECIPES_PROGRESS", "rich")
    with pytest.raises(ValueError, match="LIGHTNING_RECIPES_PROGRESS='rich' is not one of 'log', 'bar'"):
        progress_mode()


def test_the_live_bar_is_replaced_only_off_a_terminal(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("LIGHTNING_RECIPES_PROGRESS", "log")
    trainer = L.Trainer(accelerator="cpu", logger=False, default_root_dir=tmp_path)
    assert isinstance(trainer.progress_bar_callback, TQDMProgressBar | L.pytorch.callbacks.RichProgressBar)
    log = use_progress_log(trainer)
    assert isinstance(log, ProgressLog) and trainer.progress_bar_callback is log
    assert sum(isinstance(cb, L.pytorch.callbacks.ProgressBar) for cb in trainer.callbacks) == 1
    off = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    assert use_progress_log(off) is None and off.progress_bar_callback is None
    monkeypatch.setenv("LIGHTNING_RECIPES_PROGRESS", "bar")
    kept = L.Trainer(accelerator="cpu", logger=False, default_root_dir=tmp_path)
    assert use_progress_log(kept) is None and not isinstance(kept.progress_bar_callback, ProgressLog)


def test_dependency_noise_is_hidden_and_other_messages_are_not(caplog) -> None:
    quiet_dependency_noise()
    with warnings.catch_warnings(record=True) as seen:
        warnings.filterwarnings("always", category=UserWarning, message="keep me")
        warnings.warn("Found 3 module(s) in eval mode at the start of training. This may ...", stacklevel=1)
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
        warnings.warn("keep me", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["keep me"]
    with caplog.at_level(logging.INFO):
        rank_zero_info("💡 Tip: For seamless cloud logging ...")
        rank_zero_info("GPU available: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False"]
