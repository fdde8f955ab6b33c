"""Keys and storage of the frozen-backbone feature cache (the machinery is in ``_feature_cache.py``).

A split's cache is two arrays: ``features`` ``[views, N, D]`` (float32) and ``targets`` ``[N, ...]``,
indexed by the example's position in the DataLoader's dataset. They live in memory, or, above the
memory budget, in ``.npy`` files under ``<cache dir>/<key>/`` that are memory-mapped and that a later
run with the same key (backbone weights, feature settings, data, transform, precision) opens instead
of computing them again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from lightning_recipes import _compat
from lightning_recipes.handshake import CachedFeatures

_FILES = ("features.npy", "targets.npy")
_META = "meta.json"  # written last: its presence marks a complete cache


def tensor_fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of named tensors (names, shapes, dtypes and bytes).

    Example::

        >>> a = tensor_fingerprint({"w": torch.ones(2)})
        >>> a == tensor_fingerprint({"w": torch.ones(2)}), a == tensor_fingerprint({"w": torch.zeros(2)})
        (True, False)
    """
    h = hashlib.sha256()
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def weights_fingerprint(module: nn.Module) -> str:
    """Fingerprint of a module's state dict (weights and buffers such as BatchNorm running statistics)."""
    return tensor_fingerprint(module.state_dict())


def data_fingerprint(dataset: Dataset) -> str | None:
    """What identifies a dataset's examples and their transform, or ``None`` when it cannot be told.

    A dataset with a ``fingerprint()`` method (``ImageDataset``: files, sizes, mtimes, targets and
    transform) gives its own; a ``datasets.Dataset`` its ``datasets`` fingerprint (which covers the
    tokenisation); a ``TensorDataset`` the hash of its tensors.

    Example::

        >>> a, b = TensorDataset(torch.ones(2, 3)), TensorDataset(torch.ones(2, 3))
        >>> data_fingerprint(a) == data_fingerprint(b)
        True
        >>> data_fingerprint([1, 2]) is None
        True
    """
    if callable(getattr(dataset, "fingerprint", None)):
        return str(dataset.fingerprint())
    if type(dataset).__module__.startswith("datasets."):
        return _compat.dataset_fingerprint(dataset)
    if isinstance(dataset, TensorDataset):
        return tensor_fingerprint({str(i): t for i, t in enumerate(dataset.tensors)})
    return None


def cache_key(parts: dict[str, Any]) -> str:
    """A folder name for the cache of ``parts`` (JSON-serialisable settings).

    Example::

        >>> cache_key({"a": 1}) == cache_key({"a": 1}) != cache_key({"a": 2})
        True
    """
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


class FeatureStore:
    """The cached features ``[views, N, D]`` and targets ``[N, ...]`` of one split.

    Args:
        features: float32 array ``[views, N, D]`` (in memory or a read-only memory map).
        targets: array ``[N, ...]`` of the targets.
        path: the folder of its files, or ``None`` when it is held in memory only.
    """

    def __init__(self, features: np.ndarray, targets: np.ndarray, path: Path | None = None) -> None:
        self.features, self.targets, self.path = features, targets, path

    @property
    def views(self) -> int:
        return self.features.shape[0]

    def __len__(self) -> int:
        return self.features.shape[1]

    @property
    def memory_mapped(self) -> bool:
        return isinstance(self.features, np.memmap)

    @classmethod
    def load(cls, folder: Path, in_memory: bool) -> FeatureStore:
        """Open the files of a complete cache; read them into memory or memory-map them."""
        mode = None if in_memory else "r"
        features, targets = (np.load(folder / name, mmap_mode=mode) for name in _FILES)
        return cls(features, targets, folder)

    def save(self, folder: Path, meta: dict[str, Any]) -> FeatureStore:
        """Write the arrays to ``folder`` (atomically: a temporary folder renamed) and memory-map them."""
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.parent / f".{folder.name}.{uuid.uuid4().hex}"
        tmp.mkdir()
        for name, array in zip(_FILES, (self.features, self.targets), strict=True):
            np.save(tmp / name, array)
        (tmp / _META).write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
        try:
            os.replace(tmp, folder)
        except OSError:  # another process stored the same key first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
        return FeatureStore.load(folder, in_memory=False)

    @staticmethod
    def stored(folder: Path) -> bool:
        """Whether ``folder`` holds a complete cache."""
        return (folder / _META).is_file()


class CachedSplit(Dataset):
    """Map-style dataset over a :class:`FeatureStore`: ``__getitems__(indices)`` gives one
    :class:`~lightning_recipes.handshake.CachedFeatures` batch.

    With several views, :meth:`set_epoch` draws (seeded by ``seed`` and the epoch) which view each
    example shows in that epoch, the same on every rank.

    Example::

        >>> store = FeatureStore(np.arange(12, dtype=np.float32).reshape(2, 3, 2), np.array([0, 1, 0]))
        >>> split = CachedSplit(store, seed=0)
        >>> split.set_epoch(0)
        >>> batch = split.__getitems__([2, 0])
        >>> batch.features.shape, batch.target.tolist()
        (torch.Size([2, 2]), [0, 0])
    """

    def __init__(self, store: FeatureStore, seed: int) -> None:
        self.store, self.seed = store, seed
        self._view = np.zeros(len(store), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.store)

    def set_epoch(self, epoch: int) -> None:
        if self.store.views > 1:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._view = torch.randint(self.store.views, (len(self.store),), generator=g).numpy()

    def __getitems__(self, indices: list[int]) -> CachedFeatures:
        idx = np.asarray(indices, dtype=np.int64)
        features = np.ascontiguousarray(self.store.features[self._view[idx], idx])
        targets = np.ascontiguousarray(self.store.targets[idx])
        return CachedFeatures(torch.from_numpy(features), torch.from_numpy(targets))

    def __getitem__(self, index: int) -> CachedFeatures:
        return self.__getitems__([index])


def as_is(batch: Any) -> Any:
    """Collate function of cached loaders: :meth:`CachedSplit.__getitems__` already made the batch."""
    return batch
