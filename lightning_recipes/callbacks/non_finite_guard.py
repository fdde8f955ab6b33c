"""NonFiniteGuard: the one place that decides what a NaN/inf does (stop the run, skip a step, tolerate)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint, EarlyStopping
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.optim import Optimizer
from typing_extensions import override

from lightning_recipes.callbacks._diverged import TrainingDiverged, learning_rates
from lightning_recipes.callbacks._finite import (
    all_finite,
    constant_buffers,
    is_loss_key,
    last_finite_checkpoint,
    non_finite_weights,
    would_be_best,
)

NonFinite = Literal["stop", "skip", "tolerate"]
_POLICIES = ("stop", "skip", "tolerate")

__all__ = ["NonFinite", "NonFiniteGuard", "TrainingDiverged", "learning_rates"]


class NonFiniteGuard(Callback):
    """Decide what a NaN/inf weight, loss, gradient or monitored metric does; by default stop the run with
    :class:`TrainingDiverged`. No other callback decides it.

    ``lightning run`` and the ``lightning-recipes`` subcommands add one to every run (unless the recipe
    lists its own), so a diverged run ends with ``error: TrainingDiverged: ...`` and exit code 1
    instead of a "best" checkpoint, a test and a summary. ``non_finite`` says how lenient it is:

    * ``"stop"`` (default): any of the values below that is NaN/inf stops the run.
    * ``"skip"``: an optimizer step whose training loss or gradients are NaN/inf is skipped (gradients
      dropped, ``grad = None``: weights and optimizer state stay as they were), up to
      ``max_consecutive_skips`` in a row; the next one stops the run. The training values a skipped step
      logged are let through in its epoch. Under ``16-mixed`` the fp16 grad scaler skips overflowing
      steps itself (how it finds its scale): not counted, except that a NaN/inf loss counts towards the
      bound. Skips are counted (``skipped_steps``, logged as ``grad/skipped_steps``, in checkpoints),
      announced once, and each training epoch with skips ends with a count.
    * ``"tolerate"``: as ``"skip"``, and a NaN/inf value of a metric an ``EarlyStopping`` monitors is let
      through at a validation or training epoch end (:class:`~lightning_recipes.callbacks.EarlyStopping`
      counts it as no improvement, so it may still exhaust ``patience``).

    Never let through: NaN/inf weights, a loss or metric other than those above, a value a
    ``ModelCheckpoint`` would make its best, anything in a ``validate``/``test`` stage. Checked (details
    in docs/non_finite.md): the weights after every optimizer step and when a stage starts (one device
    sync, :func:`all_finite`); the training loss before its backward pass; with ``"skip"``/``"tolerate"``
    the gradients before the optimizer step (after AMP unscaling, before clipping); every logged loss and
    the metrics a ``ModelCheckpoint``/``EarlyStopping`` (or ``monitor`` here) watches, at the end of each
    validation, training epoch and ``validate``/``test`` stage.

    Order (docs/non_finite.md, "Order"): the guard decides before the checkpoint callbacks and
    ``EarlyStopping`` act on a value; :meth:`attach` puts a guard there. With ``"skip"``/``"tolerate"``,
    callbacks that read gradients in ``on_before_optimizer_step`` (``GradientMonitor``) come before it.
    Under DDP/FSDP every decision is reduced across processes, so all ranks stop, or skip, together.

    Args:
        non_finite: ``"stop"``, ``"skip"`` or ``"tolerate"`` (see above).
        max_consecutive_skips: with ``"skip"``/``"tolerate"``, how many optimizer steps in a row may be
            skipped before the run is stopped.
        monitor: further logged keys to check at the end of each validation and training epoch.

    Example::

        >>> NonFiniteGuard(non_finite="skip", max_consecutive_skips=3).non_finite
        'skip'
        >>> NonFiniteGuard(non_finite="ignore")
        Traceback (most recent call last):
        ...
        ValueError: NonFiniteGuard: non_finite must be 'stop', 'skip' or 'tolerate', got 'ignore'
        >>> layer = torch.nn.Linear(2, 2)
        >>> with torch.no_grad():
        ...     layer.bias[0] = float("nan")
        >>> non_finite_weights(layer)
        ['bias']
    """

    def __init__(
        self,
        non_finite: NonFinite = "stop",
        max_consecutive_skips: int = 10,
        monitor: list[str] | None = None,
    ) -> None:
        if non_finite not in _POLICIES:
            raise ValueError(
                f"NonFiniteGuard: non_finite must be 'stop', 'skip' or 'tolerate', got {non_finite!r}"
            )
        if max_consecutive_skips < 0:
            raise ValueError(f"max_consecutive_skips must be >= 0, got {max_consecutive_skips}")
        self.non_finite = non_finite
        self.max_consecutive_skips = max_consecutive_skips
        self.monitor = list(monitor or [])
        self.consecutive_skips = 0  # optimizer steps skipped in a row (the scaler's too, for a NaN/inf loss)
        self.skipped_steps = 0  # steps whose gradients the guard dropped (in checkpoints)
        self.epoch_steps = self.epoch_skipped_steps = 0
        self.let_through = 0  # non-finite logged values let through (tolerated metrics, skipped steps')
        self._loss_let_through = False  # this batch's loss was let through
        self._step_loss_let_through = False  # a loss of this optimizer step was let through
        self._epoch_let_through = 0  # losses let through in this training epoch
        self._skip_announced = False
        self._checked_step = -1  # global step whose weights were checked last
        self._start_checked = False  # this stage's weights were checked when it started
        self._constants: set[str] = set()  # buffers holding ±inf at the start: masks, not weights
        self._eval_keys: set[str] = set()  # keys logged by this fit's validations
        self._keys_before: set[str] = set()

    @classmethod
    def attach(cls, trainer: pl.Trainer) -> NonFiniteGuard:
        """Return ``trainer``'s guard, or add a stopping one just ahead of its first early-stopping or
        checkpoint callback (at the end without one). The list is replaced, not mutated."""
        guard = next((cb for cb in trainer.callbacks if isinstance(cb, cls)), None)
        if guard is None:
            guard = cls()
            callbacks = list(trainer.callbacks)
            acting = (EarlyStopping, Checkpoint)
            first = next((i for i, cb in enumerate(callbacks) if isinstance(cb, acting)), len(callbacks))
            callbacks.insert(first, guard)
            trainer.callbacks = callbacks
        return guard

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._start_checked = False
        if stage != TrainerFn.FITTING or self.non_finite != "tolerate":
            return
        for cb in trainer.early_stopping_callbacks:
            if getattr(cb, "check_finite", False):  # it would stop on the values the guard lets through
                raise ValueError(
                    f"NonFiniteGuard(non_finite='tolerate') lets a NaN/inf {cb.monitor} through, but "
                    f"{type(cb).__name__}(monitor={cb.monitor!r}) has check_finite=True and would stop "
                    "the run on it. Use lightning_recipes.callbacks.EarlyStopping (NaN/inf counts as no "
                    "improvement) or pass check_finite=False."
                )

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval_keys = set()

    @override
    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_weights_at_start(trainer, pl_module)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.consecutive_skips = 0
        self.let_through = 0
        self._checked_step = trainer.global_step
        self._check_weights_at_start(trainer, pl_module)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_let_through = self.epoch_steps = self.epoch_skipped_steps = 0

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

    # -- training loss and gradients: stop, or skip the step ------------------------------------------

    def _in_a_row(self) -> str:
        n = self.consecutive_skips
        return f" ({n + 1} steps in a row; {n} skipped before this one)" if n else ""

    @override
    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        finite = bool(torch.isfinite(loss.detach()).all())
        if not trainer.strategy.reduce_boolean_decision(not finite, all=False):
            return
        if self.non_finite != "stop" and self.consecutive_skips < self.max_consecutive_skips:
            self._loss_let_through = self._step_loss_let_through = True  # its gradients: NaN/inf, skipped
            self._epoch_let_through += 1
            return
        value = "not finite on another process" if finite else f"{_item(loss)}"
        raise self._diverged(trainer, pl_module, f"the training loss is {value}{self._in_a_row()}")

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        if self.non_finite == "stop":  # NaN/inf gradients make NaN/inf weights: checked after the step
            return
        self.epoch_steps += 1
        loss_let_through, self._step_loss_let_through = self._step_loss_let_through, False
        if getattr(trainer.precision_plugin, "scaler", None) is not None:  # 16-mixed: the scaler skips
            bad, skip = loss_let_through, False  # overflowing steps itself; only a NaN/inf loss counts here
        else:
            grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            bad = skip = trainer.strategy.reduce_boolean_decision(not all_finite(grads), all=False)
        if not bad:
            self.consecutive_skips = 0
        elif self.consecutive_skips >= self.max_consecutive_skips:  # a finite loss, NaN/inf gradients
            raise self._diverged(trainer, pl_module, f"the gradients are not finite{self._in_a_row()}")
        else:
            self.consecutive_skips += 1
        if skip:
            self._skip(trainer, optimizer)
        pl_module.log("grad/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)

    def _skip(self, trainer: pl.Trainer, optimizer: Optimizer) -> None:
        self.skipped_steps += 1
        self.epoch_skipped_steps += 1
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None
        if not self._skip_announced:
            self._skip_announced = True
            rank_zero_info(
                f"NonFiniteGuard: skipped the optimizer step at epoch {trainer.current_epoch},"
                f" global step {trainer.global_step}: the gradients are not finite; weights left unchanged"
                f" (non_finite={self.non_finite!r}; each epoch with skips ends with a count)."
            )

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
        if self.epoch_skipped_steps:
            rank_zero_info(
                f"NonFiniteGuard: epoch {trainer.current_epoch}: skipped {self.epoch_skipped_steps} of"
                f" {self.epoch_steps} optimizer steps with non-finite gradients"
                f" ({self.skipped_steps} in total)."
            )
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
        """Whether a NaN/inf ``key`` is let through during fit: with ``"tolerate"``, a key an
        ``EarlyStopping`` monitors; with ``"skip"`` or ``"tolerate"``, another training key logged in an
        epoch whose loss was let through (a skipped step's); and no checkpoint would make it its best."""
        if trainer.state.fn != TrainerFn.FITTING or self.non_finite == "stop":
            return False
        if any(cb.monitor == key for cb in trainer.early_stopping_callbacks):
            allowed = self.non_finite == "tolerate"
        else:
            allowed = self._epoch_let_through > 0 and key not in self._eval_keys
        return allowed and not any(
            getattr(cb, "monitor", None) == key and would_be_best(cb, value)
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
        # every file saved while the monitored values were finite; a `last` one unless one was let through
        last_finite = last_finite_checkpoint(trainer, self.let_through == 0) if stage == "fit" else None
        return TrainingDiverged(
            epoch=trainer.current_epoch,
            step=trainer.global_step,
            what=what,
            learning_rates=learning_rates(trainer),
            last_finite_checkpoint=last_finite,
            stage=stage,
            weights_finite=weights_finite,
            weights_from=str(trainer.ckpt_path) if trainer.ckpt_path else None,
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"skipped_steps": self.skipped_steps}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped_steps = state_dict.get("skipped_steps", 0)


def _item(value: Tensor) -> str:
    return str(value.detach().float().item()) if value.numel() == 1 else "not finite"
