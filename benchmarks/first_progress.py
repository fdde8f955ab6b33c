"""How long a run prints nothing: seconds to its first progress line on a busy machine, this tree beside a
baseline commit.

Issue #24: on 2 cores with another job running, a run printed nothing for 11 minutes (``ProgressLog``
printed once per epoch). For each tree (this checkout and ``--baseline``, extracted with ``git archive``)
the script starts ``--load`` busy processes (another job: one per core by default), then runs, as a user
would with its output going to a file::

    lightning run recipes/image/finetune_efficientnet_local.yaml --data.init_args.root=../shared/data/dtd10
        --trainer.max_epochs=1 --trainer.logger=false

and records when each line reaches stdout, until the first line that counts batches or epochs (``epoch
...``) or ``--budget`` seconds. It prints one row per tree: seconds from the start to the first output
line of ``ProgressLog`` (``fit: ...`` in this tree) and to the first line that shows training moving.

Run from the checkout, with ``../shared`` beside it::

    python benchmarks/first_progress.py                  # baseline 6073eb0 (before #24's progress lines)
    python benchmarks/first_progress.py --batch-size 4   # 100 batches per epoch: a long, silent epoch
    python benchmarks/first_progress.py --smoke          # tiny stand-ins, no load, baseline HEAD
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from import_cost import extract

REPO = Path(__file__).resolve().parents[1]
#: The last commit before #24's progress lines (ProgressLog printed once per epoch).
BASELINE = "6073eb0"
RECIPE = "recipes/image/finetune_efficientnet_local.yaml"
ARGS = ["--data.init_args.root=../shared/data/dtd10", "--trainer.max_epochs=1", "--trainer.logger=false"]
#: The progress lines: ProgressLog's start line (this tree) and its lines that count batches or epochs.
STARTS, MOVING = ("fit: ",), ("epoch ",)


def busy(n: int) -> list[subprocess.Popen]:
    """``n`` processes that keep one core each busy (another job on the machine)."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def first_lines(root: Path, args: list[str], cwd: Path, budget: float) -> tuple[float | None, float | None]:
    """``(s to the first progress line, s to the first line showing training move)`` of one run of
    ``lightning run`` from the package in ``root`` (``None``: not within ``budget`` s); the run is
    stopped once training is seen to move."""
    # The tree's package first: `python -c` would put the working directory (this checkout) before it.
    code = f"import sys; sys.path.insert(0, {str(root)!r}); from lightning_recipes.cli import main; "
    code += "sys.exit(main())"
    command = [sys.executable, "-c", code]
    env = {
        **os.environ,
        "PYTHONPATH": str(root),
        "LIGHTNING_RECIPES_PROGRESS": "log",
        "WANDB_MODE": "offline",
    }
    start = time.monotonic()
    proc = subprocess.Popen(
        [*command, "run", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    seen: dict[str, float] = {}

    def read() -> None:
        for line in proc.stdout:
            now = time.monotonic() - start
            if line.startswith(STARTS + MOVING):
                seen.setdefault("first", now)
            if line.startswith(MOVING):
                seen.setdefault("moving", now)
                proc.terminate()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(budget)
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    return seen.get("first"), seen.get("moving")


def smoke_recipe(folder: Path) -> tuple[str, list[str]]:
    """A tiny image folder and the shipped recipe's arguments that point it at it (test_resnet, 32 px)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("a", "b"):
            (folder / "images" / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(8):
                pixels = rng.integers(0, 255, (32, 32, 3), np.uint8)
                Image.fromarray(pixels).save(folder / "images" / split / c / f"{i}.png")
    args = [
        f"--data.init_args.root={folder / 'images'}",
        "--model.init_args.model_name_or_path=test_resnet",
        "--model.init_args.pretrained=false",
        "--model.init_args.num_classes=2",
        "--data.init_args.batch_size=4",
        "--trainer.max_epochs=1",
        "--trainer.logger=false",
        f"--trainer.default_root_dir={folder / 'runs'}",
    ]
    return str(REPO / RECIPE), args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--baseline", help=f"git revision to compare with (default: {BASELINE}; HEAD with --smoke)"
    )
    parser.add_argument(
        "--load", type=int, help="busy processes beside the run (default: one per core; 0 smoke)"
    )
    parser.add_argument("--budget", type=float, default=1200.0, help="seconds to wait for a run's lines")
    parser.add_argument("--smoke", action="store_true", help="tiny stand-ins, no load: the code path only")
    parser.add_argument("--batch-size", type=int, help="the data's batch size (default: the recipe's, 32)")
    args = parser.parse_args()
    baseline = args.baseline or ("HEAD" if args.smoke else BASELINE)
    load = args.load if args.load is not None else (0 if args.smoke else os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        recipe, extra = smoke_recipe(Path(tmp)) if args.smoke else (RECIPE, ARGS)
        extra = extra + ([f"--data.init_args.batch_size={args.batch_size}"] if args.batch_size else [])
        trees = {f"baseline {baseline}": extract(baseline, Path(tmp) / "baseline"), "this tree": REPO}
        rows = {}
        for name, root in trees.items():
            others = busy(load)
            try:
                rows[name] = first_lines(root, [recipe, *extra], REPO, args.budget)
            finally:
                for proc in others:
                    proc.kill()
    size = f", batch size {args.batch_size}" if args.batch_size else ""
    print(
        f"`lightning run {RECIPE} ...`{size}, stdout to a pipe, beside {load} busy process(es), "
        f"{os.cpu_count()} cores\n"
    )
    print("| tree | first progress line, s | first line showing training move, s |")
    print("| --- | ---: | ---: |")
    for name, (first, moving) in rows.items():
        shown = [f"{s:.0f}" if s is not None else f"none in {args.budget:.0f}" for s in (first, moving)]
        print(f"| {name} | {shown[0]} | {shown[1]} |")


if __name__ == "__main__":
    main()
