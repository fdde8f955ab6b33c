"""EMA: an exponential moving average of the weights, kept by Lightning's ``WeightAveraging``.

Lightning's :class:`~lightning.pytorch.callbacks.WeightAveraging` keeps a copy of the module (a torch
``AveragedModel``), updates it after each optimizer step, swaps it in for validation, writes it as the
checkpoint's ``state_dict`` (the live weights go to ``current_model_state``, for resuming) and copies it
into the module when training ends. :class:`EMA` is that callback with an exponential average and what
this library's modules and runs need on top:

- the average is an exact ``lerp`` (``avg += (1 - decay) * (w - avg)``): a weight that does not train
  (a frozen backbone, an adapter's base weights) stays bit-for-bit equal to the live one, so a trainable-only
  checkpoint's fingerprint of the frozen weights still matches, and a backbone that ``FreezeUnfreeze``
  unfreezes mid-run is averaged from its pretrained values on; integer buffers (BatchNorm's
  ``num_batches_tracked``) follow the live model;
- only ``fit`` swaps or restores: a ``validate``/``test``/``predict`` with a checkpoint (``lightning run``'s
  test of the best checkpoint) gets the checkpoint's ``state_dict``, the average; Lightning 2.6's callback
  loads the live weights there instead;
- the average lives on the module's device once the strategy has moved it (Lightning builds it in
  ``setup``, on the CPU);
- ``current_model_state`` keeps only the weights that differ from the average (not the frozen ones), and
  the checkpoint says it holds EMA weights (:data:`CHECKPOINT_KEY`, read by ``lightning-recipes export``);
- what cannot work is refused before training: a sharding strategy, a half-precision ``-true`` model, a
  weights-only ``ModelCheckpoint`` (Lightning calls no callback for those, so they would hold the live
  weights).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, WeightAveraging
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from typing_extensions import override

from lightning_recipes import _compat
from lightning_recipes.callbacks._strategy import whole_model_refusal

__all__ = ["CHECKPOINT_KEY", "EMA"]

#: Checkpoint key of what an EMA run's ``state_dict`` holds: ``{"decay", "updates",
#: "update_starting_at_step"}``.
CHECKPOINT_KEY = "lightning_recipes_ema"
#: Precisions whose weights stay float32 (the average is float32 too).
_FLOAT32_WEIGHTS = ("32-true", "16-mixed", "bf16-mixed")


class EMA(WeightAveraging):
    """Exponential moving average of the weights: validation, checkpoints and the model after ``fit`` use it.

    After each optimizer step ``avg = decay * avg + (1 - decay) * w`` for every parameter and floating-point
    buffer (``use_buffers``); the average covers about the last ``1 / (1 - decay)`` steps (0.999: 1,000
    steps; a short fine-tune wants 0.99 or less). Until step ``update_starting_at_step`` the average is the
    live weights. Validation during ``fit`` runs on the average (so ``ModelCheckpoint``/``EarlyStopping``
    monitor it), every checkpoint's ``state_dict`` is the average and, when ``fit`` ends, the module holds
    it: ``test``, ``predict``, ``save_pretrained``, ``load_from_checkpoint`` and ``lightning-recipes export``
    all get the averaged weights. Resuming restores both the average and the live weights.

    Args:
        decay: weight of the old average at each step, in ``(0, 1)``.
        update_starting_at_step: optimizer steps before averaging starts (the average is the live weights
            until then), e.g. to leave out the first, fast-moving steps of a new head.
        device: where the average lives (``"cpu"`` saves accelerator memory, at a copy per step); ``None``:
            the module's device.
        use_buffers: average the floating-point buffers too (BatchNorm running statistics); ``False``:
            they follow the live model.

    Example::

        >>> import lightning as L, torch
        >>> from lightning.pytorch.demos.boring_classes import BoringModel
        >>> torch.manual_seed(0) and None
        >>> model, ema = BoringModel(), EMA(decay=0.5)
        >>> trainer = L.Trainer(max_steps=3, callbacks=[ema], logger=False, enable_checkpointing=False,
        ...                     enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
        >>> trainer.fit(model)
        >>> ema.updates
        3
        >>> EMA(decay=1.0)
        Traceback (most recent call last):
        ...
        ValueError: EMA decay must be in (0, 1) (the old average's weight at each step, e.g. 0.999), got 1.0
    """

    def __init__(
        self,
        decay: float = 0.999,
        update_starting_at_step: int = 0,
        device: str | None = None,
        use_buffers: bool = True,
    ) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(
                "EMA decay must be in (0, 1) (the old average's weight at each step, e.g. 0.999), "
                f"got {decay}"
            )
        if update_starting_at_step < 0:
            raise ValueError(f"EMA update_starting_at_step must be >= 0, got {update_starting_at_step}")
        super().__init__(device=device, use_buffers=use_buffers, multi_avg_fn=self._average)
        self.decay = decay
        self.update_starting_at_step = update_starting_at_step
        self.device = device
        self._weight = 1.0  # of the live weights in this step's update

    @property
    def updates(self) -> int:
        """How many optimizer steps the average has taken in (``0`` before ``fit``)."""
        average = _compat.average_model(self)
        return 0 if average is None else int(average.n_averaged)

    @classmethod
    def strategy_refusal(cls, strategy: type) -> str | None:
        """Why EMA cannot run under the strategy class ``strategy``, or ``None`` if it can.

        Asked in ``setup`` and, before anything is built, by :mod:`lightning_recipes.preflight`.
        """
        return whole_model_refusal(
            "EMA",
            strategy,
            "Lightning's weight averaging keeps a whole, unsharded copy of the model and swaps it parameter "
            "by parameter with the sharded one. Use --trainer.strategy=ddp, or drop EMA",
        )

    # -- hooks -----------------------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            refusal = self.strategy_refusal(type(trainer.strategy))
            if refusal:
                raise NotImplementedError(refusal)
            if trainer.precision not in _FLOAT32_WEIGHTS:
                raise ValueError(
                    f"EMA with trainer.precision={trainer.precision}: the model's weights become half "
                    "precision after the average is copied, and every validation would round the average to "
                    "them; use "
                    f"one of {', '.join(_FLOAT32_WEIGHTS)}, or drop EMA"
                )
            checkpoints = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
            if any(c.save_weights_only for c in checkpoints):
                raise ValueError(
                    "EMA with ModelCheckpoint(save_weights_only=True): Lightning calls no callback for "
                    "weights-only checkpoints, so they would hold the live weights, not the average; set "
                    "save_weights_only: false, or drop EMA"
                )
        super().setup(trainer, pl_module, stage)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        average = _compat.average_model(self)
        ours = [(n, t.shape) for n, t in average.module.state_dict().items()]
        theirs = [(n, t.shape) for n, t in pl_module.state_dict().items()]
        if ours != theirs:
            changed = sorted(set(ours) ^ set(theirs))[:3]
            raise RuntimeError(
                f"EMA: {type(pl_module).__name__}'s weights changed after EMA copied it in setup "
                f"({len(theirs)} tensors now, {len(ours)} copied; e.g. {changed}): build every layer in "
                "__init__ (or configure_model), not in setup or a hook"
            )
        if self.device is None:  # the strategy has moved the module since setup
            average.to(pl_module.device)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        started = trainer.global_step > self.update_starting_at_step
        self._weight = 1.0 - self.decay if started else 1.0
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_validation_epoch_start(trainer, pl_module)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_validation_epoch_end(trainer, pl_module)

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            return  # the module's own weights: after fit, the average
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        average, live = checkpoint["state_dict"], checkpoint["current_model_state"]
        checkpoint["current_model_state"] = {k: v for k, v in live.items() if not _same(v, average.get(k))}
        checkpoint[CHECKPOINT_KEY] = {
            "decay": self.decay,
            "updates": self.updates,
            "update_starting_at_step": self.update_starting_at_step,
        }

    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            return  # the module already holds the checkpoint's state_dict: the average
        if "current_model_state" in checkpoint:
            # the live weights equal to the average were left out when saving
            live = checkpoint["current_model_state"]
            checkpoint["current_model_state"] = {**checkpoint["state_dict"], **live}
        super().on_load_checkpoint(trainer, pl_module, checkpoint)

    # -- the average -----------------------------------------------------------------------------
    @torch.no_grad()
    def _average(self, averaged: list[Tensor], current: list[Tensor], n_averaged: Any) -> None:
        """``AveragedModel``'s ``multi_avg_fn``: lerp floating-point tensors, copy the others."""
        for avg, now in zip(averaged, current, strict=True):
            if avg.is_floating_point():
                avg.lerp_(now.to(avg.dtype), self._weight)
            else:
                avg.copy_(now)


def _same(a: Tensor, b: Tensor | None) -> bool:
    return b is not None and a.shape == b.shape and torch.equal(a, b.to(a.device))
