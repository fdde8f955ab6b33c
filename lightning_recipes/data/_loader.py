"""The one place the data modules build their DataLoaders."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset


def split_loader(
    dataset: Dataset | None, split: str, hint: str, batch_size: int, num_workers: int, **kwargs: Any
) -> DataLoader:
    """A DataLoader over one split; for a missing split, a ``ValueError`` saying how to provide it.

    Workers persist across epochs when there are any, and batches are pinned when CUDA is present.
    ``kwargs`` go to ``DataLoader`` (``shuffle``, ``sampler``, ``collate_fn``...).

    Example::

        >>> split_loader([1, 2, 3], "val", "", batch_size=2, num_workers=0).batch_size
        2
        >>> split_loader(None, "val", "add a val/ folder", batch_size=2, num_workers=0)
        Traceback (most recent call last):
        ...
        ValueError: No val data: add a val/ folder
    """
    if dataset is None:
        raise ValueError(f"No {split} data: {hint}")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
        **kwargs,
    )
