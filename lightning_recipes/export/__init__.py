"""``lightning-recipes export RUN_DIR|CKPT --to DIR``: ship a fine-tuned model in its ecosystem's format.

The run's best checkpoint (or the checkpoint given) is loaded, written as a Hugging Face folder (text
classifiers, causal LMs), a timm ``local-dir:`` folder (image classifiers), TorchScript or ONNX, with a
model card (``README.md``) and ``export.json`` (format, inputs, labels, parity). The folder is written
beside the target under a temporary name and renamed at the end, after the parity check: the export is
loaded back in a fresh process that never imports lightning_recipes and must give the checkpoint's
probabilities on a few inputs within the format's tolerance (:data:`TOLERANCE`), or nothing is left
behind. See docs/export.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lightning_recipes.export._card import write_card, write_run_card
from lightning_recipes.export._formats import (
    FORMATS,
    TOLERANCE,
    activation,
    check_format,
    describe_inputs,
    example_inputs,
    label_record,
    probabilities,
    write_format,
    write_json,
)
from lightning_recipes.export._parity import Parity, ParityError, check, exported_probabilities
from lightning_recipes.export._predict import model_config, split_model_folder, use_export_model
from lightning_recipes.export._push import Pushed, PushError, check_repo_id, push_to_hub
from lightning_recipes.export._source import ExportError, Source, load_source, run_source
from lightning_recipes.export._wandb import LoggedArtifact, WandbExportError, log_to_wandb

__all__ = [
    "ExportError",
    "Exported",
    "LoggedArtifact",
    "ParityError",
    "PushError",
    "Pushed",
    "export",
    "main",
    "model_config",
    "log_wandb",
    "push_to_hub",
    "run_source",
    "split_model_folder",
    "use_export_model",
    "write_run_card",
]


@dataclass(frozen=True)
class Exported:
    """What :func:`export` wrote: the folder, its format, the checkpoint it came from and the parity; the
    run's resolved config and ``export.json``'s record (for :func:`log_wandb`)."""

    folder: Path
    format: str
    checkpoint: Path
    parity: Parity
    inputs_from: str
    config: dict = field(default_factory=dict)
    record: dict = field(default_factory=dict)


def log_wandb(done: Exported) -> LoggedArtifact | None:
    """Log an export to its run's W&B run as a ``model`` artifact (``None``: the run did not use W&B, or
    W&B is disabled); see :func:`lightning_recipes.export._wandb.log_to_wandb`."""
    return log_to_wandb(done.folder, done.checkpoint, done.config, done.record)


def _check_target(to: Path, overwrite: bool) -> None:
    if to.exists() and not to.is_dir():
        raise ExportError(f"--to {to} is a file; give a folder")
    if to.is_dir() and any(to.iterdir()) and not overwrite:
        raise ExportError(f"--to {to} exists and is not empty; pass --overwrite to replace it")


def export(
    source: str | Path,
    to: str | Path,
    format: str | None = None,
    merge: bool = False,
    overwrite: bool = False,
) -> Exported:
    """Export a run directory's best checkpoint (or a checkpoint file) into the folder ``to``.

    Args:
        source: a run directory of ``lightning run``, its ``checkpoints/`` folder or a ``.ckpt`` file.
        to: the folder to write; it must not exist or be empty, unless ``overwrite``.
        format: ``hf`` (text classifiers and LMs, their default), ``timm`` (image classifiers, their
            default), ``torchscript`` or ``onnx``.
        merge: merge an adapter into the weights (``hf``/``timm``: a plain model folder instead of a peft
            adapter folder; ``torchscript``/``onnx``: traced without the adapter's extra layers).
        overwrite: replace a non-empty ``to``.

    Raises:
        ExportError: bad input (not a lightning_recipes checkpoint, a format the model cannot take, a
            non-empty target); nothing is written.
        ParityError: the export does not give the checkpoint's probabilities; nothing is left behind.
    """
    to = Path(to).expanduser().absolute()
    _check_target(to, overwrite)
    loaded = load_source(source)
    fmt = check_format(loaded, format, merge)
    tmp = to.with_name(f".{to.name}.export-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        parity, inputs_from, record = _write(loaded, fmt, tmp, merge)
        if to.exists():
            shutil.rmtree(to)
        tmp.rename(to)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Exported(to, fmt, loaded.checkpoint, parity, inputs_from, loaded.config, record)


def _write(source: Source, fmt: str, folder: Path, merge: bool) -> tuple[Parity, str, dict]:
    inputs, inputs_from = example_inputs(source)
    how = activation(source)
    with torch.no_grad():
        args = (inputs["images"],) if source.family == "image" else ()
        if source.family == "image":
            logits = source.module(*args)
        elif source.family == "lm":
            logits = source.module(inputs["input_ids"], inputs["attention_mask"])
        else:
            logits = source.module(inputs)
    expected = probabilities(logits, how)
    extra = write_format(source, fmt, folder, inputs, merge)
    got = exported_probabilities(fmt, folder, inputs, source.family, how)
    parity = check(expected, got, TOLERANCE[fmt])
    if not parity.ok:
        raise ParityError(
            f"the {fmt} export predicts other probabilities than the checkpoint: max abs difference "
            f"{parity.max_abs_diff:.3g} > tolerance {parity.tolerance:g} on {inputs_from}; nothing written"
        )
    record = {
        "format": fmt,
        "family": source.family,
        "checkpoint": str(source.checkpoint),
        "module_class": f"{type(source.module).__module__}.{type(source.module).__name__}",
        "merged_adapter": bool(merge and getattr(source.module, "peft_model", None) is not None),
        "weights": "ema" if source.ema else "trained",
        **({"ema": source.ema} if source.ema else {}),
        "inputs": describe_inputs(inputs),
        "output": "logits",
        "probabilities": how,
        **label_record(source),
        **extra,
        "parity": {
            "max_abs_diff": parity.max_abs_diff,
            "tolerance": parity.tolerance,
            "examples": parity.examples,
            "inputs": inputs_from,
        },
    }
    write_json(folder, record)
    write_card(source, folder, record)
    return parity, inputs_from, record


USAGE = (
    "lightning-recipes export RUN_DIR|CKPT --to DIR [--format hf|timm|onnx|torchscript] [--merge] "
    "[--overwrite] [--push-to-hub ORG/NAME [--public]] [--no-wandb]"
)


def main(argv: list[str]) -> int:
    """``lightning-recipes export``; returns the exit code: 0, 2 (bad input) or 1 (parity refused, the
    upload to the Hub or the W&B logging failed: the export is then complete in its folder)."""
    parser = argparse.ArgumentParser(
        prog="lightning-recipes export",
        usage=USAGE,
        description="Export a run's best checkpoint (or a checkpoint) as a folder its ecosystem loads, with "
        "a model card; the export is checked against the checkpoint (docs/export.md).",
    )
    parser.add_argument("source", help="run directory of `lightning run`, or a .ckpt file")
    parser.add_argument("--to", required=True, help="folder to write (must not exist or be empty)")
    formats = sorted({f for fs in FORMATS.values() for f in fs})
    parser.add_argument("--format", choices=formats, help="default: timm for images, hf for text and LMs")
    parser.add_argument("--merge", action="store_true", help="merge an adapter into the weights")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --to folder")
    parser.add_argument("--push-to-hub", metavar="ORG/NAME", help="upload the export to this Hub model repo")
    parser.add_argument("--public", action="store_true", help="create the Hub repo public (default: private)")
    parser.add_argument(
        "--no-wandb",
        action="store_true",
        help="do not log the export as a model artifact to the run's W&B run",
    )
    args = parser.parse_args(argv)
    try:
        if args.public and not args.push_to_hub:
            raise ExportError("--public needs --push-to-hub ORG/NAME")
        if args.push_to_hub:
            try:
                check_repo_id(args.push_to_hub)
            except ValueError as exc:
                raise ExportError(str(exc)) from exc
        done = export(args.source, args.to, args.format, merge=args.merge, overwrite=args.overwrite)
    except ExportError as exc:
        print(f"error: export: {exc}", file=sys.stderr)
        return 2
    except ParityError as exc:
        print(f"error: export refused: {exc}", file=sys.stderr)
        return 1
    p = done.parity
    print(f"Exported {done.checkpoint} as {done.format} to {done.folder}")
    diff = f"max abs difference of probabilities {p.max_abs_diff:.3g} <= {p.tolerance:g}"
    print(f"Parity: {diff} ({done.inputs_from})")
    if not args.no_wandb and _wandb(done) != 0:
        return 1
    if args.push_to_hub:
        return _push(done, args.push_to_hub, private=not args.public)
    return 0


def _wandb(done: Exported) -> int:
    try:
        logged = log_wandb(done)
    except WandbExportError as exc:
        print(
            f"error: W&B: {exc}; the export is complete in {done.folder} (--no-wandb skips W&B)",
            file=sys.stderr,
        )
        return 1
    if logged is not None:
        where = f"offline in {logged.run_dir}" if logged.offline else "online"
        print(
            f"W&B: artifact {logged.name}:{logged.aliases[0]} (model) logged to run {logged.run_id}, {where}"
        )
    return 0


def _push(done: Exported, repo_id: str, private: bool) -> int:
    try:
        pushed = push_to_hub(done.folder, repo_id, private=private)
    except PushError as exc:
        again = f"hf upload {repo_id} {done.folder}{' --private' if private else ''}"
        print(
            f"error: push to the Hub: {exc}; the export is complete in {done.folder} (push it later: "
            f"{again})",
            file=sys.stderr,
        )
        return 1
    print(f"Pushed to {pushed.url} ({'private' if pushed.private else 'public'}; commit {pushed.commit})")
    return 0
