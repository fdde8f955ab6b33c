"""WarmupDecay: warm-up then linear or cosine decay (BERT/GPT fine-tuning), sized by the Trainer."""

from __future__ import annotations

import math
from typing import Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from lightning_recipes import _compat


class WarmupDecay(LambdaLR):
    """Linear warm-up over ``warmup_ratio`` of training, then linear or cosine decay to 0 at its end.

    The same factors as transformers' ``get_linear_schedule_with_warmup`` /
    ``get_cosine_schedule_with_warmup``, but the length need not be written in the recipe: with
    ``total_steps=None`` a ``TransferModule`` sets it to ``trainer.estimated_stepping_batches`` when it
    builds the optimizer, so the schedule still ends at 0 with ``--trainer.devices=4``, another
    ``max_epochs`` or gradient accumulation. Use it with ``scheduler_interval: step``.

    Args:
        optimizer: the optimizer (given by the module).
        warmup_ratio: fraction of the optimizer steps spent warming up from 0 (e.g. ``0.06``).
        decay: ``linear`` or ``cosine`` decay after the warm-up, or ``constant``.
        total_steps: optimizer steps of the whole training; ``None``: set by the module.

    Example::

        >>> import torch
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        >>> schedule = WarmupDecay(opt, warmup_ratio=0.2, total_steps=10)
        >>> lrs = []
        >>> for _ in range(10):
        ...     lrs.append(round(opt.param_groups[0]["lr"], 3))
        ...     opt.step()
        ...     schedule.step()
        >>> lrs
        [0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125]
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_ratio: float = 0.0,
        decay: Literal["linear", "cosine", "constant"] = "linear",
        total_steps: int | None = None,
        last_epoch: int = -1,
    ) -> None:
        if not 0.0 <= warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
        if decay not in ("linear", "cosine", "constant"):
            raise ValueError(f"decay must be 'linear', 'cosine' or 'constant', got {decay!r}")
        if total_steps is not None and total_steps < 1:
            raise ValueError(f"total_steps must be >= 1 or None, got {total_steps}")
        self.warmup_ratio = warmup_ratio
        self.decay = decay
        self.total_steps = total_steps
        super().__init__(optimizer, self.factor, last_epoch)

    def factor(self, step: int) -> float:
        """The LR multiplier at optimizer step ``step``."""
        total = self.total_steps or 1
        warmup = int(self.warmup_ratio * total)
        if step < warmup:
            return step / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if self.decay == "linear":
            return 1.0 - progress
        if self.decay == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    def set_total_steps(self, total_steps: float) -> None:
        """Size the schedule (``trainer.estimated_stepping_batches``) and re-apply the current factor."""
        if not math.isfinite(total_steps) or total_steps < 1:
            raise ValueError(
                f"WarmupDecay needs a finite training length, got {total_steps} steps: set "
                "trainer.max_epochs or trainer.max_steps, or give total_steps"
            )
        self.total_steps = int(total_steps)
        lrs = [base * self.factor(self.last_epoch) for base in self.base_lrs]
        _compat.set_last_lr(self, lrs)
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
