"""Callbacks for fine-tuning: freezing, LR finding, early stopping, gradient monitoring, curves,
NaN guard, predictions, distillation, weight averaging (EMA), mixup.

One callback per module, named after the class in snake_case (a file, or a package for the larger
``curve_logger``). Imports are lazy so that ``import lightning_recipes.callbacks`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CurveLogger": "lightning_recipes.callbacks.curve_logger",
    "Distillation": "lightning_recipes.callbacks.distillation",
    "EMA": "lightning_recipes.callbacks.ema",
    "EarlyStopping": "lightning_recipes.callbacks.early_stopping",
    "FreezeUnfreeze": "lightning_recipes.callbacks.freeze_unfreeze",
    "GlobalBatch": "lightning_recipes.callbacks.global_batch",
    "GradientMonitor": "lightning_recipes.callbacks.gradient_monitor",
    "LRFinder": "lightning_recipes.callbacks.lr_finder",
    "Mixup": "lightning_recipes.callbacks.mixup",
    "NonFiniteGuard": "lightning_recipes.callbacks.non_finite_guard",
    "TrainingDiverged": "lightning_recipes.callbacks._diverged",
    "PredictionWriter": "lightning_recipes.callbacks.prediction_writer",
    "ProgressLog": "lightning_recipes.callbacks.progress_log",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lightning_recipes.callbacks' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
