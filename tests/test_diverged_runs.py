"""A diverged run never passes: `lightning run` exits 1, prints no summary, keeps no NaN checkpoint.

The issue's case through the real CLI and the shipped quickstart recipe: learning rates of 1e6 make the
validation loss NaN after the first step while `val/acc` (the monitored metric) stays finite, and the
BatchNorm statistics inf/NaN a step later. Stand-ins: validation and test are cut to one batch (training
is one batch per epoch already); the pretrained backbone is the zoo's, built once per session.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_recipes.callbacks import NonFiniteGuard, TrainingDiverged
from lightning_recipes.cli import main
from lightning_recipes.runs import CrashCheckpoint

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "recipes" / "quickstart.yaml"
DIVERGE = ["--model.init_args.lr=1e6", "--model.init_args.backbone_lr=1e6"]
SMALL = [
    "--trainer.limit_val_batches=1",
    "--trainer.limit_test_batches=1",
    "--trainer.enable_progress_bar=false",
]
SUMMARY = ("Run directory:", "Best checkpoint:", "Final metrics:")


def run(recipe: Path, *args: str) -> tuple[int, str, str]:
    """``lightning run RECIPE ARGS`` in this process: ``(exit code, stdout, stderr)``."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["run", str(recipe), *args])
    return code, out.getvalue(), err.getvalue()


def error_line(err: str) -> str:
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    return line


def checkpoints(root: Path) -> dict[str, bool]:
    """``{path relative to root: every floating-point tensor of its state_dict is finite}``."""
    return {
        str(p.relative_to(root)): all(
            bool(torch.isfinite(t).all())
            for t in torch.load(p, weights_only=False, map_location="cpu")["state_dict"].values()
            if t.is_floating_point()
        )
        for p in sorted(root.rglob("*.ckpt"))
    }


def recipe_monitoring(tmp_path: Path, monitor: str) -> Path:
    """The quickstart recipe, its ModelCheckpoint monitoring ``monitor`` (val/acc as shipped)."""
    text = QUICKSTART.read_text()
    shipped = "monitor: val/acc, mode: max"
    assert shipped in text
    mode = "max" if monitor.endswith("acc") else "min"
    path = tmp_path / f"quickstart_{monitor.replace('/', '_')}.yaml"
    path.write_text(text.replace(shipped, f"monitor: {monitor}, mode: {mode}"))
    return path


@pytest.fixture(scope="module")
def issue_run(tmp_path_factory) -> tuple[Path, int, str, str]:
    """The issue's command, once: ``(run root, exit code, stdout, stderr)``."""
    root = tmp_path_factory.mktemp("issue")
    cwd = os.getcwd()
    os.chdir(root)  # the recipe's runs/quickstart lands here
    try:
        return (root, *run(QUICKSTART, *DIVERGE, "--trainer.max_epochs=2", *SMALL))
    finally:
        os.chdir(cwd)


def test_the_issue_case_exits_1_with_one_line_and_no_checkpoint_of_it(issue_run):
    root, code, out, err = issue_run
    assert code == 1
    assert not any(word in out for word in SUMMARY) and "test/acc" not in out
    assert error_line(err) == (
        "error: TrainingDiverged: Training diverged at epoch 0, global step 1: val/loss = nan. Learning "
        "rates: head=1e+06, backbone=1e+06. Last checkpoint with finite monitored values: none. Lower the "
        "learning rate or clip gradients (trainer.gradient_clip_val) and run again."
    )
    # No best/last checkpoint (validation 0 had a NaN loss); the crash checkpoint's weights are finite.
    (run_dir,) = (root / "runs" / "quickstart" / "digits5to9").iterdir()
    assert checkpoints(root) == {str((run_dir / "checkpoints" / "on_exception.ckpt").relative_to(root)): True}
    assert "test/" not in (run_dir / "metrics.csv").read_text()  # no test stage ran


def test_a_test_stage_never_reports_nan_metrics(issue_run, tmp_path, monkeypatch):
    """Testing the diverged run's crash checkpoint (finite weights whose outputs are NaN) and a copy of it
    with a NaN weight: exit 1, no results table, no summary."""
    monkeypatch.chdir(tmp_path)
    (crash,) = issue_run[0].rglob("on_exception.ckpt")
    code, out, err = run(QUICKSTART, "--stages=[test]", f"--ckpt_path={crash}", *SMALL)
    assert code == 1 and not any(word in out for word in SUMMARY) and "Test metric" not in out
    assert error_line(err) == (
        f"error: TrainingDiverged: Evaluation (test) failed: test/loss = nan. Weights: {crash}. NaN/inf "
        "weights or losses give no test results; use a checkpoint with finite weights."
    )
    state = torch.load(crash, weights_only=False, map_location="cpu")
    state["state_dict"]["head.1.bias"][0] = float("nan")
    nan = tmp_path / "nan.ckpt"
    torch.save(state, nan)
    for stage in ("test", "predict"):
        code, out, err = run(QUICKSTART, f"--stages=[{stage}]", f"--ckpt_path={nan}", *SMALL)
        assert code == 1 and not any(word in out for word in SUMMARY)
        assert error_line(err).startswith(
            f"error: TrainingDiverged: Evaluation ({stage}) failed: the weights are not finite (1 of "
        )
        assert f"tensors: head.1.bias). Weights: {nan}." in err
    assert not list(tmp_path.rglob("predictions.csv"))


