"""What a finished ``lightning run`` leaves beside its checkpoints to say how it ran: ``run.json`` (the
hardware, the versions and the wall time of each stage) and ``README.md``, the run's model card (the card
``lightning-recipes export`` writes, for the run's checkpoint: ``lightning_recipes.export.write_run_card``).
"""

from __future__ import annotations

import json
import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import lightning as L
import torch

__all__ = ["RUN_RECORD", "describe_hardware", "document_run", "write_run_record"]

#: The file of a run directory that records its hardware and time.
RUN_RECORD = "run.json"
_VERSIONS = ("lightning-recipes", "torch", "lightning", "transformers", "timm", "peft")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def describe_hardware(trainer: L.Trainer) -> dict[str, Any]:
    """The hardware a run trained on, as its Trainer used it.

    Example::

        >>> import lightning as L
        >>> info = describe_hardware(L.Trainer(accelerator="cpu", devices=1, logger=False))
        >>> info["accelerator"], info["devices"], info["nodes"], info["precision"]
        ('cpu', 1, 1, '32-true')
    """
    accelerator = type(trainer.accelerator).__name__.removesuffix("Accelerator").lower()
    root = trainer.strategy.root_device
    if root.type == "cuda":
        device_name = torch.cuda.get_device_name(root)
    elif root.type == "cpu":
        device_name = _cpu_name()
    else:
        device_name = root.type
    return {
        "accelerator": accelerator,
        "device_name": device_name,
        "devices": trainer.num_devices,
        "nodes": trainer.num_nodes,
        "strategy": type(trainer.strategy).__name__,
        "precision": str(trainer.precision),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def write_run_record(run_dir: str | Path, trainer: L.Trainer, seconds: dict[str, float]) -> Path:
    """Write ``run_dir/run.json``: :func:`describe_hardware`, the package versions, and ``seconds``, the wall
    time of each stage this run ran (``{"fit": 812.4, "test": 9.1}``)."""
    record = {
        "hardware": describe_hardware(trainer),
        "seconds": {stage: round(s, 1) for stage, s in seconds.items()},
        "versions": {name: v for name in _VERSIONS if (v := _version(name))},
        "python": platform.python_version(),
    }
    path = Path(run_dir) / RUN_RECORD
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def document_run(
    trainer: L.Trainer, module: L.LightningModule, data: Any, summary: dict[str, Any]
) -> Path | None:
    """Write ``run.json`` and the run's card (``README.md``) into the run directory of ``summary`` (what
    :meth:`~lightning_recipes.cli.LightningRecipesCLI.run_stages` returns); return the card's path (``None``
    for a module that is not one of this library's families: only ``run.json`` is written). ``data``: the
    run's data module (an image one's transform is the preprocessing the card states)."""
    from lightning_recipes.export import ExportError, run_source, write_run_card

    run_dir = Path(summary["run_dir"])
    if not run_dir.is_dir():
        return None
    write_run_record(run_dir, trainer, summary["seconds"])
    try:
        source = run_source(run_dir, summary["checkpoint"], module)
    except ExportError:  # a LightningModule of the user's own, not a subclass of ours
        return None
    if source.family == "image" and hasattr(data, "resolved_data_config"):
        source.data_config = dict(data.resolved_data_config())
    return write_run_card(source)
