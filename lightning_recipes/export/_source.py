"""What ``lightning-recipes export`` exports: the checkpoint of a run (its best one) or a checkpoint file, the
module class it was saved from, and what the run knows about it (its resolved ``config.yaml``, the test
metrics it logged, its curves)."""

from __future__ import annotations

import csv
import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from lightning_recipes.callbacks.ema import CHECKPOINT_KEY as EMA_KEY

#: The module families and the classes that define them (a subclass belongs to its base's family).
FAMILIES = {
    "image": "lightning_recipes.modules.image.ImageClassifier",
    "text": "lightning_recipes.modules.text.TextClassifier",
    "lm": "lightning_recipes.modules.causal_lm.CausalLM",
}
#: Hyperparameters only one family's constructor takes: the family of a checkpoint saved from Python
#: (``Trainer.fit`` outside the CLI stores no ``_class_path``).
_FAMILY_HPARAMS = {"in_chans": "image", "pooling": "text", "new_top_blocks": "lm"}


class ExportError(ValueError):
    """Bad input to ``export``: the message is one line saying what and what would be accepted."""


def _load_class(dotted: str) -> type:
    module, _, name = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ExportError(f"the checkpoint's module class {dotted!r} cannot be imported ({exc})") from exc


def find_checkpoint(path: Path) -> tuple[Path, Path | None]:
    """``(checkpoint, run directory or None)`` for a run directory, its ``checkpoints/`` folder or a file.

    A run's checkpoint is the best one its ``ModelCheckpoint`` recorded (``best_model_path`` in the state
    it saved in ``last.ckpt``, found again in ``checkpoints/`` when the run directory moved), else its
    newest ``best-*.ckpt``, else its only other checkpoint, else ``last.ckpt``.
    """
    if path.is_file():
        run = path.parent.parent if path.parent.name == "checkpoints" else None
        return path, run if run is not None and (run / "config.yaml").is_file() else None
    if not path.is_dir():
        raise ExportError(f"{path} is neither a run directory nor a checkpoint file")
    run = path.parent if path.name == "checkpoints" else path
    folder = run / "checkpoints"
    ckpts = sorted(folder.glob("*.ckpt")) if folder.is_dir() else []
    if not ckpts:
        raise ExportError(f"{run} holds no checkpoint (expected {folder}/*.ckpt): is it a run directory?")
    names = {p.name: p for p in ckpts}
    last = names.get("last.ckpt")
    if last is not None:
        state = torch.load(last, map_location="cpu", weights_only=False, mmap=True)
        for key, value in (state.get("callbacks") or {}).items():
            best = str(value.get("best_model_path") or "") if key.startswith("ModelCheckpoint") else ""
            if best and Path(best).name in names:
                return names[Path(best).name], run
    others = [p for p in ckpts if p.name not in ("last.ckpt", "on_exception.ckpt")]
    best = sorted((p for p in others if p.name.startswith("best")), key=lambda p: p.stat().st_mtime)
    if best:
        return best[-1], run
    if len(others) == 1:
        return others[0], run
    if last is not None:
        return last, run
    raise ExportError(f"{folder} holds several checkpoints and no last.ckpt to say which is best: pass one")


def module_class(checkpoint: dict[str, Any], path: Path) -> tuple[type, str]:
    """The lightning_recipes module class a checkpoint was saved from, and its family."""
    hparams = checkpoint.get("hyper_parameters")
    if not isinstance(checkpoint.get("state_dict"), dict) or not isinstance(hparams, dict):
        raise ExportError(
            f"{path} is not a Lightning checkpoint of a lightning_recipes module (no state_dict and "
            "hyper_parameters): export a run directory or a .ckpt written by `lightning run`"
        )
    dotted = hparams.get("_class_path")
    if dotted is None:
        family = next((f for k, f in _FAMILY_HPARAMS.items() if k in hparams), None)
        if family is None:
            raise ExportError(f"{path} is not a checkpoint of ImageClassifier, TextClassifier or CausalLM")
        dotted = FAMILIES[family]
    cls = _load_class(str(dotted))
    for family, base in FAMILIES.items():
        if isinstance(cls, type) and issubclass(cls, _load_class(base)):
            return cls, family
    raise ExportError(
        f"{path} was saved from {dotted}, not from a lightning_recipes module (ImageClassifier, "
        "TextClassifier, CausalLM or a subclass): export it with its own library"
    )


