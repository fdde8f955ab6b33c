"""Experiment tracking: a Weights & Biases logger that works offline, and the CLI hooks that feed it.

``WandbLogger`` is Lightning's, plus an offline fallback without credentials or network, typed
``tags``/``group``/``entity`` for recipes, bounded checkpoint uploads and the run id kept in
checkpoints (:class:`WandbRunId`, :func:`run_id_from_checkpoint`) so that a resumed training continues
its run. ``LoggerSaveConfigCallback`` logs the resolved recipe to the loggers. Imports are lazy:
``wandb`` loads only when a run starts.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LoggerSaveConfigCallback": "lightning_recipes.loggers.wandb",
    "WandbLogger": "lightning_recipes.loggers.wandb",
    "WandbRunId": "lightning_recipes.loggers.wandb",
    "apply_resume_id": "lightning_recipes.loggers.wandb",
    "run_id_from_checkpoint": "lightning_recipes.loggers.wandb",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lightning_recipes.loggers' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
