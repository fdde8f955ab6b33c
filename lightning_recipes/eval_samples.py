"""Under DDP: which evaluation samples of a rank are real, and which ``DistributedSampler`` repeated.

``DistributedSampler`` (``drop_last=False``), which Lightning gives every evaluation loader under DDP,
pads the last rank(s) with samples from the start of the data set so all ranks get the same number;
counted, they would make metrics and curves of several processes differ from those of one. The
module metrics (:class:`~lightning_recipes.modules._classification.ClassificationModule`),
:class:`~lightning_recipes.callbacks.CurveLogger` and the test table of the
:class:`~lightning_recipes.callbacks.PredictionWriter` drop them with :class:`RealSamples`; the writer
also reads which input each sample is (:func:`dataset_indices`), to write the rows in dataset order.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from torch.utils.data import BatchSampler, DistributedSampler, SequentialSampler

from lightning_recipes import _compat


class RealSamples:
    """Counts one rank's samples per evaluation loader and says how many of each batch are real.

    Call :meth:`start` when an evaluation epoch starts, then :meth:`keep` with each batch's size: the
    first ``keep`` samples of the batch are real, the rest are padding (always at the end of a rank's
    share).

    Example::

        >>> from torch.utils.data import DataLoader, DistributedSampler
        >>> data = list(range(7))
        >>> loader = DataLoader(data, batch_size=2, sampler=DistributedSampler(data, 2, 1, shuffle=False))
        >>> real = RealSamples().start_with([loader])
        >>> [real.keep(len(batch)) for batch in loader]  # rank 1 holds 1, 3, 5 and a repeat of 0
        [2, 1]
    """

    def __init__(self) -> None:
        self.real: dict[int, int | None] = {}
        self.seen: dict[int, int] = {}

    def start(self, trainer: L.Trainer, stage: str) -> RealSamples:
        """Read the running evaluation loaders' samplers (``stage``: ``validate`` or ``test``)."""
        return self.start_with(evaluation_dataloaders(trainer, stage))

    def start_with(self, loaders: list[Any]) -> RealSamples:
        self.real = {i: real_samples_on_rank(loader) for i, loader in enumerate(loaders)}
        self.seen = dict.fromkeys(self.real, 0)
        return self

    def keep(self, batch_size: int, dataloader_idx: int = 0) -> int:
        """How many of the next ``batch_size`` samples of loader ``dataloader_idx`` are real."""
        real = self.real.get(dataloader_idx)
        seen = self.seen.get(dataloader_idx, 0)
        self.seen[dataloader_idx] = seen + batch_size
        return batch_size if real is None else max(0, min(batch_size, real - seen))


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


def dataset_indices(dataloader: Any) -> list[int] | None:
    """The dataset indices of this rank's share of an evaluation ``dataloader``, in the order its batches
    bring them (a ``DistributedSampler``'s padding at the end), or ``None`` where that order is not fixed.

    The sampler is drawn once more, so only samplers whose order is the same every time are read: a
    ``SequentialSampler``, a list (or range) of indices (``TextDataModule``'s length order), a
    ``DistributedSampler`` (its shuffle is seeded) and Lightning's ``DistributedSamplerWrapper`` of one
    of these, batched by a plain ``BatchSampler``; a random sampler would draw another order (and move
    the global random state), and a custom batch sampler may group the indices its own way.

    Example::

        >>> from torch.utils.data import DataLoader, DistributedSampler
        >>> data = list(range(7))
        >>> rank_1 = DistributedSampler(data, num_replicas=2, rank=1, shuffle=False)
        >>> dataset_indices(DataLoader(data, batch_size=2, sampler=rank_1))  # 0 again: the padding
        [1, 3, 5, 0]
        >>> dataset_indices(DataLoader(data, sampler=[6, 0, 3]))  # an order of its own: TextDataModule's
        [6, 0, 3]
        >>> dataset_indices(DataLoader(data, shuffle=True)) is None  # drawn at random
        True
    """
    batch_sampler = getattr(dataloader, "batch_sampler", None)
    sampler = getattr(dataloader, "sampler", None)
    if batch_sampler is not None and type(batch_sampler) is not BatchSampler:
        return None
    if batch_sampler is not None and batch_sampler.sampler is not sampler:
        return None
    if not _fixed_order(sampler):
        return None
    return [int(index) for index in sampler]


def _fixed_order(sampler: Any) -> bool:
    if isinstance(sampler, DistributedSampler):
        wrapped = _compat.sharded_sampler(sampler)
        return wrapped is None or _fixed_order(wrapped)
    return isinstance(sampler, (SequentialSampler, list, tuple, range))


def evaluation_dataloaders(trainer: L.Trainer, stage: str) -> list[Any]:
    """The dataloaders of the evaluation loop running now, for :func:`real_samples_on_rank` to read."""
    running = _compat.evaluation_dataloaders(trainer)  # trainer.val_dataloaders prefers fit's loaders
    if running is not None:
        return running
    loaders = trainer.test_dataloaders if stage == "test" else trainer.val_dataloaders
    return list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]
