"""EarlyStopping: Lightning's, failing fast on a monitor key that is never logged, counting NaN/inf as no
improvement, saying in one line why it stopped."""

from __future__ import annotations

import difflib
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping as _LightningEarlyStopping
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from typing_extensions import override

from lightning_recipes import _compat


class EarlyStopping(_LightningEarlyStopping):
    """Lightning's ``EarlyStopping`` with an early check of the monitor key; NaN/inf is no improvement.

    What it adds to Lightning's callback:

    * **A monitor key that is never logged fails at the first validation**, including the sanity check
      for ``val*`` keys (so a typo costs seconds, not an epoch), with a ``ValueError`` that lists the
      keys that do exist and the closest matches. Lightning's own check runs only after the first
      training epoch, and only with ``strict=True``; here it runs whatever ``strict`` says, because a
      key that no validation ever logs is a configuration error, not a transient gap.
    * **NaN/inf monitored values do not stop training here**: whether a NaN/inf ends the run is
      :class:`~lightning_recipes.callbacks.NonFiniteGuard`'s decision (its ``non_finite``; by default it
      stops the run with ``TrainingDiverged``), so Lightning's ``check_finite`` is always ``False``. A
      value the guard lets through counts as no improvement (it may still exhaust ``patience``): a single
      bad validation does not end the run, and ``-inf`` never becomes the best score nor reaches a
      threshold. ``non_finite_count`` counts such values.
    * **Every stop says why**, in one line (rank zero, logged by Lightning's ``lightning.pytorch``
      logger): ``EarlyStopping: stopped training at epoch 3: val/loss = 2.6 did not improve on 2 for
      2 checks (patience 2).``, or the threshold reached. Lightning's own messages still need
      ``verbose=True``.
    * State (``wait_count``, ``best_score``, ``stopped_epoch``, ``patience``, ``non_finite_count``) is
      saved in checkpoints and restored on resume (Lightning's ``state_dict`` plus the count).

    Args:
        monitor: logged key to watch, e.g. ``"val/loss"`` or ``"val/acc"``.
        min_delta, patience, verbose, mode, strict, stopping_threshold, divergence_threshold,
            check_on_train_epoch_end, log_rank_zero_only: as in Lightning's ``EarlyStopping``.

    Example::

        >>> es = EarlyStopping(monitor="val/loss", patience=2)
        >>> [es._evaluate_stopping_criteria(torch.tensor(v))[0] for v in (1.0, float("nan"), float("-inf"))]
        [False, False, True]
        >>> es.best_score.item(), es.non_finite_count, es.wait_count
        (1.0, 2, 2)
    """

    def __init__(
        self,
        monitor: str,
        min_delta: float = 0.0,
        patience: int = 3,
        verbose: bool = False,
        mode: Literal["min", "max"] = "min",
        strict: bool = True,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        check_on_train_epoch_end: bool | None = None,
        log_rank_zero_only: bool = False,
    ) -> None:
        super().__init__(
            monitor=monitor,
            min_delta=min_delta,
            patience=patience,
            verbose=verbose,
            mode=mode,
            strict=strict,
            check_finite=False,  # NonFiniteGuard decides what a NaN/inf does; here it is no improvement
            stopping_threshold=stopping_threshold,
            divergence_threshold=divergence_threshold,
            check_on_train_epoch_end=check_on_train_epoch_end,
            log_rank_zero_only=log_rank_zero_only,
        )
        self.non_finite_count = 0
        self._monitor_seen = False
        self._decision: tuple[bool, Tensor] | None = None

    def _missing_monitor_error(self, logs: dict[str, Any]) -> ValueError:
        keys = sorted(logs)
        close = difflib.get_close_matches(self.monitor, keys, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(k) for k in close)}?" if close else ""
        return ValueError(
            f"EarlyStopping monitors {self.monitor!r}, which was not logged by the validation run. "
            f"Logged keys: {keys}.{hint} Set `monitor` to one of them (e.g. `val/loss`, `val/acc`)."
        )

    def _check_monitor_logged(self, trainer: pl.Trainer) -> None:
        if self._monitor_seen or trainer.state.fn != "fit":
            return
        logs = trainer.callback_metrics
        if self.monitor in logs:
            self._monitor_seen = True
            return
        # The sanity check only runs validation: a validation key must be there already.
        if trainer.sanity_checking and not self.monitor.startswith("val"):
            return
        raise self._missing_monitor_error(logs)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.fast_dev_run and (
            trainer.sanity_checking
            or self.monitor.startswith("val")
            or not _compat.checks_on_train_epoch_end(self)
        ):
            self._check_monitor_logged(trainer)
        stopping = self._before_check(trainer)
        super().on_validation_end(trainer, pl_module)
        self._say_why(trainer, stopping)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if _compat.checks_on_train_epoch_end(self) and not trainer.fast_dev_run:
            self._check_monitor_logged(trainer)
        stopping = self._before_check(trainer)
        super().on_train_epoch_end(trainer, pl_module)
        self._say_why(trainer, stopping)

    def _before_check(self, trainer: pl.Trainer) -> bool:
        self._decision = None
        return trainer.should_stop

    def _say_why(self, trainer: pl.Trainer, stopping: bool) -> None:
        """After Lightning's hook: if its stopping check stopped the run, say why in one line (rank zero)."""
        if self._decision is None:  # no check ran (metric absent, fast_dev_run, the other hook's turn)
            return
        should_stop, current = self._decision
        if should_stop or (trainer.should_stop and not stopping):  # here, or on another process (DDP)
            rank_zero_info(self.stop_message(trainer.current_epoch, current, here=should_stop))

    def stop_message(self, epoch: int, current: Tensor, here: bool = True) -> str:
        """The line logged when this callback stops training at ``epoch`` with the monitored ``current``."""
        value = f"{self.monitor} = {float(current):.4g}"
        best = float(self.best_score)
        if not here:
            why = f"another process met the stopping criteria ({value} here)"
        elif self.stopping_threshold is not None and self.monitor_op(current, self.stopping_threshold):
            why = f"{value} reached stopping_threshold {self.stopping_threshold}"
        elif self.divergence_threshold is not None and self.monitor_op(-current, -self.divergence_threshold):
            why = f"{value} crossed divergence_threshold {self.divergence_threshold}"
        else:
            last = " (the last one not finite)" if not torch.isfinite(current) else ""
            why = (
                f"{value} did not improve on {best:.4g} for {self.wait_count} checks{last} "
                f"(patience {self.patience})"
            )
        return f"EarlyStopping: stopped training at epoch {epoch}: {why}."

    # Overrides a private method of Lightning's EarlyStopping: the name and signature relied upon are
    # `_compat.EARLY_STOPPING_OVERRIDES`, checked by tests/_compat/test_compat_early_stopping.py.
    @override
    def _evaluate_stopping_criteria(self, current: Tensor) -> tuple[bool, str | None]:
        should_stop, reason = self._criteria(current)
        self._decision = (should_stop, current)
        return should_stop, reason

    def _criteria(self, current: Tensor) -> tuple[bool, str | None]:
        if torch.isfinite(current):
            return super()._evaluate_stopping_criteria(current)
        self.non_finite_count += 1
        self.wait_count += 1
        reason = f"Monitored metric {self.monitor} = {current} is not finite; counted as no improvement."
        if self.wait_count >= self.patience:
            _compat.set_patience_exhausted(self)
            return True, (
                f"Monitored metric {self.monitor} did not improve in the last {self.wait_count} records"
                f" (the last one not finite). Best score: {self.best_score:.3f}. Signaling Trainer to stop."
            )
        return False, reason

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "non_finite_count": self.non_finite_count}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.non_finite_count = state_dict.get("non_finite_count", 0)
