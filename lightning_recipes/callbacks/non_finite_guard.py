"""NonFiniteGuard: a run whose loss or monitored metric turns NaN/inf fails loudly; no NaN best checkpoint."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from typing_extensions import override

from lightning_recipes.callbacks.gradient_monitor import GradientMonitor


class TrainingDiverged(RuntimeError):
    """Raised by :class:`NonFiniteGuard` when the training loss or a monitored metric is NaN/inf.

    The message is one line: where (epoch, global step), what was not finite, the learning rate of
    each optimizer group and the last checkpoint whose monitored values were finite. The same facts are
    attributes: ``epoch``, ``step``, ``what``, ``learning_rates`` (``{group name: lr}``, prefixed with
    ``"<optimizer index>/"`` when there are several optimizers) and ``last_finite_checkpoint`` (a path or
    ``None``).
    """

    def __init__(
        self,
        epoch: int,
        step: int,
        what: str,
        learning_rates: dict[str, float],
        last_finite_checkpoint: str | None,
    ) -> None:
        self.epoch, self.step, self.what = epoch, step, what
        self.learning_rates, self.last_finite_checkpoint = learning_rates, last_finite_checkpoint
        lrs = ", ".join(f"{name}={lr:.3g}" for name, lr in learning_rates.items()) or "none"
        super().__init__(
            f"Training diverged at epoch {epoch}, global step {step}: {what}. Learning rates: {lrs}. "
            f"Last checkpoint with finite monitored values: {last_finite_checkpoint or 'none'}. "
            "Lower the learning rate or clip gradients (trainer.gradient_clip_val) and run again."
        )

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (spawned DDP processes), with its attributes
        return type(self), (
            self.epoch,
            self.step,
            self.what,
            self.learning_rates,
            self.last_finite_checkpoint,
        )


class NonFiniteGuard(Callback):
    """Stop a fit whose training loss or monitored metric is NaN/inf, with :class:`TrainingDiverged`.

    ``lightning run`` and the ``lightning-recipes`` subcommands add one to every run (unless the recipe
    lists its own), so a diverged run ends with ``error: TrainingDiverged: ...`` and exit code 1
    instead of a "best" checkpoint, a test and a summary.

    * **Training loss**, in ``on_before_backward``: a non-finite loss stops the run *before* its
      backward pass and optimizer step, so the weights (and ``on_exception.ckpt``) are the last finite
      ones. With a :class:`~lightning_recipes.callbacks.GradientMonitor` that has
      ``skip_non_finite=True`` (which drops such steps), up to ``max_consecutive_skips`` steps in a row
      are let through first.
    * **Monitored metrics**, at the end of each validation and training epoch: the ``monitor`` of every
      ``ModelCheckpoint`` and ``EarlyStopping`` of the trainer, plus ``monitor`` given here. The guard
      runs ahead of the checkpoint callbacks (it moves itself there in ``setup``), so it stops the run
      before a ``ModelCheckpoint`` records a NaN/inf score: Lightning's ``ModelCheckpoint`` keeps a NaN
      as its best when it has no other score yet, and a ``-inf`` loss (``+inf`` accuracy) always.
      A key whose ``EarlyStopping`` tolerates NaN/inf (``non_finite="ignore"``, Lightning's
      ``check_finite=False``) is let through, unless the value would become a checkpoint's best.

    Sanity checks, ``validate``/``test``/``predict`` and Lightning's LR range tests (which run with
    their own callbacks only) are not checked. Under DDP the decision is reduced across processes
    (``strategy.reduce_boolean_decision``), so all ranks stop at the same step; checking the loss reads
    one scalar from the device each step.

    Args:
        monitor: further logged keys to check at the end of each validation and training epoch.
        max_consecutive_skips: with a ``GradientMonitor(skip_non_finite=True)``, how many consecutive
            steps with a non-finite loss it may skip before the run is stopped.

    Example::

        >>> err = TrainingDiverged(
        ...     epoch=1, step=5, what="the training loss is nan",
        ...     learning_rates={"head": 1e6, "backbone": 1e6}, last_finite_checkpoint=None,
        ... )
        >>> print(*str(err).split(". "), sep=".\\n")
        Training diverged at epoch 1, global step 5: the training loss is nan.
        Learning rates: head=1e+06, backbone=1e+06.
        Last checkpoint with finite monitored values: none.
        Lower the learning rate or clip gradients (trainer.gradient_clip_val) and run again.
    """

    def __init__(self, monitor: list[str] | None = None, max_consecutive_skips: int = 10) -> None:
        if max_consecutive_skips < 0:
            raise ValueError(f"max_consecutive_skips must be >= 0, got {max_consecutive_skips}")
        self.monitor = list(monitor or [])
        self.max_consecutive_skips = max_consecutive_skips
        self.consecutive_non_finite = 0
        self.let_through = 0  # non-finite monitored values let through (tolerated by an EarlyStopping)
        self._loss_let_through = False

    @classmethod
    def attach(cls, trainer: pl.Trainer) -> NonFiniteGuard:
        """Add a guard to ``trainer`` ahead of its checkpoint callbacks, or return the one it has."""
        guard = next((cb for cb in trainer.callbacks if isinstance(cb, cls)), None)
        if guard is None:
            guard = cls()
            trainer.callbacks.append(guard)
            guard._run_before_checkpoints(trainer)
        return guard

    def _run_before_checkpoints(self, trainer: pl.Trainer) -> None:
        # Lightning calls hooks in `trainer.callbacks` order and moves checkpoint callbacks to the end when
        # the Trainer is built; one appended afterwards (by the CLI) must still see the metrics first. The
        # list is replaced, not mutated, so a hook loop running over the old one is not disturbed.
        callbacks = list(trainer.callbacks)
        first = next((i for i, cb in enumerate(callbacks) if isinstance(cb, Checkpoint)), None)
        if first is not None and callbacks.index(self) > first:
            callbacks.remove(self)
            callbacks.insert(first, self)
            trainer.callbacks = callbacks

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._run_before_checkpoints(trainer)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.consecutive_non_finite = 0
        self.let_through = 0

    # -- training loss ------------------------------------------------------------------------------

    def _skipping(self, trainer: pl.Trainer) -> bool:
        return any(isinstance(cb, GradientMonitor) and cb.skip_non_finite for cb in trainer.callbacks)

    @override
    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        finite = bool(torch.isfinite(loss.detach()).all())
        if not trainer.strategy.reduce_boolean_decision(not finite, all=False):
            self.consecutive_non_finite = 0
            return
        self.consecutive_non_finite += 1
        if self._skipping(trainer) and self.consecutive_non_finite <= self.max_consecutive_skips:
            self._loss_let_through = True
            return
        value = "not finite on another process" if finite else f"{_item(loss)}"
        what = f"the training loss is {value}"
        if self.consecutive_non_finite > 1:
            what += f" ({self.consecutive_non_finite} steps in a row; GradientMonitor skipped the others)"
        raise self._diverged(trainer, what)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # A step whose loss was let through logged it: a checkpoint saving on steps must not record it.
        if self._loss_let_through:
            self._loss_let_through = False
            self._check_monitored(trainer)

    # -- monitored metrics --------------------------------------------------------------------------

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._check_monitored(trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_monitored(trainer)

    def monitored_keys(self, trainer: pl.Trainer) -> dict[str, list[str]]:
        """``{logged key: [who monitors it]}``: checkpoint and early-stopping callbacks, and ``monitor``."""
        keys: dict[str, list[str]] = {key: ["NonFiniteGuard"] for key in self.monitor}
        for cb in [*trainer.early_stopping_callbacks, *trainer.checkpoint_callbacks]:
            key = getattr(cb, "monitor", None)
            if key:
                keys.setdefault(key, []).append(type(cb).__name__)
        return keys

    def _check_monitored(self, trainer: pl.Trainer) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            return
        metrics = trainer.callback_metrics
        problem = None
        for key, watchers in self.monitored_keys(trainer).items():
            value = metrics.get(key)
            if not isinstance(value, Tensor) or value.numel() != 1 or torch.isfinite(value):
                continue
            if self._tolerated(trainer, key, value):
                self.let_through += 1
                continue
            problem = problem or f"{key} = {_item(value)} (monitored by {', '.join(watchers)})"
        if trainer.strategy.reduce_boolean_decision(problem is not None, all=False):
            raise self._diverged(trainer, problem or "a monitored metric is not finite on another process")

    @staticmethod
    def _tolerated(trainer: pl.Trainer, key: str, value: Tensor) -> bool:
        """Whether an ``EarlyStopping`` on ``key`` tolerates NaN/inf and no checkpoint would make it best."""
        if not any(cb.monitor == key and not cb.check_finite for cb in trainer.early_stopping_callbacks):
            return False
        return not any(
            getattr(cb, "monitor", None) == key and _would_be_best(cb, value)
            for cb in trainer.checkpoint_callbacks
        )

    # -- the error ----------------------------------------------------------------------------------

    def _diverged(self, trainer: pl.Trainer, what: str) -> TrainingDiverged:
        return TrainingDiverged(
            epoch=trainer.current_epoch,
            step=trainer.global_step,
            what=what,
            learning_rates=learning_rates(trainer),
            last_finite_checkpoint=self.last_finite_checkpoint(trainer),
        )

    def last_finite_checkpoint(self, trainer: pl.Trainer) -> str | None:
        """The newest file a checkpoint callback saved while the values it monitors were finite, or ``None``.

        A ``ModelCheckpoint``'s top-k files with a finite score, and its ``last`` file (or, without a
        ``monitor``, the files it saved) unless a non-finite monitored value was let through, which it may
        hold. The guard stops runs before any other checkpoint records a non-finite value.
        """
        found: list[tuple[int, int, str]] = []
        for cb in trainer.checkpoint_callbacks:
            paths = []
            if getattr(cb, "monitor", None):
                paths += [(1, p) for p, s in getattr(cb, "best_k_models", {}).items() if _finite(s)]
                if not self.let_through:
                    paths.append((0, getattr(cb, "last_model_path", "")))
            else:
                paths += [(1, getattr(cb, "best_model_path", "")), (0, getattr(cb, "last_model_path", ""))]
            found += [
                (Path(p).stat().st_mtime_ns, rank, str(p)) for rank, p in paths if p and Path(p).is_file()
            ]
        return max(found)[2] if found else None


def learning_rates(trainer: pl.Trainer) -> dict[str, float]:
    """``{group name: lr}`` of the trainer's optimizers (``"<i>/<name>"`` with several optimizers).

    Groups are named by their ``name`` (``head``, ``backbone``...) or ``group <index>``.
    """
    rates: dict[str, float] = {}
    optimizers = trainer.optimizers
    for i, optimizer in enumerate(optimizers):
        for j, group in enumerate(optimizer.param_groups):
            name = str(group.get("name", f"group {j}"))
            rates[name if len(optimizers) == 1 else f"{i}/{name}"] = float(group["lr"])
    return rates


def _would_be_best(checkpoint: Any, value: Tensor) -> bool:
    """Whether ``ModelCheckpoint`` would make the non-finite ``value`` its best score (lightning 2.6.6:
    NaN is stored as the worst infinity and then wins only while no other score exists; an infinity
    in the good direction always wins). ``save_top_k=0`` never saves on a score."""
    if getattr(checkpoint, "save_top_k", 1) == 0:
        return False
    v = value.item()
    worst = math.isnan(v) or ((v > 0) == (getattr(checkpoint, "mode", "min") == "min"))
    best = getattr(checkpoint, "best_model_score", None)
    return not worst or best is None or not _finite(best)


def _finite(value: Any) -> bool:
    return bool(torch.isfinite(torch.as_tensor(value)).all())


def _item(value: Tensor) -> str:
    return str(value.detach().float().item()) if value.numel() == 1 else "not finite"
