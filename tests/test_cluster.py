"""lightning run on a cluster: plain progress, no dependency noise, SLURM requeue in the same run dir."""

from __future__ import annotations

import csv
import logging
import os
import signal
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from cli_process import start_run, stop, wait_for_epoch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_info

from lightning_recipes.callbacks import ProgressLog
from lightning_recipes.cluster import (
    progress_mode,
    quiet_dependency_noise,
    slurm_run_name,
    use_progress_log,
    use_slurm_run_name,
)
from lightning_recipes.recipe_cli import requeued_from
from lightning_recipes.runs import run_dir_in


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


# ---- SLURM: a requeued job continues in its run directory ------------------------------------------

SLURM = {"SLURM_NTASKS": "1", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "recipe", "SLURM_NODELIST": "n1",
         "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}  # fmt: skip


@pytest.fixture
def slurm_job(monkeypatch) -> None:
    for name, value in SLURM.items():
        monkeypatch.setenv(name, value)


def test_slurm_run_name(monkeypatch, slurm_job) -> None:
    assert slurm_run_name() == "slurm-4242"
    monkeypatch.setenv("SLURM_JOB_NAME", "interactive")  # Lightning: not a SLURM run (salloc + manual launch)
    assert slurm_run_name() is None
    monkeypatch.delenv("SLURM_JOB_NAME")
    monkeypatch.delenv("SLURM_NTASKS")
    assert slurm_run_name() is None


def test_a_slurm_job_has_one_run_directory_and_logger_version(tmp_path, slurm_job, monkeypatch) -> None:
    first, again = run_dir_in(tmp_path), run_dir_in(tmp_path)  # the job, and the job after a requeue
    assert first == again == str(tmp_path / "slurm-4242")
    earlier = tmp_path / "lightning_logs" / "slurm-4242" / "metrics.csv"  # written before a requeue
    earlier.parent.mkdir(parents=True)
    earlier.write_text("epoch,val/acc\n0,0.5\n")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    trainer = L.Trainer(accelerator="cpu", logger=CSVLogger(tmp_path), default_root_dir=tmp_path)
    assert use_slurm_run_name(trainer) == "slurm-4242" and trainer.logger.version == "slurm-4242"
    assert trainer.log_dir == str(earlier.parent)
    kept = earlier.with_name("metrics.before_requeue_2.csv")
    assert not earlier.exists() and kept.read_text() == "epoch,val/acc\n0,0.5\n"  # CSVLogger would delete it
    fixed = L.Trainer(accelerator="cpu", logger=CSVLogger(tmp_path, version=3), default_root_dir=tmp_path)
    assert use_slurm_run_name(fixed) is None and fixed.logger.version == 3  # a version given is kept


def test_outside_slurm_every_run_gets_a_new_directory(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    assert Path(run_dir_in(tmp_path)).name == "version_0" and Path(run_dir_in(tmp_path)).name == "version_1"
    trainer = L.Trainer(accelerator="cpu", logger=CSVLogger(tmp_path), default_root_dir=tmp_path)
    assert use_slurm_run_name(trainer) is None


def test_requeued_from_finds_lightnings_hpc_checkpoint(tmp_path, monkeypatch, slurm_job) -> None:
    assert requeued_from({"default_root_dir": str(tmp_path)}) is None
    (tmp_path / "hpc_ckpt_1.ckpt").write_bytes(b"")
    (tmp_path / "hpc_ckpt_2.ckpt").write_bytes(b"")
    assert requeued_from({"default_root_dir": str(tmp_path)}) == tmp_path / "hpc_ckpt_2.ckpt"
    monkeypatch.delenv("SLURM_NTASKS")
    assert requeued_from({"default_root_dir": str(tmp_path)}) is None  # not a SLURM job: no auto-resume


@pytest.mark.slow
def test_a_requeued_slurm_job_resumes_in_the_same_run_directory(tiny_recipe, tmp_path) -> None:
    """SIGUSR1: Lightning saves hpc_ckpt_1.ckpt and requeues; the job starts again and continues in place."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "requeued.txt"}\n')
    (bin_dir / "scontrol").chmod(0o755)
    env = {**SLURM, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    proc = start_run(tiny_recipe, tmp_path, "--trainer.max_epochs=10000", env=env)
    wait_for_epoch(proc, tmp_path / "run", 1, tmp_path)
    proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 120
    while not (tmp_path / "requeued.txt").is_file():
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "stderr.txt").read_text()[
            -3000:
        ]
        time.sleep(0.05)
    assert stop(proc, signal.SIGTERM) == 143  # what SLURM sends the job it requeues
    hpc = torch.load(tmp_path / "run" / "hpc_ckpt_1.ckpt", weights_only=False, map_location="cpu")
    run_dir = tmp_path / "run" / "lightning_logs" / "slurm-4242"
    assert [p.name for p in run_dir.parent.iterdir()] == ["slurm-4242"]

    # The job again (same id): Lightning resumes from hpc_ckpt_1.ckpt, in the same run directory.
    epochs = hpc["epoch"] + 2
    proc = start_run(
        tiny_recipe, tmp_path, f"--trainer.max_epochs={epochs}", env={**env, "SLURM_RESTART_COUNT": "1"}
    )
    assert proc.wait(timeout=300) == 0, (tmp_path / "stderr.txt").read_text()[-3000:]
    out = (tmp_path / "stdout.txt").read_text()
    assert f"Run directory:   {run_dir}" in out
    assert [p.name for p in run_dir.parent.iterdir()] == ["slurm-4242"]  # no second run directory
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert last["global_step"] > hpc["global_step"]  # trained on from the requeue checkpoint
    assert (
        f"Restoring states from the checkpoint path at {tmp_path / 'run' / 'hpc_ckpt_1.ckpt'}"
        in (tmp_path / "stderr.txt").read_text()
    )
    # Lightning's CSVLogger starts metrics.csv afresh; the job's own history is kept beside it.
    histories = []
    for name in ("metrics.before_requeue_1.csv", "metrics.csv"):
        with open(run_dir / name) as f:
            histories.append([int(row["epoch"]) for row in csv.DictReader(f) if row.get("val/acc")])
    before, after = histories
    # The requeued job validates again from the checkpoint's epoch on. (Real SLURM stops the first job at
    # the requeue; here it trained on until the test's SIGTERM, so its history may run past that epoch.)
    assert before[0] == 0 and before[-1] >= hpc["epoch"] - 1, histories
    assert after[0] in (hpc["epoch"], hpc["epoch"] + 1) and after[-1] == epochs - 1, histories
