"""Mixup: mix each training batch's images (Mixup and/or CutMix) with timm's ``Mixup``, train on soft targets.

Why a callback: it is a training-time data technique, switched on and off without touching the model's
configuration, with any multi-class image classifier of the package (``ImageClassifier``, and a user's
subclass that keeps the loss contract). The mixing is timm's (``timm.data.Mixup``, its random draws and
its mixed, smoothed targets), applied in ``on_train_batch_start`` to the batch the module is about to
step on; the module's ``soft_target_loss`` trains on the mixed targets while its metrics are updated with
the real labels (:class:`~lightning_recipes.handshake.MixedTargets`). Validation, test and predict
batches are never mixed.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from typing_extensions import override

from lightning_recipes.handshake import CachedFeatures, MixedTargets

__all__ = ["Mixup"]

MixMode = Literal["batch", "pair", "elem"]


def _defined_by(module: Any, name: str) -> type | None:
    """The class in ``type(module)``'s MRO whose body defines ``name``."""
    return next((c for c in type(module).__mro__ if name in vars(c)), None)


class Mixup(Callback):
    """Mixup and CutMix of the training images, with timm's ``Mixup``, and soft-target training.

    Each training batch's images are mixed in pairs (each with the batch's reverse, timm's pairing) and
    its targets become the mixed class probabilities, smoothed by the model's ``label_smoothing`` (one
    setting of it: the model's, with or without this callback). The model's ``soft_target_loss``
    (cross-entropy against probabilities) is the logged ``train/loss``; ``train/acc`` and the other
    training metrics compare each mixed image's prediction with its own real label; validation, test
    and predict, their metrics, curves and predictions, see unmixed images and real labels. In an
    odd-sized batch the last image is left unmixed (timm mixes pairs).

    Refused before training, with the fix: a model that is not a multi-class classifier (multi-label,
    regression, a language model), a model whose inputs are not images (``input_spec().data_config``:
    text classifiers), a model that overrides ``loss`` but not ``soft_target_loss``, and
    ``FreezeUnfreeze``'s feature cache without ``cache_views`` or with CutMix. With ``cache_views``, the
    frozen epochs mix the cached pooled features of two examples (feature-space mixup; the same ``lam``
    and targets as image mixup) and the epochs after the unfreeze mix images.

    Args:
        mixup_alpha: Beta(alpha, alpha) of mixup's mixing weight; mixup is on when > 0.
        cutmix_alpha: Beta(alpha, alpha) of CutMix's area; CutMix is on when > 0.
        cutmix_minmax: CutMix box side as a ``[min, max]`` fraction of the image (on when given; then
            timm uses it instead of ``cutmix_alpha``).
        prob: probability of mixing a batch (or element, in ``elem``/``pair`` mode).
        switch_prob: with both on, probability of CutMix rather than mixup.
        mode: ``batch`` (one draw per batch), ``pair`` (per pair) or ``elem`` (per image).
        correct_lam: correct CutMix's weight for a box clipped by the image border.

    Example::

        >>> import lightning.pytorch as pl, torch
        >>> from lightning_recipes import ImageClassifier
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> model = ImageClassifier("test_resnet", num_classes=3, pretrained=False, label_smoothing=0.1)
        >>> images, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 3, (8,))
        >>> data = DataLoader(TensorDataset(images, labels), batch_size=4)
        >>> trainer = pl.Trainer(max_steps=2, callbacks=[Mixup(mixup_alpha=0.8, cutmix_alpha=1.0)],
        ...                      logger=False, enable_checkpointing=False, enable_progress_bar=False,
        ...                      enable_model_summary=False)
        >>> trainer.fit(model, data)
        >>> sorted(trainer.callback_metrics)
        ['train/acc', 'train/f1', 'train/loss', 'train/mcc', 'train/precision', 'train/recall']
    """

    def __init__(
        self,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        cutmix_minmax: list[float] | None = None,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        mode: MixMode = "batch",
        correct_lam: bool = True,
    ) -> None:
        for name, value in (("prob", prob), ("switch_prob", switch_prob)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"Mixup {name}={value} is not a probability: give a value in [0, 1]")
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError(
                f"Mixup mixup_alpha={mixup_alpha}, cutmix_alpha={cutmix_alpha}: alphas must be >= 0 (0: off)"
            )
        if cutmix_minmax is not None and (
            len(cutmix_minmax) != 2 or not 0.0 < cutmix_minmax[0] < cutmix_minmax[1] <= 1.0
        ):
            raise ValueError(
                f"Mixup cutmix_minmax={cutmix_minmax}: give [min, max] with 0 < min < max <= 1 "
                "(e.g. [0.2, 0.8])"
            )
        if mixup_alpha == 0 and cutmix_alpha == 0 and cutmix_minmax is None:
            raise ValueError(
                "Mixup with mixup_alpha=0, cutmix_alpha=0 and no cutmix_minmax mixes nothing: set "
                "mixup_alpha > 0 and/or cutmix_alpha > 0, or leave the callback out"
            )
        if mode not in ("batch", "pair", "elem"):
            raise ValueError(f"Mixup mode={mode!r} is not one of ('batch', 'pair', 'elem')")
        self.mixup_alpha, self.cutmix_alpha, self.cutmix_minmax = mixup_alpha, cutmix_alpha, cutmix_minmax
        self.prob, self.switch_prob, self.mode, self.correct_lam = prob, switch_prob, mode, correct_lam
        self.mixer: Any = None  # timm.data.Mixup, built for the model's classes in setup

    @property
    def cutmix(self) -> bool:
        """Whether CutMix is on (it needs images: boxes cut from one image into another)."""
        return self.cutmix_alpha > 0 or self.cutmix_minmax is not None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.check_model(pl_module)
        self.check_feature_cache(trainer)
        from timm.data import Mixup as TimmMixup

        self.mixer = TimmMixup(
            mixup_alpha=self.mixup_alpha,
            cutmix_alpha=self.cutmix_alpha,
            cutmix_minmax=self.cutmix_minmax,
            prob=self.prob,
            switch_prob=self.switch_prob,
            mode=self.mode,
            correct_lam=self.correct_lam,
            label_smoothing=float(getattr(pl_module, "label_smoothing", 0.0)),
            num_classes=int(pl_module.num_classes),
        )

    def check_model(self, pl_module: pl.LightningModule) -> None:
        """Refuse a model that cannot train on mixed images and soft targets (see the class docstring)."""
        name = type(pl_module).__name__
        if not callable(getattr(pl_module, "soft_target_loss", None)):
            raise ValueError(
                f"Mixup needs a classifier with soft_target_loss(logits, probabilities) (ImageClassifier); "
                f"{name} has none: leave the Mixup callback out for this model"
            )
        task = getattr(pl_module, "task", None)
        if task != "multiclass":
            raise ValueError(
                f"Mixup mixes one-class labels, but the model's task is {task!r}: mixup/CutMix of "
                "multi-label or regression targets is not supported; leave the Mixup callback out"
            )
        spec = pl_module.input_spec() if callable(getattr(pl_module, "input_spec", None)) else None
        if getattr(spec, "data_config", None) is None:
            raise ValueError(
                f"Mixup/CutMix mix images, and {name}'s inputs are not images (no data_config in its "
                "input_spec(): token ids of a text model cannot be mixed); leave the Mixup callback out "
                "(label_smoothing alone works for every classifier)"
            )
        loss_owner, soft_owner = _defined_by(pl_module, "loss"), _defined_by(pl_module, "soft_target_loss")
        if loss_owner and soft_owner and loss_owner is not soft_owner and issubclass(loss_owner, soft_owner):
            raise ValueError(
                f"{name} overrides loss() but not soft_target_loss(): under Mixup its training loss "
                "would be the base class's cross-entropy, not yours; override soft_target_loss(logits, "
                "probabilities) too, or leave the Mixup callback out"
            )

    def check_feature_cache(self, trainer: pl.Trainer) -> None:
        """Refuse FreezeUnfreeze's feature cache without augmented views (``cache_views``) or with CutMix."""
        for callback in trainer.callbacks:
            cache = getattr(callback, "feature_cache", None)
            if cache is None:
                continue
            if getattr(cache, "views", None) is None:
                raise ValueError(
                    f"Mixup with {type(callback).__name__}(cache_features=True) and no cache_views: the "
                    "frozen epochs would mix the cached features of one fixed view of each image, which is "
                    "not mixup of images; set cache_views: k (k augmented views, mixed as features) or "
                    "cache_features: false"
                )
            if self.cutmix:
                raise ValueError(
                    f"Mixup with CutMix and {type(callback).__name__}(cache_features=True): CutMix cuts "
                    "boxes out of images, and the frozen epochs' batches are pooled features; set "
                    "cutmix_alpha: 0 (and no cutmix_minmax) or cache_features: false"
                )

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if isinstance(batch, CachedFeatures):
            batch.features, batch.target = self.mix(batch.features, batch.target)
        elif isinstance(batch, list) and len(batch) >= 2 and isinstance(batch[0], Tensor):
            batch[0], batch[1] = self.mix(batch[0], batch[1])
        else:
            raise TypeError(
                f"Mixup mixes training batches that are a list [images, labels, ...] (as a DataLoader "
                f"collates (image, label) pairs) or cached features; got a {type(batch).__name__}"
            )

    def mix(self, inputs: Tensor, labels: Tensor) -> tuple[Tensor, MixedTargets]:
        """Mix a copy of ``inputs`` with timm's ``Mixup`` (the loader's tensors are left as they are) and
        return it with the :class:`~lightning_recipes.handshake.MixedTargets` of ``labels``."""
        from timm.data.mixup import mixup_target

        if self.mixer is None:
            raise RuntimeError("Mixup.mix before setup(): the callback builds timm's Mixup in setup('fit')")
        if isinstance(labels, MixedTargets) or labels.ndim != 1 or labels.is_floating_point():
            raise ValueError(
                "Mixup expects one class id per example (a [batch] integer tensor), got "
                f"{type(labels).__name__} {getattr(labels, 'shape', '')}: already mixed, or not class ids"
            )
        mixed, even = inputs.clone(), len(inputs) - len(inputs) % 2
        parts = []
        if even:
            parts.append(self.mixer(mixed[:even], labels[:even])[1])  # mixes mixed[:even] in place
        if even < len(inputs):
            smoothing, classes = self.mixer.label_smoothing, self.mixer.num_classes
            parts.append(mixup_target(labels[even:], classes, 1.0, smoothing))
        probabilities = torch.cat(parts).to(inputs.dtype if inputs.is_floating_point() else torch.float)
        return mixed, MixedTargets(labels, probabilities)
