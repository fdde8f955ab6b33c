"""``lightning run`` in a process of its own: start it, wait for an epoch's checkpoint, stop it by a signal.

For the tests of stopped and requeued runs (``tests/test_runs.py``, ``tests/test_cluster.py``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def start_run(recipe: Path, tmp_path: Path, *overrides: str, env: dict[str, str] | None = None):
    """``lightning run RECIPE`` in a new process; stdout/stderr go to files (no pipe to fill up)."""
    out, err = (open(tmp_path / name, "w") for name in ("stdout.txt", "stderr.txt"))  # noqa: SIM115
    with out, err:
        return subprocess.Popen(
            [sys.executable, "-m", "lightning_recipes.cli", "run", str(recipe), *overrides],
            stdout=out,
            stderr=err,
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore", **(env or {})},
            # Python turns SIGINT into KeyboardInterrupt only if it is not ignored at start (nohup, CI).
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )


def stop(proc: subprocess.Popen, signum: signal.Signals) -> int:
    """Send ``signum`` to the run and return its exit code; once more after 30 s if it has not exited.

    With torch 2.5 (the oldest supported) a run that a signal reaches inside a CPU backward pass can sit
    there until another signal arrives (1 run in 8 of this test in .ci/oldest; never seen with torch
    2.15): the user presses Ctrl-C again, and so does this, once.
    """
    proc.send_signal(signum)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.send_signal(signum)
        return proc.wait(timeout=120)


def wait_for_epoch(proc: subprocess.Popen, folder: Path, epoch: int, tmp_path: Path) -> None:
    """Wait until ModelCheckpoint has saved ``epoch=<epoch or later>`` (so steps have completed)."""
    deadline = time.monotonic() + 240
    while not any(
        int(m.group(1)) >= epoch for p in folder.rglob("*.ckpt") if (m := re.match(r"epoch=(\d+)", p.name))
    ):
        assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint after 240 s"
        time.sleep(0.05)
