"""Every script in benchmarks/ runs in its ``--smoke`` mode and prints its whole table, in finite figures.

Benchmarks are code: a script no test runs stops importing (``lm_transfer_vs_scratch.py`` did). Each one
has a ``--smoke`` mode, the same code path on tiny stand-ins (``benchmarks/_smoke.py``) that needs neither
``../shared`` nor a network; here each runs as a user runs it (a fresh process, from another folder) and
its tables are read back: every row it promises is there, every figure finite and in range. The figures
themselves mean nothing at this size, so no value is compared with a benchmark's published one.

Most of a smoke run is one core importing torch, Lightning and transformers (a fresh process per script),
so the runs start together, as many at a time as there are cores (at most 4), and each test waits for its
own.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from lightning_recipes.export._formats import onnx_unavailable
from lightning_recipes.recipes import SCENARIOS

REPO = Path(__file__).resolve().parents[1]
#: ``_``-files are helpers (``_smoke.py``), not benchmarks.
SCRIPTS = [path for path in sorted((REPO / "benchmarks").glob("*.py")) if not path.name.startswith("_")]

#: The longest smoke runs: scripts that start processes of their own (one per run or per case), and
#: ``suggest_outcomes.py`` (14 recipe runs and 4 pilots).
SPAWNING = ("lora_vs_full.py", "suggest_time.py", "suggest_outcomes.py")

ACC = (0.0, 1.0)  # an accuracy
POS = (0.0, math.inf)  # a time, a rate, a ratio, a size (0 allowed: rounded tiny figures)
ONE = (1.0, 1.0)  # the baseline against itself
PPL = (1.0, math.inf)  # a perplexity
#: ``export_speed.py`` exports and times ONNX only where ``--format onnx`` runs (not on torch < 2.7).
ONNX = onnx_unavailable() is None


def exported(tolerance: float) -> dict[str, tuple[float, float]]:
    """An export's row: its time and size, and its parity within the format's tolerance."""
    sizes = {"model MB": POS, "folder MB": POS, "vs checkpoint": POS}
    return {"export s (parity included)": POS, **sizes, "parity: max abs diff": (0.0, tolerance)}


def timed(vs: tuple[float, float], tolerance: float) -> dict[str, tuple[float, float]]:
    """A runtime's row: samples/s, the ratio to the checkpoint and samples/CPU-s at batch 1 and 32, and its
    parity."""
    batches = {
        f"batch {b} {column}": rng
        for b in (1, 32)
        for column, rng in (("samples/s", POS), ("vs checkpoint", vs), ("samples/CPU-s", POS))
    }
    return {**batches, "max abs diff of probabilities (batch 32)": (0.0, tolerance)}


EXPORT_ROWS = {
    "checkpoint (.ckpt": {"model MB": POS, "vs checkpoint": ONE},
    "own format (": exported(1e-4),
    "torchscript": exported(1e-4),
    **({"onnx": exported(1e-3)} if ONNX else {}),
}
THROUGHPUT_ROWS = {
    "checkpoint module (eager)": timed(ONE, 0.0),
    "TorchScript (torch.jit.load)": timed(POS, 1e-4),
    **({"ONNX Runtime (CPUExecutionProvider)": timed(POS, 1e-3)} if ONNX else {}),
}

#: Per script, the tables it prints in order: ``{first cell (a prefix): {column: allowed range or values}}``.
#: A column given in a table must hold a finite number in range in every row named (or one of the values).
EXPECTED: dict[str, list[dict[str, dict[str, tuple[float, float] | set[str]]]]] = {
    "distillation.py": [  # image, text, then the LM (perplexity: the ratio is the teacher's / the arm's)
        {
            arm: {
                metric: ACC if metric == "test/acc" else PPL,
                "vs teacher": ONE if arm == "teacher" else POS,
                "params": POS,
                "params vs teacher": ONE if arm == "teacher" else POS,
                "samples/s": POS,
                "speed vs teacher": ONE if arm == "teacher" else POS,
            }
            for arm in ("distilled student", "student, labels only", "teacher")
        }
        for metric in ("test/acc", "test/acc", "test/ppl")
    ],
    "export_speed.py": [EXPORT_ROWS, THROUGHPUT_ROWS] * 2,  # EfficientNet-Lite0, then MiniLM
    "feature_cache.py": [  # the image workload, then the text one
        {
            "uncached frozen epoch": {"s/epoch": POS, "vs uncached frozen epoch": ONE},
            "cached: first epoch": {"s/epoch": POS, "vs uncached frozen epoch": POS},
            "cached: later frozen epochs": {"s/epoch": POS, "vs uncached frozen epoch": POS},
        },
    ]
    * 2,
    "frozen_step_cost.py": [
        {
            "full fine-tuning": {"median s/step": POS, "vs full fine-tuning": ONE},
            "backbone frozen (FreezeUnfreeze)": {"median s/step": POS, "vs full fine-tuning": POS},
        },
    ],
    "gpu_throughput.py": [
        {
            "TextClassifier (lightning_recipes)": {"samples/s": POS},
            "Hugging Face Trainer": {"samples/s": POS},
        },
        {
            "all layers training": {"images/s": POS, "epoch cost vs all layers": ONE},
            "backbone frozen (FreezeUnfreeze)": {"images/s": POS, "epoch cost vs all layers": POS},
        },
    ],
    "first_progress.py": [
        {
            tree: {"first progress line, s": POS, "first line showing training move, s": POS}
            for tree in ("baseline HEAD", "this tree")
        },
    ],
    "import_cost.py": [
        {
            tree: {
                "package modules loaded": POS,
                "import, median s (range)": POS,
                "package's own, median ms": POS,
                ".py files": POS,
                "lines": POS,
            }
            for tree in ("baseline HEAD", "this tree")
        },
    ],
    "lm_transfer_vs_scratch.py": [
        {
            arm: {"test/ppl": PPL, "best from-scratch ppl / this": POS, "wall time (s)": POS}
            for arm in (
                "fine-tune (gpt2-mini",
                "add-layers (",
                "from scratch, LR 5e-4",
                "from scratch, LR 3e-3",
            )
        },
    ],
    "lora_vs_full.py": [
        {
            run: {
                "dev accuracy": ACC,
                "train samples/s": POS,
                "samples/CPU-s": POS,
                "peak RSS (MiB)": POS,
                "trainable params": POS,
                "checkpoint (MB)": POS,
            }
            for run in ("full fine-tuning, LR", "LoRA r=8, LR")
        },
    ],
    "mixup_dtd10.py": [
        {
            arm: {
                "test acc per seed [0]": ACC,
                "mean": ACC,
                "vs as shipped, points": (-100.0, 100.0),
                "mean wall time (s)": POS,
            }
            for arm in ("as shipped", "label smoothing 0.1", "mixup/CutMix + label smoothing 0.1")
        },
    ],
    "quickstart_transfer.py": [
        {
            arm: {"test acc per seed [0]": ACC, "mean": ACC, "mean wall time (s)": POS}
            for arm in ("transfer (resnet10t.digits04)", "from scratch")
        },
    ],
    "suggest_outcomes.py": [  # the outcomes and picks, then each run's cost
        {
            pair: {
                "similarity": (-math.inf, 1.0),
                **{scenario: ACC for scenario in ("fine-tune", "add-layers", "scratch", "adapters")},
                "frozen probe": ACC,
                "probe's pick": set(SCENARIOS),
                "regret (probe)": ACC,
                "pilot's pick": set(SCENARIOS),
                "regret (pilot)": ACC,
            }
            for pair in ("digits5-9_n10", "sst2_300")
        },
        {pair: {"wall s": POS, "trainable params": POS} for pair in ("digits5-9_n10", "sst2_300")},
    ],
    "suggest_time.py": [
        {
            case: {"wall s": POS, "CPU s": POS, "scenario": set(SCENARIOS)}
            for case in ("digits56789_n10_s0_px32", "sst2_300.tsv")
        },
        {
            "ridge classifier (suggest's)": {"s": POS, "vs ridge": ONE},
            "logistic regression": {"s": POS, "vs ridge": POS},
        },
    ],
    "text_transfer_vs_scratch.py": [
        {
            arm: {
                "params (M)": POS,
                "vocab": POS,
                "dev acc per epoch": ACC,
                "best": ACC,
                "samples/s": POS,
                "vs fine-tune": POS,
                "samples/CPU-s": POS,
            }
            for arm in ("fine-tune", "add-layers", "scratch")
        },
    ],
    "text_vs_hf_trainer.py": [
        {
            run: {
                "dev accuracy": ACC,
                "train samples/s (wall)": POS,
                "vs HF": POS,
                "samples per CPU-second": POS,
            }
            for run in (
                "HF Trainer (random batches)",
                "lightning_recipes (group_by_length)",
                "HF Trainer (group_by_length)",
                "lightning_recipes (group_by_length, mean-pooling head)",
            )
        },
    ],
}
NUMBER = re.compile(r"nan|[-+]?inf|[-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?", re.IGNORECASE)


def markdown_tables(text: str) -> list[list[list[tuple[str, str]]]]:
    """The markdown tables in ``text``: each a list of rows, each row a list of ``(column, cell)``."""
    tables: list[list[list[tuple[str, str]]]] = []
    header: list[str] | None = None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            tables.append([])
        elif not all(set(cell) <= set("-: ") for cell in cells):
            assert len(cells) == len(header), f"row {line!r} does not fit the header {header}"
            tables[-1].append(list(zip(header, cells, strict=True)))
    return tables


def check_cell(cell: str, allowed: tuple[float, float] | set[str], where: str) -> None:
    if isinstance(allowed, set):
        assert cell in allowed, f"{where}: {cell!r}, expected one of {sorted(allowed)}"
        return
    numbers = [float(n.replace(",", "")) for n in NUMBER.findall(cell)]
    assert numbers, f"{where}: no number in {cell!r}"
    low, high = allowed
    for n in numbers:
        assert math.isfinite(n) and low <= n <= high, (
            f"{where}: {cell!r} is not a finite number in [{low}, {high}]"
        )


def test_every_benchmark_has_its_expected_table() -> None:
    """A new script fails here (and below) until it has a smoke mode and its rows are listed."""
    assert [path.name for path in SCRIPTS] == sorted(EXPECTED)


def run_smoke(script: Path, folder: Path) -> subprocess.CompletedProcess[str]:
    """``python <script> --smoke`` in ``folder``, offline, with its own zoo cache and no ``../shared``."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "LIGHTNING_RECIPES_CACHE": str(folder / "cache"),
        "LIGHTNING_RECIPES_SHARED": str(folder / "no-shared"),  # smoke modes must not need ../shared
        "OMP_NUM_THREADS": "1",  # tiny tensors: one thread is faster, and far faster on a busy machine
    }
    command = [sys.executable, str(script), "--smoke"]
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def smoke_runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Future[subprocess.CompletedProcess[str]]]]:
    """The smoke runs of the scripts selected in this session, started together on a few workers."""
    selected = [
        item.callspec.params["script"]
        for item in request.session.items
        if getattr(item, "originalname", None) == "test_benchmark_smoke_mode"
    ]
    selected.sort(key=lambda script: script.name not in SPAWNING)  # the longest runs first
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        yield {
            script.name: pool.submit(run_smoke, script, tmp_path_factory.mktemp(script.stem))
            for script in selected
        }


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_benchmark_smoke_mode(script: Path, smoke_runs) -> None:
    proc = smoke_runs[script.name].result()
    assert proc.returncode == 0, f"{script.name} --smoke exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    printed = markdown_tables(proc.stdout)
    expected = EXPECTED[script.name]
    assert len(printed) == len(expected), (
        f"{len(printed)} tables printed, {len(expected)} expected:\n{proc.stdout}"
    )
    for number, (table, rows) in enumerate(zip(printed, expected, strict=True)):
        for name, columns in rows.items():
            matched = [row for row in table if row[0][1].startswith(name)]
            assert matched, f"table {number}: no row {name!r} in {[row[0][1] for row in table]}"
            for row in matched:
                for column, allowed in columns.items():
                    cells = [cell for header, cell in row if header == column]
                    assert cells, f"table {number}: no column {column!r} in {[header for header, _ in row]}"
                    for cell in cells:
                        check_cell(cell, allowed, f"{script.name}, table {number}, {row[0][1]!r}, {column!r}")
