"""Keep every test small, offline and inside tmp_path."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "lo" in {name for _, name in socket.if_nameindex()}:
    # Every multi-process test runs its ranks on this machine: gloo connects them over the loopback
    # interface instead of the address the host name resolves to (unreachable in some sandboxes).
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LIGHTNING_RECIPES_SHARED", REPO / ".." / "shared")).resolve()
# The zoo builds its SST-2 classifier and its Shakespeare GPT-2 from the project's shared folder, which
# it is given explicitly (`zoo build --source DIR` or this variable): for the tests, the checkout's.
os.environ["LIGHTNING_RECIPES_SHARED"] = str(SHARED)


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Zoo weights and exported digits go to one per-session cache, never the user's."""
    cache = tmp_path_factory.mktemp("lightning_recipes_cache")
    os.environ["LIGHTNING_RECIPES_CACHE"] = str(cache)
    return cache


@pytest.fixture
def shared_dir() -> Path:
    """``../shared`` (real weights and data); tests that need it skip where it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not found: real weights/data live in ../shared (set LIGHTNING_RECIPES_SHARED)")
    return SHARED


@pytest.fixture
def tiny_trainer_kwargs(tmp_path: Path) -> dict:
    """Trainer settings that keep a test to seconds: CPU, a couple of batches, no logger."""
    return {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 1,
        "limit_train_batches": 2,
        "limit_val_batches": 2,
        "limit_test_batches": 2,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": str(tmp_path),
    }


@pytest.fixture
def image_folder(tmp_path: Path):
    """Make ``root/<split>/<class>/<i>.png`` with a colour per class (a learnable toy task)."""
    import numpy as np
    from PIL import Image

    def make(splits=("train",), classes=("a", "b", "c"), per_class=6, size=16, root=None) -> Path:
        root = Path(root or tmp_path / "images")
        rng = np.random.default_rng(0)
        for split in splits:
            for c, name in enumerate(classes):
                folder = root / split / name if split else root / name
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(per_class):
                    pixels = np.full((size, size, 3), 40 + 80 * c, np.uint8) + rng.integers(
                        0, 30, (size, size, 3), np.uint8
                    )
                    Image.fromarray(pixels).save(folder / f"{i}.png")
        return root

    return make


@pytest.fixture
def tiny_recipe(tmp_path, image_folder) -> Path:
    """A complete recipe: 2 epochs of a tiny timm ResNet on a toy image folder, CSV logs, checkpoints."""
    import yaml

    root = image_folder(splits=("train", "val", "test"), per_class=4)
    recipe = {
        "seed_everything": 0,
        "stages": ["fit", "test"],
        "trainer": {
            "accelerator": "cpu",
            "max_epochs": 2,
            "default_root_dir": str(tmp_path / "run"),
            "enable_progress_bar": False,
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(tmp_path / "run")},
            },
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"monitor": "val/acc", "mode": "max", "save_last": True},
                }
            ],
        },
        "model": {
            "class_path": "lightning_recipes.ImageClassifier",
            "init_args": {
                "model_name_or_path": "test_resnet",
                "pretrained": False,
                "num_classes": 3,
                "lr": 0.01,
            },
        },
        "data": {
            "class_path": "lightning_recipes.ImageDataModule",
            "init_args": {"root": str(root), "batch_size": 6, "num_workers": 0, "image_size": 32},
        },
    }
    path = tmp_path / "tiny.yaml"
    path.write_text("# A tiny recipe for tests.\n" + yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="session")
def write_corpus():
    """``write(path, lines=200, seed=0)``: a seeded toy corpus, one random sentence over 19 words per line."""
    words = [
        "the",
        "king",
        "queen",
        "said",
        "to",
        "my",
        "lord",
        "and",
        "of",
        "her",
        "his",
        "good",
        "sir",
        "will",
        "not",
        "be",
        "come",
        "now",
        "here",
    ]

    def write(path: Path, lines: int = 200, seed: int = 0) -> Path:
        rng = random.Random(seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            "".join(" ".join(rng.choices(words, k=rng.randint(3, 12))) + ".\n" for _ in range(lines))
        )
        return path

    return write


@pytest.fixture
def tiny_bert(tmp_path: Path) -> Path:
    """A 2-layer, 32-wide BERT with random weights and a tiny WordPiece tokenizer (``tiny_text_models``)."""
    from tiny_text_models import make_model

    return make_model(tmp_path / "tiny-bert", "bert")


@pytest.fixture
def tiny_distilbert(tmp_path: Path) -> Path:
    """The same as ``tiny_bert``, a DistilBERT."""
    from tiny_text_models import make_model

    return make_model(tmp_path / "tiny-distilbert", "distilbert")


@pytest.fixture
def sentiment_csv(tmp_path: Path) -> Path:
    """train/dev CSVs (``text,label`` with labels ``pos``/``neg``), 24 and 12 rows."""
    from tiny_text_models import NEGATIVE, POSITIVE

    for name, repeat in (("train", 2), ("dev", 1)):
        rows = [f"{t},pos" for t in POSITIVE] + [f"{t},neg" for t in NEGATIVE]
        (tmp_path / f"{name}.csv").write_text("text,label\n" + "\n".join(rows * repeat) + "\n")
    return tmp_path


DESTROY_LEFTOVER_GROUP = """

import torch.distributed as _dist

if _dist.is_available() and _dist.is_initialized():
    _dist.destroy_process_group()
"""


@pytest.fixture
def run_script(tmp_path: Path):
    """``run(source, *args, env=None, cwd=tmp_path)``: run Python ``source`` as a script in a new process.

    For multi-process (DDP) tests: the script is written to ``tmp_path``, run with the repository on
    ``PYTHONPATH`` and ``env`` added to the environment; the test fails with the script's stderr unless
    it exits 0. Returns the ``CompletedProcess`` (``stdout``/``stderr`` as text). The script ends by
    destroying a process group its Trainer left alive, as docs/multi_gpu.md tells users' scripts to
    (gloo aborts now and then at interpreter exit with a live group).
    """

    def run(source: str, *args: object, env: dict[str, str] | None = None, cwd: Path | None = None):
        script = tmp_path / "script.py"
        script.write_text(source + DESTROY_LEFTOVER_GROUP)
        proc = subprocess.run(
            [sys.executable, str(script), *map(str, args)],
            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
            cwd=cwd or tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    return run


@pytest.fixture
def in_process_group():
    """For a test that runs a distributed strategy (FSDP) in this process: its process group is destroyed
    afterwards (Lightning leaves a gloo group alive), so the next test can start its own."""
    import torch.distributed as dist

    yield
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
