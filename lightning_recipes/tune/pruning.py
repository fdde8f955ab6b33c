"""The callback that reports a trial's monitored metric to optuna and stops the fit of a pruned trial.

optuna-integration's ``PyTorchLightningPruningCallback`` (5.0) runs on lightning 2.6, but it raises
``optuna.TrialPruned`` from inside ``on_validation_end``: Lightning handles that as a crash (exception
callbacks, so ``CrashCheckpoint`` saves ``on_exception.ckpt`` and says the run was stopped by it, no
``on_fit_end``, no last checkpoint), and it reads private internals of Lightning
(``trainer._accelerator_connector``) and optuna (``optuna.storages._CachedStorage``). This one asks the
Trainer to stop (``trainer.should_stop``), so the fit ends as an early-stopped fit does (checkpoints,
curves and logs complete), and the caller raises ``optuna.TrialPruned`` after it (:attr:`pruned`).
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from typing_extensions import override

__all__ = ["TrialPruning"]


class TrialPruning(Callback):
    """Report ``monitor`` to an optuna trial after each validation of fit, and stop a trial optuna prunes.

    The step of each report is the number of the validation run in this fit (0, 1, 2...: the epoch
    when validation runs once an epoch), so trials with different batch sizes compare at the same
    point. The sanity check is not reported.

    Args:
        trial: the ``optuna.Trial`` this fit runs.
        monitor: the logged metric to report (the recipe's ``ModelCheckpoint`` monitor, e.g. ``val/acc``).
        mode: ``"max"`` or ``"min"``: which of the reported values is :attr:`best`.
        prune: whether to ask ``trial.should_prune()`` (``False``: only report).

    Attributes:
        values: the reported values, in order.
        pruned: the step at which the trial was pruned, or ``None``.

    Example::

        >>> import optuna
        >>> callback = TrialPruning(optuna.create_study().ask(), monitor="val/acc", mode="max")
        >>> callback.best is None, callback.pruned
        (True, None)
    """

    def __init__(self, trial: Any, monitor: str, mode: str = "max", prune: bool = True) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.trial = trial
        self.monitor = monitor
        self.mode = mode
        self.prune = prune
        self.values: list[float] = []
        self.pruned: int | None = None

    @property
    def best(self) -> float | None:
        """The best finite value reported (``None`` before any)."""
        finite = [v for v in self.values if math.isfinite(v)]
        if not finite:
            return None
        return max(finite) if self.mode == "max" else min(finite)

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            logged = ", ".join(sorted(trainer.callback_metrics)) or "none"
            raise KeyError(
                f"tune: the monitored metric {self.monitor!r} was not logged in validation (logged: "
                f"{logged}); set the recipe's ModelCheckpoint monitor to one of them"
            )
        step = len(self.values)
        self.values.append(float(value))
        self.trial.report(float(value), step=step)
        if self.prune and self.pruned is None and self.trial.should_prune():
            self.pruned = step
            trainer.should_stop = True