@pytest.mark.parametrize(
    ("epochs", "monitor"),
    [
        pytest.param(1, "val/acc", marks=pytest.mark.slow),
        pytest.param(3, "val/acc", marks=pytest.mark.slow),
        (2, "val/loss"),
        pytest.param(1, "val/loss", marks=pytest.mark.slow),
        pytest.param(3, "val/loss", marks=pytest.mark.slow),
    ],
)
def test_the_neighbours_of_the_issue_case_fail_alike(tmp_path, monkeypatch, epochs, monitor):
    """1, 2 and 3 epochs, the checkpoint monitoring val/acc (as shipped; 2 epochs: the issue) or val/loss."""
    monkeypatch.chdir(tmp_path)
    code, out, err = run(
        recipe_monitoring(tmp_path, monitor), *DIVERGE, f"--trainer.max_epochs={epochs}", *SMALL
    )
    assert code == 1 and not any(word in out for word in SUMMARY)
    by = " (monitored by ModelCheckpoint)" if monitor == "val/loss" else ""
    assert error_line(err).startswith(
        f"error: TrainingDiverged: Training diverged at epoch 0, global step 1: val/loss = nan{by}. "
    )
    assert list(checkpoints(tmp_path).values()) == [True]  # on_exception.ckpt alone, finite


def test_weights_gone_nan_leave_no_resumable_crash_checkpoint(tmp_path, monkeypatch):
    """Validation every 3rd epoch: nothing looks at the outputs until step 2, whose forward pass puts inf in
    the BatchNorm statistics and whose loss is NaN. No on_exception.ckpt of those weights."""
    monkeypatch.chdir(tmp_path)
    code, out, err = run(
        QUICKSTART, *DIVERGE, "--trainer.max_epochs=3", "--trainer.check_val_every_n_epoch=3", *SMALL
    )
    assert code == 1 and not any(word in out for word in SUMMARY)
    line = error_line(err)
    assert line.startswith(
        "error: TrainingDiverged: Training diverged at epoch 2, global step 2: the training loss is nan; "
        "the weights are not finite either ("
    )
    assert "backbone.bn1.running_var" in line
    assert (
        "Stopped by TrainingDiverged at epoch 2, step 2; no checkpoint saved (the weights are NaN/inf; last "
        "one with finite values: none)"
    ) in err
    assert checkpoints(tmp_path) == {}


class Diverging(L.LightningModule):
    """A linear model whose step 3 (0-based) writes NaN into its weights, or whose loss is NaN there."""

    def __init__(self, nan: str) -> None:
        super().__init__()
        self.layer, self.nan = nn.Linear(4, 1), nan

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        return loss * float("nan") if self.nan == "loss" and self.global_step == 3 else loss

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        optimizer.register_step_post_hook(self._after_step)
        return optimizer

    def _after_step(self, optimizer, args, kwargs) -> None:
        if self.nan == "weights" and self.global_step == 3:
            with torch.no_grad():
                self.layer.bias.fill_(float("nan"))


@pytest.mark.parametrize("nan", ["weights", "loss"])
def test_crash_checkpoint_is_written_only_for_finite_weights(tmp_path, capsys, nan):
    """CrashCheckpoint after TrainingDiverged: NaN weights are not saved as a resumable on_exception.ckpt
    (the line names the last checkpoint with finite values); finite ones (the guard stopped before the
    NaN loss's step) are, as for any exception."""
    folder = tmp_path / "checkpoints"
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=3,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[ModelCheckpoint(dirpath=folder, save_last=True), CrashCheckpoint()],
    )
    NonFiniteGuard.attach(trainer)
    data = DataLoader(TensorDataset(torch.randn(4, 4)), batch_size=2)  # 2 steps per epoch
    with pytest.raises(TrainingDiverged) as info:
        trainer.fit(Diverging(nan), data)
    assert info.value.weights_finite is (nan == "loss")
    last = folder / "last.ckpt"
    assert info.value.last_finite_checkpoint == str(last)
    err = capsys.readouterr().err
    if nan == "weights":  # stopped after step 3, at global step 4
        saved = f"no checkpoint saved (the weights are NaN/inf; last one with finite values: {last})"
        assert f"Stopped by TrainingDiverged at epoch 1, step 4; {saved}" in err
        assert checkpoints(tmp_path) == {
            "checkpoints/epoch=0-step=2.ckpt": True,
            "checkpoints/last.ckpt": True,
        }
    else:  # stopped before step 3
        saved = f"checkpoint saved: resume with --ckpt_path={folder / 'on_exception.ckpt'}"
        assert f"Stopped by TrainingDiverged at epoch 1, step 3; {saved}" in err
        assert checkpoints(tmp_path)["checkpoints/on_exception.ckpt"] is True


@pytest.mark.slow
def test_the_issue_case_under_ddp_exits_1_on_both_processes(tmp_path):
    """Lightning's launcher re-runs `lightning run ...` as rank 1; both ranks stop at the same point."""
    proc = subprocess.run(
        [
            str(Path(sys.executable).with_name("lightning")),
            "run",
            str(QUICKSTART),
            *DIVERGE,
            "--trainer.max_epochs=2",
            "--trainer.devices=2",
            "--trainer.strategy=ddp",
            *SMALL,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert not any(word in proc.stdout for word in SUMMARY)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: TrainingDiverged")]
    assert len(lines) == 2, proc.stderr[-3000:]  # one per process
    assert all("Training diverged at epoch 0, global step 1: val/loss = nan" in line for line in lines)
    assert all(checkpoints(tmp_path).values())
