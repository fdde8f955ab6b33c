"""The frozen-backbone feature cache of :class:`~lightning_recipes.callbacks.FreezeUnfreeze`.

While the backbone is frozen and its inputs are deterministic, its output for an example is the same
every epoch. With ``cache_features=True`` the callback computes it once per example (one pass over
the training and validation data at the start of the first frozen epoch) and then swaps the loaders
that ``fit`` iterates for loaders of :class:`~lightning_recipes.handshake.CachedFeatures` batches:
same batch sampler (so the same batches in the same order, the same DDP shards and epochs), no image
decoding, no tokenised batches, no backbone. The module trains its head on them. The first epoch in
which any backbone parameter is trainable gets the original loaders back and the cache is dropped.

DDP: each rank computes the features of every ``world_size``-th example and the shares are
all-gathered, so every rank holds the same cache, bitwise, whatever its sampler draws in later epochs.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_recipes import _compat
from lightning_recipes.cache import default_cache_dir
from lightning_recipes.callbacks._feature_store import (
    CachedSplit,
    FeatureStore,
    as_is,
    cache_key,
    data_fingerprint,
    weights_fingerprint,
)

_OFF = "set cache_features: false to train without the cache"


def active_dropout(backbone: nn.Module) -> list[str]:
    """Names of the dropout / drop-path modules of ``backbone`` that are active (training, rate > 0).

    Example::

        >>> active_dropout(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1), nn.Dropout(0.0)))
        ['1']
    """
    found = []
    for name, m in backbone.named_modules():
        rate = m.p if isinstance(m, nn.modules.dropout._DropoutNd) else getattr(m, "drop_prob", 0.0)
        if m.training and isinstance(rate, float) and rate > 0:
            found.append(name)
    return found


def _same(a: Any, b: Any) -> bool:
    """Equality of nested items (tensors, arrays, dicts, sequences)."""
    if isinstance(a, (torch.Tensor, np.ndarray)) or isinstance(b, (torch.Tensor, np.ndarray)):
        return torch.equal(torch.as_tensor(np.asarray(a)), torch.as_tensor(np.asarray(b)))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


@contextmanager
def _rng_kept() -> Iterator[None]:
    """Leave the torch, Python and NumPy random states as they were: the cache must not shift the run."""
    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


@contextmanager
def _modes(module: nn.Module, training: bool) -> Iterator[None]:
    """Train modes as they are (``training``) or all eval; restored per submodule afterwards."""
    saved = [(m, m.training) for m in module.modules()]
    if not training:
        module.eval()
    try:
        yield
    finally:
        for m, mode in saved:
            m.training = mode


def loads_randomly(dataset: Dataset) -> bool:
    """Whether loading example 0 under different seeds gives different items (augmentation); the random
    states are left as they were. Also what ``Distillation(cache_logits=True)`` asks of the training data.

    Example::

        >>> loads_randomly([torch.ones(2)]), loads_randomly(torch.utils.data.TensorDataset(torch.ones(1, 2)))
        (False, False)
    """
    with _rng_kept():
        items = []
        for seed in (1, 2, 3):
            _seed_all(seed)
            items.append(dataset[0])
    return not all(_same(items[0], item) for item in items[1:])


class _Seeded(Dataset):
    """``dataset[i]`` with every random generator seeded by ``(seed, view, i)``: augmented view ``view``
    of example ``i`` is the same whatever the batch, worker or rank that loads it."""

    def __init__(self, dataset: Dataset, seed: int, view: int) -> None:
        self.dataset, self.seed, self.view = dataset, seed, view

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        _seed_all((self.seed * 1_000_003 + self.view) * 1_000_003 + index)
        return self.dataset[index]


class FeatureCache:
    """Cache a frozen backbone's outputs and serve them to the head (used by ``FreezeUnfreeze``).

    Args:
        views: with random training transforms (augmentation), cache this many augmented views per
            example (drawn once, seeded); each epoch shows each example one of them, drawn by ``seed``.
            ``None`` refuses augmented data with an error.
        memory_mb: keep a split's cache in memory up to this size; above it, write ``.npy`` files under
            ``cache_dir`` and memory-map them. Files are keyed, so a later run over the same data with
            the same backbone weights reuses them (``0``: always files).
        cache_dir: folder of the files; default ``$LIGHTNING_RECIPES_CACHE/features``.
        seed: seed of the augmented views and of each epoch's choice of view.

    Example::

        >>> FeatureCache(views=2, memory_mb=0).root.name
        'features'
    """

    def __init__(
        self, views: int | None = None, memory_mb: float = 1024.0, cache_dir: str | None = None, seed: int = 0
    ) -> None:
        if views is not None and views < 1:
            raise ValueError(f"cache_views must be >= 1 (or None to refuse augmented data), got {views}")
        if memory_mb < 0:
            raise ValueError(f"cache_memory_mb must be >= 0, got {memory_mb}")
        self.views, self.memory_mb, self.seed = views, memory_mb, seed
        self.root = Path(cache_dir) if cache_dir else default_cache_dir() / "features"
        self.active = False
        self.stores: dict[str, FeatureStore] = {}  # by key
        self.built: list[str] = []  # keys computed (not reused from files) in this run
        self._originals: dict[int, tuple[Any, list[Any]]] = {}  # id(CombinedLoader) -> (it, its loaders)

    # -- checks ----------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Refuse a strategy or module the cache cannot serve; called after the backbone is frozen."""
        if not isinstance(trainer.strategy, (SingleDeviceStrategy, DDPStrategy)):
            raise ValueError(
                f"cache_features=True supports single-device and DDP strategies, not "
                f"{type(trainer.strategy).__name__} (which shards or offloads the backbone); {_OFF}"
            )
        missing = [a for a in ("backbone", "head") if not isinstance(getattr(pl_module, a, None), nn.Module)]
        if missing or not callable(getattr(pl_module, "features_and_target", None)):
            raise ValueError(
                f"cache_features=True needs a module with nn.Module `backbone` and `head` and a "
                f"features_and_target(batch) method (ImageClassifier, TextClassifier with head='new'); "
                f"{type(pl_module).__name__} lacks {missing or ['features_and_target']}; {_OFF}"
            )
        if getattr(pl_module, "tta", None) is not None:
            raise ValueError(
                f"cache_features=True with the model's tta={pl_module.tta!r}: the frozen epochs validate on "
                "cached features of the plain images, not on test-time augmented views; set model tta: "
                f"null for the fit (and give it for test/predict), or {_OFF}"
            )
        dropout = active_dropout(pl_module.backbone)
        if dropout:
            raise ValueError(self._dropout_message(dropout))
        trainable = [n for n, p in pl_module.backbone.named_parameters() if p.requires_grad]
        if trainable:
            raise ValueError(
                f"cache_features=True needs a frozen backbone, but {len(trainable)} of its parameters stay "
                f"trainable in the frozen phase (e.g. {trainable[0]!r}; train_bn=True keeps BatchNorm "
                f"layers training): set train_bn: false, or {_OFF}"
            )
        self.active = True

    @staticmethod
    def _dropout_message(names: list[str]) -> str:
        return (
            "cache_features=True: the frozen backbone's output changes from one pass to the next in "
            f"training (dropout or drop-path active: {names[:3]}), so it cannot be computed once. Turn "
            "the backbone's dropout off (TextClassifier: config with hidden_dropout_prob: 0.0 and "
            "attention_probs_dropout_prob: 0.0; ImageClassifier: drop_path_rate: null and a backbone "
            f"without drop_rate), or {_OFF}"
        )

    # -- per epoch -------------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Serve cached features while the backbone is frozen; drop the cache once it trains."""
        if not self.active:
            return
        if any(p.requires_grad for p in pl_module.backbone.parameters()):
            self.release()
            self.active = False
            rank_zero_info(
                f"FreezeUnfreeze: feature cache off from epoch {trainer.current_epoch}: the backbone trains"
            )
            return
        for combined, training in zip(_compat.fit_combined_loaders(trainer), (True, False), strict=True):
            if combined is not None:
                self._serve(trainer, pl_module, combined, training)

    def release(self) -> None:
        """Give the loops their original loaders back and drop the cached features."""
        for combined, loaders in self._originals.values():
            combined.flattened = loaders
        self._originals.clear()
        self.stores.clear()

    def _serve(self, trainer: pl.Trainer, pl_module: Any, combined: Any, training: bool) -> None:
        loaders = list(combined.flattened)
        served = []
        for dl in loaders:
            if isinstance(getattr(dl, "dataset", None), CachedSplit):
                dl.dataset.set_epoch(trainer.current_epoch)
                served.append(dl)
                continue
            map_style = isinstance(dl, DataLoader) and hasattr(dl.dataset, "__len__")
            if not map_style or dl.batch_sampler is None:
                raise ValueError(
                    f"cache_features=True needs map-style DataLoaders that batch with a sampler; got "
                    f"{type(dl).__name__} over {type(getattr(dl, 'dataset', None)).__name__}; {_OFF}"
                )
            store = self._store(trainer, pl_module, dl, training)
            split = CachedSplit(store, self.seed)
            split.set_epoch(trainer.current_epoch)
            where = f"memory-mapped from {store.path}" if store.memory_mapped else "in memory"
            rank_zero_info(
                f"FreezeUnfreeze: the frozen epochs' {'training' if training else 'validation'} batches are "
                f"cached backbone features ({len(store)} examples, {where}) while the backbone is frozen"
            )
            served.append(DataLoader(split, batch_sampler=dl.batch_sampler, collate_fn=as_is))
        self._originals.setdefault(id(combined), (combined, loaders))
        combined.flattened = served

    # -- building --------------------------------------------------------------------------------
    def _store(self, trainer: pl.Trainer, pl_module: Any, dl: DataLoader, training: bool) -> FeatureStore:
        dataset = dl.dataset
        views = 1
        if training and loads_randomly(dataset):
            if self.views is None:
                raise ValueError(
                    "cache_features=True: the training data is augmented (the same example loads "
                    "differently each time), and caching one view would silently train without "
                    "augmentation. Set cache_views: k to cache k augmented views per example, turn "
                    f"augmentation off (ImageDataModule augment: false), or {_OFF}"
                )
            views = self.views
        fingerprint = data_fingerprint(dataset)
        parts = {
            "backbone": type(pl_module.backbone).__qualname__,
            "weights": weights_fingerprint(pl_module.backbone),
            "settings": pl_module.feature_settings() if hasattr(pl_module, "feature_settings") else {},
            "data": fingerprint,
            "collate": getattr(dl.collate_fn, "__qualname__", repr(dl.collate_fn)),
            "training": training,
            "views": views,
            "seed": self.seed if views > 1 else None,
            "precision": str(trainer.precision),
            "examples": len(dataset),
        }
        key = cache_key(parts)
        if key in self.stores:
            return self.stores[key]
        folder = self.root / key if fingerprint is not None else None
        budget = self.memory_mb * 2**20
        found = bool(trainer.strategy.broadcast(folder is not None and FeatureStore.stored(folder)))
        if found:
            store = FeatureStore.load(folder, (folder / "features.npy").stat().st_size <= budget)
            rank_zero_info(f"FreezeUnfreeze: reusing cached features in {folder}")
        else:
            what = f"{len(dataset)} {'training' if training else 'validation'} examples" + (
                f" x {views} augmented views" if views > 1 else ""
            )
            rank_zero_info(f"FreezeUnfreeze: computing the frozen backbone's features of {what}, once")
            start = time.monotonic()
            features, targets = self._compute(trainer, pl_module, dl, training, views)
            store = FeatureStore(features, targets)
            rank_zero_info(
                f"FreezeUnfreeze: features of {what} computed in {time.monotonic() - start:.1f} s "
                f"({features.nbytes / 2**20:.1f} MB)"
            )
            self.built.append(key)
            if features.nbytes > budget and folder is None:
                rank_zero_warn(
                    f"FreezeUnfreeze: cached features ({features.nbytes / 2**20:.0f} MB) kept in memory "
                    f"over cache_memory_mb: {type(dataset).__name__} has no fingerprint() to key files by"
                )
            elif features.nbytes > budget:
                if trainer.is_global_zero:
                    store.save(folder, parts)
                trainer.strategy.barrier("feature_cache_saved")
                store = FeatureStore.load(folder, in_memory=False)
        self.stores[key] = store
        return store

    def _compute(
        self, trainer: pl.Trainer, pl_module: Any, dl: DataLoader, training: bool, views: int
    ) -> tuple[np.ndarray, np.ndarray]:
        n, world, rank = len(dl.dataset), trainer.world_size, trainer.global_rank
        shard = list(range(rank, n, world))
        per_view, targets = [], []
        forward = trainer.precision_plugin.forward_context()
        with _rng_kept(), torch.no_grad(), _modes(pl_module, training), forward:
            for view in range(views):
                source = _Seeded(dl.dataset, self.seed, view) if views > 1 else dl.dataset
                loader = DataLoader(
                    source,
                    batch_size=dl.batch_size or 32,
                    sampler=shard,
                    collate_fn=dl.collate_fn,
                    num_workers=dl.num_workers,
                )
                feats, targets = [], []
                for i, batch in enumerate(loader):
                    batch = trainer.strategy.batch_to_device(batch)
                    features, target = pl_module.features_and_target(batch)
                    if training and view == 0 and i == 0:
                        _seed_all(self.seed + 1)  # a stochastic backbone would now give another output
                        again = pl_module.features_and_target(batch)[0]
                        if not torch.allclose(features, again, rtol=1e-4, atol=1e-5):
                            raise ValueError(self._dropout_message(["the first batch gave two outputs"]))
                    feats.append(features.float().cpu())
                    targets.append(target.cpu())
                per_view.append(torch.cat(feats))
        features, target = torch.stack(per_view), torch.cat(targets)
        if world > 1:
            features, target = self._gather(trainer, features, target, n)
        return features.numpy(), target.numpy()

    @staticmethod
    def _gather(trainer: pl.Trainer, features: torch.Tensor, target: torch.Tensor, n: int) -> tuple:
        """All ranks' shares (rank ``r`` holds examples ``r, r + world, ...``) in example order."""
        world = trainer.world_size
        rows = -(-n // world)
        pad = rows - features.shape[1]
        features = torch.cat([features, features[:, :1].expand(-1, pad, -1)], 1) if pad else features
        target = torch.cat([target, target[:1].expand(pad, *target.shape[1:])]) if pad else target
        device = trainer.strategy.root_device
        all_features = trainer.strategy.all_gather(features.to(device)).cpu()  # [world, views, rows, D]
        all_target = trainer.strategy.all_gather(target.to(device)).cpu()  # [world, rows, ...]
        out_f = torch.empty(features.shape[0], n, *features.shape[2:], dtype=features.dtype)
        out_t = torch.empty(n, *target.shape[1:], dtype=target.dtype)
        for r in range(world):
            count = len(range(r, n, world))
            out_f[:, r::world] = all_features[r, :, :count]
            out_t[r::world] = all_target[r, :count]
        return out_f, out_t
