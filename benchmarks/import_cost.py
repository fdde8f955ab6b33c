"""What ``from lightning_recipes import ImageClassifier`` costs, this tree beside a baseline commit.

Issue #20 split the package into a core that only trains and an application on top; importing one public
class should load only what that class needs. For each tree (this checkout and ``--baseline``, a git
revision extracted with ``git archive`` into a temporary folder) the script runs, in fresh interpreters
taking turns so that machine load falls on both alike::

    python -X importtime -c "from lightning_recipes import ImageClassifier"

and prints one row per tree: the ``lightning_recipes`` modules loaded, the whole import's time (median
and range over ``--repeats``; almost all of it is torch, Lightning and what they load), the package's own
part (the self time of its modules) and the size of ``lightning_recipes/`` (``.py`` files and lines).

Run from the checkout (git needed for the baseline)::

    python benchmarks/import_cost.py                 # 7 repeats per tree, baseline 79cedb9 (before #20)
    python benchmarks/import_cost.py --smoke         # 1 repeat each, baseline HEAD: the code path only
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STATEMENT = "from lightning_recipes import ImageClassifier"
#: The last commit before issue #20's two floors.
BASELINE = "79cedb9"


def extract(revision: str, folder: Path) -> Path:
    """``lightning_recipes/`` of git ``revision`` written under ``folder``; returns ``folder``."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", revision, "lightning_recipes"],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        raise SystemExit(
            f"error: cannot read revision {revision!r} from {REPO} with git archive "
            f"({archive.stderr.decode().strip()}); run from a git clone or pass --baseline REV"
        )
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def import_once(root: Path) -> tuple[int, float, float]:
    """``(package modules loaded, total s, the package's own s)`` of one fresh import from ``root``."""
    code = (
        f"{STATEMENT}\nimport sys\n"
        "print(sum(m == 'lightning_recipes' or m.startswith('lightning_recipes.') for m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, env=env, cwd=root
    )
    if proc.returncode != 0:
        raise SystemExit(f"error: the import failed in {root}:\n{proc.stderr[-2000:]}")
    total = own = 0
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        fields = line.removeprefix("import time:").split("|")
        self_us, cumulative_us, name = int(fields[0]), int(fields[1]), fields[2]
        if not name.startswith("  "):  # a top-level import: its cumulative time counts once
            total += cumulative_us
        if name.strip().split(".")[0] == "lightning_recipes":
            own += self_us
    return int(proc.stdout.strip().splitlines()[-1]), total / 1e6, own / 1e6


def size(root: Path) -> tuple[int, int]:
    """``(.py files, lines)`` of ``root/lightning_recipes``."""
    files = sorted((root / "lightning_recipes").rglob("*.py"))
    return len(files), sum(len(path.read_text().splitlines()) for path in files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--baseline", help=f"git revision to compare with (default: {BASELINE}; HEAD with --smoke)"
    )
    parser.add_argument("--repeats", type=int, default=7, help="fresh imports per tree, taking turns")
    parser.add_argument("--smoke", action="store_true", help="1 repeat per tree: the code path only")
    args = parser.parse_args()
    repeats = 1 if args.smoke else args.repeats
    baseline = args.baseline or ("HEAD" if args.smoke else BASELINE)  # a shallow clone has HEAD
    with tempfile.TemporaryDirectory() as tmp:
        trees = {f"baseline {baseline}": extract(baseline, Path(tmp)), "this tree": REPO}
        runs: dict[str, list[tuple[int, float, float]]] = {name: [] for name in trees}
        for _ in range(repeats):
            for name, root in trees.items():
                runs[name].append(import_once(root))
        sizes = {name: size(root) for name, root in trees.items()}
    print(f"`{STATEMENT}`, {repeats} fresh interpreter(s) per tree, taking turns\n")
    columns = ["tree", "package modules loaded", "import, median s (range)", "package's own, median ms"]
    print("| " + " | ".join([*columns, ".py files", "lines"]) + " |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, results in runs.items():
        modules = {count for count, _, _ in results}
        totals = [total for _, total, _ in results]
        own = statistics.median(own for _, _, own in results) * 1000
        span = f"{statistics.median(totals):.2f} ({min(totals):.2f} to {max(totals):.2f})"
        files, lines = sizes[name]
        print(
            f"| {name} | {'/'.join(map(str, sorted(modules)))} | {span} | {own:.0f} | {files} | {lines:,} |"
        )


if __name__ == "__main__":
    main()
