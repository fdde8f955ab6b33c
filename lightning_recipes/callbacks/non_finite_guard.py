"""NonFiniteGuard: a run whose weights or losses turn NaN/inf fails loudly; no NaN checkpoint, no NaN test."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn
from typing_extensions import override

from lightning_recipes.callbacks._finite import all_finite, constant_buffers, is_loss_key, non_finite_weights
from lightning_recipes.callbacks.gradient_monitor import GradientMonitor


class TrainingDiverged(RuntimeError):
    """Raised by :class:`NonFiniteGuard` when the weights, a logged loss or a monitored metric is NaN/inf.

    The message is one line. For a fit (``stage="fit"``): where (epoch, global step), what was not
    finite, the learning rate of each optimizer group and the last checkpoint whose monitored values were
    finite (every checkpoint the guard lets a ``ModelCheckpoint`` write has finite weights). For an
    evaluation stage (``"validate"``, ``"test"``, ``"predict"``): what was not finite and the checkpoint
    the weights were loaded from. The same facts are attributes: ``epoch``, ``step``, ``what``,
    ``learning_rates`` (``{group name: lr}``, prefixed with ``"<optimizer index>/"`` when there are
    several optimizers), ``last_finite_checkpoint`` and ``weights_from`` (paths or ``None``), ``stage``
    and ``weights_finite`` (``False`` when the weights themselves are NaN/inf, on this process or
    another: no checkpoint of them is worth keeping).
    """

    def __init__(
        self,
        epoch: int,
        step: int,
        what: str,
        learning_rates: dict[str, float],
        last_finite_checkpoint: str | None,
        stage: str = "fit",
        weights_finite: bool = True,
        weights_from: str | None = None,
    ) -> None:
        self.epoch, self.step, self.what = epoch, step, what
        self.learning_rates, self.last_finite_checkpoint = learning_rates, last_finite_checkpoint
        self.stage, self.weights_finite, self.weights_from = stage, weights_finite, weights_from
        if stage == "fit":
            lrs = ", ".join(f"{name}={lr:.3g}" for name, lr in learning_rates.items()) or "none"
            message = (
                f"Training diverged at epoch {epoch}, global step {step}: {what}. Learning rates: {lrs}. "
                f"Last checkpoint with finite monitored values: {last_finite_checkpoint or 'none'}. "
                "Lower the learning rate or clip gradients (trainer.gradient_clip_val) and run again."
            )
        else:
            weights = weights_from or "the model's own (no checkpoint loaded)"
            message = (
                f"Evaluation ({stage}) failed: {what}. "
                f"Weights: {weights}. NaN/inf weights or losses give no {stage} results; "
                "use a checkpoint with finite weights."
            )
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (spawned DDP processes), with its attributes
        return type(self), (
            self.epoch,
            self.step,
            self.what,
            self.learning_rates,
            self.last_finite_checkpoint,
            self.stage,
            self.weights_finite,
            self.weights_from,
        )


class NonFiniteGuard(Callback):
    """Stop a run whose weights, logged losses or monitored metrics are NaN/inf: :class:`TrainingDiverged`.

    ``lightning run`` and the ``lightning-recipes`` subcommands add one to every run (unless the recipe
    lists its own), so a diverged run ends with ``error: TrainingDiverged: ...`` and exit code 1
    instead of a "best" checkpoint, a test and a summary.

    * **Weights** (every parameter and floating-point buffer, BatchNorm's running statistics included;
      buffers holding ±inf without NaN when the stage starts are constants, masks, and left out): after
      every optimizer step (``on_train_batch_end`` when ``global_step`` moved, so once per step under
      gradient accumulation), and when fit (its sanity check or first step) or an evaluation stage
      starts, on the weights it was built with or loaded (``trainer.ckpt_path``). One pass and one
      device sync per step: their extremes (which cannot overflow) are finite or not (:func:`all_finite`).
    * **The training loss**, in ``on_before_backward``: a non-finite loss stops the run *before* its
      backward pass and optimizer step. With a :class:`~lightning_recipes.callbacks.GradientMonitor`
      that has ``skip_non_finite=True`` (which drops such steps), up to ``max_consecutive_skips`` steps
      in a row are let through first.
    * **Every logged loss** (a key whose last component contains ``loss``: ``train/loss``,
      ``val/loss_epoch``, ``test/loss/dataloader_idx_0``...) and **monitored metrics** (the ``monitor``
      of every ``ModelCheckpoint`` and ``EarlyStopping``, plus ``monitor`` given here): the validation's
      at the end of each validation (not the sanity check, whose two batches are not the validation),
      the training's at the end of each training epoch, and the losses of a ``validate``/``test``
      stage at its end, so no test reports NaN metrics as results.

    The guard runs ahead of the checkpoint callbacks (it moves itself there in ``setup``), so it stops
    the run before a ``ModelCheckpoint`` saves NaN weights or records a NaN/inf score (Lightning's
    ``ModelCheckpoint`` keeps a NaN as its best when it has no other score yet, and a ``-inf`` loss
    always). What is let through, on purpose: the monitored key of an ``EarlyStopping`` with
    ``non_finite="ignore"`` (Lightning's ``check_finite=False``), and the values a step logged whose
    loss a ``GradientMonitor(skip_non_finite=True)`` skipped (in that training epoch), unless an
    ``EarlyStopping`` stops on that key's NaN/inf or a ``ModelCheckpoint`` would make the value its best.
    Never the weights. Under DDP/FSDP every decision is reduced across processes
    (``strategy.reduce_boolean_decision``), so all ranks stop at the same step.

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
        >>> layer = torch.nn.Linear(2, 2)
        >>> with torch.no_grad():
        ...     layer.bias[0] = float("nan")
        >>> non_finite_weights(layer)
        ['bias']
    """

    def __init__(self, monitor: list[str] | None = None, max_consecutive_skips: int = 10) -> None:
        if max_consecutive_skips < 0:
            raise ValueError(f"max_consecutive_skips must be >= 0, got {max_consecutive_skips}")
        self.monitor = list(monitor or [])
        self.max_consecutive_skips = max_consecutive_skips
        self.consecutive_non_finite = 0
        self.let_through = 0  # non-finite logged values let through (EarlyStopping ignore, skipped steps)
        self._loss_let_through = False  # this batch's loss was let through
        self._epoch_let_through = 0  # losses let through in this training epoch
        self._checked_step = -1  # global step whose weights were checked last
        self._start_checked = False  # this stage's weights were checked when it started
        self._constants: set[str] = set()  # buffers holding ±inf at the start: masks, not weights
        self._eval_keys: set[str] = set()  # keys logged by this fit's validations
        self._keys_before: set[str] = set()

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
        self._start_checked = False

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval_keys = set()

    @override
    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_weights_at_start(trainer, pl_module)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.consecutive_non_finite = 0
        self.let_through = 0
        self._checked_step = trainer.global_step
        self._check_weights_at_start(trainer, pl_module)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_let_through = 0

    # -- weights ------------------------------------------------------------------------------------

    def _check_weights_at_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Once per stage, on the weights it was given (built, or loaded from ``trainer.ckpt_path``)."""
        if self._start_checked:  # for fit: the sanity check already did
            return
        self._start_checked = True
        self._constants = constant_buffers(pl_module)
        self._check_weights(trainer, pl_module, "start")

    def weights(self, pl_module: nn.Module) -> list[Tensor]:
        """What is checked after each step: every parameter and floating-point buffer (BatchNorm's running
        statistics...), less the buffers that held ±inf when the stage started (constants such as masks)."""
        buffers = (
            b for n, b in pl_module.named_buffers() if b.is_floating_point() and n not in self._constants
        )
        return [*pl_module.parameters(), *buffers]

    def _weights_finite(self, trainer: pl.Trainer, pl_module: nn.Module) -> tuple[bool, str]:
        """``(finite on every process, what is not finite here)``; a collective, one device sync."""
        finite = all_finite(self.weights(pl_module))
        if not trainer.strategy.reduce_boolean_decision(not finite, all=False):
            return True, ""
        if finite:
            return False, "on another process"
        names = non_finite_weights(pl_module, skip=self._constants)
        total = len(self.weights(pl_module))
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        return False, f"({len(names)} of {total} tensors: {shown})"

    def _check_weights(self, trainer: pl.Trainer, pl_module: pl.LightningModule, when: str) -> None:
        finite, where = self._weights_finite(trainer, pl_module)
        if finite:
            return
        if when == "step":
            what = "the weights are not finite after the optimizer step"
        elif trainer.state.fn == TrainerFn.FITTING:
            source = f"loaded from {trainer.ckpt_path}" if trainer.ckpt_path else "of the model as built"
            what = f"the weights {source} are not finite before training"
        else:  # the message names the checkpoint they were loaded from
            what = "the weights are not finite"
        raise self._diverged(trainer, pl_module, f"{what} {where}", weights_finite=False)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step != self._checked_step:  # an optimizer step was taken (not accumulating)
            self._checked_step = trainer.global_step
            self._check_weights(trainer, pl_module, "step")
        # A step whose loss was let through logged it: a checkpoint saving on steps must not record it.
        if self._loss_let_through:
            self._loss_let_through = False
            self._check_logged(trainer, pl_module, self.monitored_keys(trainer))

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
            self._epoch_let_through += 1
            return
        value = "not finite on another process" if finite else f"{_item(loss)}"
        what = f"the training loss is {value}"
        if self.consecutive_non_finite > 1:
            what += f" ({self.consecutive_non_finite} steps in a row; GradientMonitor skipped the others)"
        raise self._diverged(trainer, pl_module, what)

    # -- logged losses and monitored metrics --------------------------------------------------------

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            self._keys_before = set(trainer.callback_metrics)
        else:
            self._check_weights_at_start(trainer, pl_module)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:  # two batches, not the validation: its losses may be NaN where
            return  # the validation's are not (a batch of padding only); the weights were checked
        metrics = trainer.callback_metrics
        if trainer.state.fn != TrainerFn.FITTING:
            self._check_logged(trainer, pl_module, [k for k in metrics if is_loss_key(k)])
            return
        self._eval_keys |= set(metrics) - self._keys_before
        losses = [k for k in metrics if k in self._eval_keys and is_loss_key(k)]
        self._check_logged(trainer, pl_module, [*losses, *self.monitored_keys(trainer)])

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = trainer.callback_metrics  # the epoch's aggregates (before the module's hook logs more)
        losses = [k for k in metrics if k not in self._eval_keys and is_loss_key(k)]
        self._check_logged(trainer, pl_module, [*losses, *self.monitored_keys(trainer)])

    @override
    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_weights_at_start(trainer, pl_module)

    @override
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_logged(trainer, pl_module, [k for k in trainer.callback_metrics if is_loss_key(k)])

    @override
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_weights_at_start(trainer, pl_module)

    def monitored_keys(self, trainer: pl.Trainer) -> dict[str, list[str]]:
        """``{logged key: [who monitors it]}``: checkpoint and early-stopping callbacks, and ``monitor``."""
        keys: dict[str, list[str]] = {key: ["NonFiniteGuard"] for key in self.monitor}
        for cb in [*trainer.early_stopping_callbacks, *trainer.checkpoint_callbacks]:
            key = getattr(cb, "monitor", None)
            if key:
                keys.setdefault(key, []).append(type(cb).__name__)
        return keys

    def _check_logged(self, trainer: pl.Trainer, pl_module: pl.LightningModule, keys: Iterable[str]) -> None:
        """Raise unless each of ``keys`` that was logged is finite or let through, on every process."""
        metrics, watchers = trainer.callback_metrics, self.monitored_keys(trainer)
        problem = None
        for key in dict.fromkeys(keys):  # in order, once
            value = metrics.get(key)
            if not isinstance(value, Tensor) or bool(torch.isfinite(value).all()):
                continue
            if self._tolerated(trainer, key, value):
                self.let_through += 1
                continue
            by = f" (monitored by {', '.join(watchers[key])})" if key in watchers else ""
            problem = problem or f"{key} = {_item(value)}{by}"
        if trainer.strategy.reduce_boolean_decision(problem is not None, all=False):
            raise self._diverged(
                trainer, pl_module, problem or "a logged value is not finite on another process"
            )

    def _tolerated(self, trainer: pl.Trainer, key: str, value: Tensor) -> bool:
        """Whether a NaN/inf ``key`` is let through: an ``EarlyStopping`` ignores it, or it was logged by a
        training step whose loss a ``GradientMonitor`` skipped (this epoch); and no ``EarlyStopping``
        stops on it, no checkpoint would make it its best. Evaluation stages tolerate nothing."""
        if trainer.state.fn != TrainerFn.FITTING:
            return False
        stoppers = [cb for cb in trainer.early_stopping_callbacks if cb.monitor == key]
        if any(cb.check_finite for cb in stoppers):
            return False
        skipped = self._epoch_let_through > 0 and key not in self._eval_keys
        if not stoppers and not skipped:
            return False
        return not any(
            getattr(cb, "monitor", None) == key and _would_be_best(cb, value)
            for cb in trainer.checkpoint_callbacks
        )

    # -- the error ----------------------------------------------------------------------------------

    def _diverged(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        what: str,
        weights_finite: bool | None = None,
    ) -> TrainingDiverged:
        if weights_finite is None:  # a collective: every process raises here together (decisions are reduced)
            # e.g. a forward pass whose loss is NaN has already put NaN/inf in BatchNorm's running statistics
            weights_finite, where = self._weights_finite(trainer, pl_module)
            what += "" if weights_finite else f"; the weights are not finite either {where}"
        fn = trainer.state.fn
        stage = "fit" if fn in (None, TrainerFn.FITTING) else str(fn.value)
        return TrainingDiverged(
            epoch=trainer.current_epoch,
            step=trainer.global_step,
            what=what,
            learning_rates=learning_rates(trainer),
            last_finite_checkpoint=self.last_finite_checkpoint(trainer) if stage == "fit" else None,
            stage=stage,
            weights_finite=weights_finite,
            weights_from=str(trainer.ckpt_path) if trainer.ckpt_path else None,
        )

    def last_finite_checkpoint(self, trainer: pl.Trainer) -> str | None:
        """The newest file a checkpoint callback saved while the values it monitors were finite, or ``None``.

        A ``ModelCheckpoint``'s top-k files with a finite score, and its ``last`` file (or, without a
        ``monitor``, the files it saved) unless a non-finite monitored value was let through, which it may
        hold. The guard stops runs before any checkpoint records non-finite weights or another value.
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
