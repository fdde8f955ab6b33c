"""GradientMonitor: grad norm before clipping, fraction of steps clipped, per-group norms, fp16 overflows."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.optim import Optimizer
from typing_extensions import override

from lightning_recipes import _compat


class GradientMonitor(Callback):
    """Log gradient norms before the Trainer clips them, the fraction clipped and the fp16 scaler's skips.

    Runs in ``on_before_optimizer_step``, which Lightning calls after the backward pass and after AMP
    unscaling (``16-mixed``; a ``fused=True`` optimizer unscales inside its step, so the monitor
    divides by the loss scale itself) and *before* gradient clipping (``gradient_clip_val`` and the modules'
    adaptive clipping), so the norms are the true, unclipped ones. It only measures: gradients are never
    changed (what a NaN/inf gradient does is :class:`~lightning_recipes.callbacks.NonFiniteGuard`'s
    ``non_finite``, which skips steps after this monitor has seen them). Logged (on step, ``prefix``
    ``grad/``):

    * ``grad/norm``: global 2-norm of all gradients of the optimizer;
    * ``grad/clipped_fraction``: fraction of steps so far whose gradients the Trainer clipped
      (``norm > gradient_clip_val`` for ``gradient_clip_algorithm="norm"``, largest absolute gradient
      ``> gradient_clip_val`` for ``"value"``; a step whose norm is NaN/inf is not counted); 0 when
      the Trainer does not clip;
    * ``grad/norm/<group>`` with ``per_group=True``: 2-norm per optimizer parameter group, by its
      ``name`` (``head``, ``backbone``, ``backbone.3``...; the group index when unnamed);
    * ``grad/scale`` and ``grad/scaler_skipped_steps`` under ``16-mixed`` (fp16 with Lightning's grad
      scaler): the loss scale, and the steps the scaler skipped because the scaled fp16 gradients
      overflowed. Overflow is how the scaler finds its scale, so these steps are the scaler's, not bad
      steps (the scaler leaves weights and optimizer state untouched and halves the scale); each
      epoch with overflow ends with one line counting them. A run whose every step
      overflows therefore says so once per epoch instead of finishing quietly untrained.

    Args:
        per_group: also log one norm per optimizer parameter group.
        norm_type: the p of the p-norm (``2.0``; ``inf`` for the largest absolute value).
        prefix: prefix of the logged keys.

    Example::

        >>> import torch
        >>> layer = torch.nn.Linear(2, 1)
        >>> layer(torch.ones(1, 2)).sum().backward()  # gradients: weight [1, 1], bias [1]
        >>> groups = [{"params": [layer.weight], "name": "head"}, {"params": [layer.bias]}]
        >>> opt = torch.optim.SGD(groups, lr=0.1)
        >>> total, groups = GradientMonitor.grad_norms(opt)
        >>> round(total, 4), {k: round(v, 4) for k, v in groups.items()}
        (1.7321, {'head': 1.4142, '1': 1.0})
    """

    def __init__(
        self,
        per_group: bool = False,
        norm_type: float = 2.0,
        prefix: str = "grad/",
    ) -> None:
        if norm_type <= 0:
            raise ValueError(f"norm_type must be > 0 (or inf), got {norm_type}")
        self.per_group = per_group
        self.norm_type = float(norm_type)
        self.prefix = prefix
        self.steps = 0
        self.clipped_steps = 0
        self.scaler_skipped_steps = 0
        self.last_norm: float | None = None
        self.last_group_norms: dict[str, float] = {}
        self.epoch_steps = 0
        self.epoch_scaler_skipped_steps = 0

    @staticmethod
    def grad_norms(
        optimizer: Optimizer, norm_type: float = 2.0, sharded: bool = False
    ) -> tuple[float, dict[str, float]]:
        """``(global norm, {group name: norm})`` of the gradients held by ``optimizer``'s parameters.

        ``sharded``: each process holds a shard of every gradient (FSDP), so the local norms are
        combined over the processes (a collective: every rank must call it).
        """
        names, norms = [], []
        for i, group in enumerate(optimizer.param_groups):
            grads = [p.grad.detach().float() for p in group["params"] if p.grad is not None]
            if not grads and not sharded:
                continue
            device = grads[0].device if grads else group["params"][0].device
            stacked = [torch.linalg.vector_norm(g, norm_type) for g in grads] or [
                torch.zeros((), device=device)
            ]
            names.append(str(group.get("name", i)))
            norms.append(torch.linalg.vector_norm(torch.stack(stacked), norm_type))
        if not norms:
            return 0.0, {}
        local = torch.stack(norms)
        group_norms = _across_shards(local, norm_type) if sharded else local
        total = torch.linalg.vector_norm(group_norms, norm_type).item()
        return total, dict(zip(names, group_norms.tolist(), strict=True))

    @staticmethod
    def _max_abs(optimizer: Optimizer, sharded: bool = False) -> float:
        values = [
            p.grad.detach().abs().max()
            for g in optimizer.param_groups
            for p in g["params"]
            if p.grad is not None and p.grad.numel()
        ]
        local = torch.stack(values).max() if values else torch.zeros(())
        return _across_shards(local, math.inf).item() if sharded else local.item()

    def _is_clipped(self, trainer: pl.Trainer, optimizer: Optimizer, norm: float) -> bool:
        clip = trainer.gradient_clip_val
        if not clip:
            return False
        sharded = isinstance(trainer.strategy, FSDPStrategy)
        if trainer.gradient_clip_algorithm == "value":  # a str enum: GradClipAlgorithmType.VALUE
            return self._max_abs(optimizer, sharded) > clip
        return norm > clip if self.norm_type == 2.0 else self.grad_norms(optimizer, sharded=sharded)[0] > clip

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        norm, groups = self.grad_norms(optimizer, self.norm_type, isinstance(trainer.strategy, FSDPStrategy))
        scaler = getattr(trainer.precision_plugin, "scaler", None)  # 16-mixed: torch.amp.GradScaler
        if scaler is not None and _compat.optimizer_unscales_itself(optimizer):  # fused: still scaled
            scale = float(scaler.get_scale())
            norm, groups = norm / scale, {name: value / scale for name, value in groups.items()}
        self.steps += 1
        self.last_norm, self.last_group_norms = norm, groups
        metrics: dict[str, Any] = {f"{self.prefix}norm": norm}
        self.epoch_steps += 1
        if scaler is not None:
            metrics[f"{self.prefix}scale"] = float(scaler.get_scale())
        if not math.isfinite(norm) and scaler is not None:
            # unscale_ found the overflow too: scaler.step will skip this step and halve the scale
            self.scaler_skipped_steps += 1
            self.epoch_scaler_skipped_steps += 1
        elif math.isfinite(norm) and self._is_clipped(trainer, optimizer, norm):
            self.clipped_steps += 1
        metrics[f"{self.prefix}clipped_fraction"] = self.clipped_steps / self.steps
        if scaler is not None:
            metrics[f"{self.prefix}scaler_skipped_steps"] = float(self.scaler_skipped_steps)
        if self.per_group:
            metrics.update({f"{self.prefix}norm/{name}": value for name, value in groups.items()})
        for key, value in metrics.items():
            pl_module.log(key, value, on_step=True, on_epoch=False)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epoch_steps = self.epoch_scaler_skipped_steps = 0

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.epoch_scaler_skipped_steps:
            scale = trainer.precision_plugin.scaler.get_scale()
            rank_zero_info(
                f"GradientMonitor: epoch {trainer.current_epoch}: the fp16 grad scaler skipped"
                f" {self.epoch_scaler_skipped_steps} of {self.epoch_steps} optimizer steps whose scaled"
                f" gradients overflowed ({self.scaler_skipped_steps} in total; loss scale now {scale:g})."
                " A few early on are how it finds its scale; many mean the model is not training: lower"
                " the learning rate, or use precision=bf16-mixed."
            )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "clipped_steps": self.clipped_steps,
            "scaler_skipped_steps": self.scaler_skipped_steps,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps = state_dict.get("steps", 0)
        self.clipped_steps = state_dict.get("clipped_steps", 0)
        self.scaler_skipped_steps = state_dict.get("scaler_skipped_steps", 0)


def _across_shards(local: Tensor, norm_type: float) -> Tensor:
    """The p-norms over every process of gradient shards whose local p-norms are ``local``."""
    reduced = local.clone() if math.isinf(norm_type) else local.pow(norm_type)
    dist.all_reduce(reduced, op=dist.ReduceOp.MAX if math.isinf(norm_type) else dist.ReduceOp.SUM)
    return reduced if math.isinf(norm_type) else reduced.pow(1.0 / norm_type)
