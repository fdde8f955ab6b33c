"""CurveLogger: ROC/PR curves, AUROC/AP, confusion matrix, per-class metrics and mistakes after eval epochs.

The package, one concern a file:

* :mod:`~lightning_recipes.callbacks.curve_logger.state`: the metric state (torchmetrics with binned
  thresholds, constant memory), :class:`CurveMetrics` and its :class:`CurveResults`;
* :mod:`~lightning_recipes.callbacks.curve_logger.writers`: CSV, PNG, W&B output and the summary table;
* :mod:`~lightning_recipes.callbacks.curve_logger.mistakes`: the mistakes report (the most confidently wrong
  examples, the most confused class pairs; single-label classification only);
* :mod:`~lightning_recipes.callbacks.curve_logger.callback`: the :class:`CurveLogger` callback (under
  DDP it drops the samples a ``DistributedSampler`` repeats, with :mod:`lightning_recipes.eval_samples`).
"""

from __future__ import annotations

from lightning_recipes.callbacks.curve_logger.callback import CurveLogger
from lightning_recipes.callbacks.curve_logger.state import (
    CurveMetrics,
    CurveResults,
    binned_counts,
    curve_thresholds,
)
from lightning_recipes.callbacks.curve_logger.writers import downsample, format_summary, log_to_wandb

__all__ = [
    "CurveLogger",
    "CurveMetrics",
    "CurveResults",
    "binned_counts",
    "curve_thresholds",
    "downsample",
    "format_summary",
    "log_to_wandb",
]
