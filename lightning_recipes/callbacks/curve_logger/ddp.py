"""Under DDP: drop the samples that ``DistributedSampler`` repeats to even out the ranks.

``DistributedSampler`` (``drop_last=False``) pads the last rank(s) with samples from the start of the
data set; counted, they would make the curves of several processes differ from those of one.
:func:`evaluation_dataloaders` finds the loaders of the running evaluation loop and
:func:`real_samples_on_rank` tells how many of a rank's samples are real.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from torch.utils.data import DistributedSampler

from lightning_recipes import _compat


def real_samples_on_rank(dataloader: Any) -> int | None:
    """How many samples of this rank's share of ``dataloader`` are real (not a DistributedSampler's padding).

    ``DistributedSampler`` (``drop_last=False``) repeats the first indices so that every rank gets
    ``ceil(N / world_size)``; the repeats are the last sample of the ranks ``>= N % world_size``.
    Returns ``None`` when the loader has no distributed sampler (nothing to drop).

    Example::

        >>> from torch.utils.data import DataLoader, DistributedSampler
        >>> data = list(range(7))
        >>> [real_samples_on_rank(DataLoader(data, sampler=DistributedSampler(data, 2, r, shuffle=False)))
        ...  for r in (0, 1)]
        [4, 3]
    """
    sampler = getattr(dataloader, "sampler", None)
    if not isinstance(sampler, DistributedSampler):
        sampler = getattr(getattr(dataloader, "batch_sampler", None), "sampler", None)
    if not isinstance(sampler, DistributedSampler):
        return None
    total = min(len(sampler.dataset), sampler.total_size)  # total_size < N when drop_last truncates
    return len(range(sampler.rank, total, sampler.num_replicas))


def evaluation_dataloaders(trainer: L.Trainer, stage: str) -> list[Any]:
    """The dataloaders of the evaluation loop running now, for :func:`real_samples_on_rank` to read."""
    running = _compat.evaluation_dataloaders(trainer)  # trainer.val_dataloaders prefers fit's loaders
    if running is not None:
        return running
    loaders = trainer.test_dataloaders if stage == "test" else trainer.val_dataloaders
    return list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]
