"""What one recipe run owns (lightning_recipes/runs.py): its own directory and config; a stopped run exits
non-zero with a crash checkpoint that resumes, and Lightning's SLURM requeue still works.
"""

from __future__ import annotations

import csv
import os
import re
import shlex
import signal
import time
from pathlib import Path

import pytest
import torch
import yaml
from cli_process import start_run, stop, wait_for_epoch

from lightning_recipes.cli import main

# ---- a killed run does not report success (issue 10) ---------------------------------------------


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stopped_run_exits_non_zero_with_a_crash_checkpoint_that_resumes(
    tiny_recipe, tmp_path, capsys, signum, code
):
    proc = start_run(tiny_recipe, tmp_path, "--trainer.max_epochs=10000")
    wait_for_epoch(proc, tmp_path / "run", 1, tmp_path)
    assert stop(proc, signum) == code
    err = (tmp_path / "stderr.txt").read_text()
    (crash,) = (tmp_path / "run").rglob("on_exception.ckpt")
    saved = f"checkpoint saved: resume with --ckpt_path={re.escape(str(crash))}"
    match = re.search(rf"Stopped by {signum.name} at epoch (\d+), step (\d+); {saved}", err)
    assert match, err[-3000:]
    state = torch.load(crash, weights_only=False, map_location="cpu")
    epoch, step = state["epoch"], state["global_step"]
    assert (epoch, step) == tuple(map(int, match.groups())) and epoch >= 1 and step >= 3
    assert "Best checkpoint:" not in (tmp_path / "stdout.txt").read_text()  # no summary of a success

    # Resuming from it goes on from the saved epoch and step and finishes (2 batches per epoch).
    args = [
        "run",
        str(tiny_recipe),
        f"--ckpt_path={crash}",
        f"--trainer.max_epochs={epoch + 2}",
        "--stages=[fit]",
    ]
    assert main(args) == 0
    run_dir = Path(re.search(r"Run directory: +(.+)", capsys.readouterr().out).group(1))
    assert run_dir != crash.parent.parent  # a new directory for the resumed run
    with open(run_dir / "metrics.csv") as f:
        logged = {(int(row["epoch"]), int(row["step"])) for row in csv.DictReader(f) if row["epoch"]}
    # Validation after the epochs it went on with, none from the start (stopped during a validation,
    # Lightning goes on with the next epoch); steps counted on from the saved one (logged at the step
    # count of the batches done, one less than global_step after an epoch's last batch):
    assert {e for e, _ in logged} <= {epoch, epoch + 1} and epoch + 1 in {e for e, _ in logged}, logged
    assert min(s for _, s in logged) >= step - 1, (epoch, step, logged)
    assert crash.is_file() and not (run_dir / "checkpoints" / "on_exception.ckpt").exists()


def test_slurm_requeue_still_works(tiny_recipe, tmp_path):
    """Under SLURM, Lightning's SIGUSR1 handler saves hpc_ckpt_1.ckpt and requeues; SIGTERM then exits 143."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = shlex.quote(str(tmp_path / "requeued.txt"))
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" > {marker}\n')
    (bin_dir / "scontrol").chmod(0o755)
    slurm = {"SLURM_NTASKS": "1", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "recipe", "SLURM_NODELIST": "n1"}
    slurm.update(SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0")
    env = {**slurm, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    proc = start_run(tiny_recipe, tmp_path, "--trainer.max_epochs=10000", env=env)
    wait_for_epoch(proc, tmp_path / "run", 1, tmp_path)
    proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 120
    while not (tmp_path / "requeued.txt").is_file():
        assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()[-3000:]
        assert time.monotonic() < deadline, "SIGUSR1 did not requeue within 120 s"
        time.sleep(0.05)
    assert (tmp_path / "requeued.txt").read_text().split() == ["requeue", "4242"]
    assert (tmp_path / "run" / "hpc_ckpt_1.ckpt").is_file()  # in default_root_dir, where a requeued job looks
    assert stop(proc, signal.SIGTERM) == 143  # what SLURM sends to the requeued job
    stderr = (tmp_path / "stderr.txt").read_text()
    assert "Stopped by SIGTERM" in stderr, stderr[-1500:]  # the whole line when it says another cause


# ---- every run writes into its own directory (issue 10) ------------------------------------------


@pytest.mark.parametrize("logger", ["wandb", "none"])
def test_every_run_writes_into_its_own_directory(tiny_recipe, tmp_path, capsys, logger):
    recipe = yaml.safe_load(tiny_recipe.read_text())
    recipe["trainer"]["logger"] = (
        {
            "class_path": "lightning_recipes.loggers.WandbLogger",
            "init_args": {"save_dir": str(tmp_path / "run"), "project": "p", "offline": True},
        }
        if logger == "wandb"
        else False
    )
    recipe["trainer"]["callbacks"].append(
        {"class_path": "lightning_recipes.callbacks.CurveLogger", "init_args": {"thresholds": 11}}
    )
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    runs = []
    for epochs in (1, 2):
        assert main(["run", str(path), f"--trainer.max_epochs={epochs}", "--stages=[fit]"]) == 0
        if logger == "wandb":
            import wandb

            wandb.finish()  # each `lightning run` is its own process
        out = capsys.readouterr().out
        printed = dict(line.split(":", 1) for line in out.splitlines() if re.match(r"[A-Z][a-z ]+: ", line))
        runs.append({key: value.strip() for key, value in printed.items()})
    first, second = (Path(run["Run directory"]) for run in runs)
    assert first != second and first.parent == second.parent
    for run, run_dir, epochs in zip(runs, (first, second), (1, 2), strict=True):
        assert Path(run["Config"]) == run_dir / "config.yaml"
        assert yaml.safe_load(Path(run["Config"]).read_text())["trainer"]["max_epochs"] == epochs
        assert Path(run["Best checkpoint"]).parent == run_dir / "checkpoints"
        pngs = list(run_dir.rglob("*.png"))
        assert pngs and run["Plots"] == f"{len(pngs)} PNG files under {run_dir}"
    assert len(list(first.rglob("*.png"))) < len(list(second.rglob("*.png")))  # 2 validations, not 1


def test_a_run_never_overwrites_an_earlier_runs_config(tiny_recipe, tmp_path, capsys):
    """A fixed logger version points two runs at one folder: the second stops before training."""
    fixed = ["--trainer.logger.init_args.version=7", "--trainer.max_epochs=1"]
    assert main(["run", str(tiny_recipe), *fixed]) == 0
    config = next((tmp_path / "run").rglob("version_7/config.yaml"))
    before = config.read_text()
    assert main(["run", str(tiny_recipe), *fixed, "--model.init_args.lr=0.5"]) == 1
    assert f"{config} exists" in capsys.readouterr().err
    assert config.read_text() == before