@dataclass
class Source:
    """A loaded checkpoint and what its run knows.

    Attributes:
        checkpoint: the checkpoint file (``None``: a run that trained nothing, its model as built).
        run_dir: its run directory (``None`` for a checkpoint outside one).
        module: the module, loaded on the CPU, in eval mode.
        family: ``image``, ``text`` or ``lm``.
        config: the run's resolved ``config.yaml`` (``{}`` without one).
        epoch, step: where the checkpoint was saved.
        test_metrics: the last logged value of each ``test/*`` key of the run's ``metrics.csv``.
        curves: the run's PNG files (curves, confusion matrices) of its test stage, else of validation.
        per_class: the rows of the test curves' per-class ``metrics.csv``.
        data_config: an image classifier's transform (timm data config) as the run applied it.
        run_info: the run's ``run.json`` (hardware, versions, wall time per stage), ``{}`` without one.
        ema: what an :class:`~lightning_recipes.callbacks.EMA` run's checkpoint says of its ``state_dict``,
            the averaged weights (``{"decay", "updates", ...}``); ``None`` for the trained weights themselves.
    """

    checkpoint: Path | None
    run_dir: Path | None
    module: Any
    family: str
    config: dict[str, Any] = field(default_factory=dict)
    epoch: int | None = None
    step: int | None = None
    test_metrics: dict[str, float] = field(default_factory=dict)
    curves: list[Path] = field(default_factory=list)
    per_class: list[dict[str, str]] = field(default_factory=list)
    data_config: dict[str, Any] | None = None
    run_info: dict[str, Any] = field(default_factory=dict)
    ema: dict[str, Any] | None = None


def family_of(module: Any) -> str:
    """``image``, ``text`` or ``lm``: the family of a lightning_recipes module (or of a subclass)."""
    for family, base in FAMILIES.items():
        if isinstance(module, _load_class(base)):
            return family
    raise ExportError(f"{type(module).__name__} is not an ImageClassifier, TextClassifier or CausalLM")


def run_source(run_dir: str | Path, checkpoint: str | Path | None, module: Any) -> Source:
    """The :class:`Source` of a run that has just finished: its ``module`` as trained (not loaded again) and
    the checkpoint its stages ended with (``None``: an as-is run, nothing trained), for the run's own card."""
    checkpoint = Path(checkpoint) if checkpoint else None
    state = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True) if checkpoint else {}
    family, epoch, step = family_of(module), state.get("epoch"), state.get("global_step")
    source = Source(checkpoint, Path(run_dir), module, family, epoch=epoch, step=step)
    source.ema = state.get(EMA_KEY)
    read_run(source, Path(run_dir))
    return source


def load_source(path: str | Path) -> Source:
    """Find the checkpoint of ``path`` (:func:`find_checkpoint`), load its module and read its run."""
    ckpt, run = find_checkpoint(Path(path))
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True)
    except Exception as exc:
        raise ExportError(f"{ckpt} is not a PyTorch checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict):
        raise ExportError(f"{ckpt} holds a {type(state).__name__}, not a Lightning checkpoint")
    cls, family = module_class(state, ckpt)
    module = cls.load_from_checkpoint(ckpt, map_location="cpu").eval()
    source = Source(ckpt, run, module, family, epoch=state.get("epoch"), step=state.get("global_step"))
    source.ema = state.get(EMA_KEY)
    if run is not None:
        read_run(source, run)
    return source


def read_run(source: Source, run: Path) -> None:
    """Fill in the run's config, ``run.json``, its logged test metrics and its curve files."""
    config = run / "config.yaml"
    if config.is_file():
        source.config = yaml.safe_load(config.read_text()) or {}
    record = run / "run.json"
    if record.is_file():
        source.run_info = json.loads(record.read_text())
    metrics = run / "metrics.csv"
    if metrics.is_file():
        with open(metrics, newline="") as f:
            for row in csv.DictReader(f):
                for key, value in row.items():
                    if key and key.startswith("test/") and value not in ("", None):
                        source.test_metrics[key] = float(value)
    curves = run / "curves"
    for stage in ("test", "val"):
        folders = sorted(p for p in curves.glob(f"{stage}*") if p.is_dir()) if curves.is_dir() else []
        if folders:
            source.curves = sorted(folders[-1].glob("*.png"))
            table = folders[-1] / "metrics.csv"
            if table.is_file():
                with open(table, newline="") as f:
                    source.per_class = list(csv.DictReader(f))
            break
