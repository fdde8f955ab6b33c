"""Test-time augmentation of an image batch: the views (flips, crops) and their averaged probabilities.

``ImageClassifier(tta=...)`` scores each view and averages the probabilities; :func:`averaged_logits`
returns logits whose probabilities are that average, so the loss, metrics, curves and predictions that
follow need no change. The views are torchvision's (``horizontal_flip``, ``five_crop``, ``ten_crop``) on
the batch tensor the data module made.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

__all__ = ["TTA_KINDS", "TTAKind", "averaged_logits", "check_tta", "tta_views"]

TTAKind = Literal["flip", "five_crop", "ten_crop"]
TTA_KINDS = ("flip", "five_crop", "ten_crop")


def check_tta(tta: str | None, crop_fraction: float) -> None:
    """Refuse an unknown ``tta`` or a crop fraction outside (0, 1].

    Example::

        >>> check_tta("flip", 0.875)
        >>> check_tta("flips", 0.875)
        Traceback (most recent call last):
        ...
        ValueError: tta='flips' is not one of ('flip', 'five_crop', 'ten_crop') (or null: none)
    """
    if tta is not None and tta not in TTA_KINDS:
        raise ValueError(f"tta={tta!r} is not one of {TTA_KINDS} (or null: none)")
    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"tta_crop_fraction must be in (0, 1], got {crop_fraction}: the side of each crop")


def tta_views(images: Tensor, tta: TTAKind, crop_fraction: float = 0.875) -> list[Tensor]:
    """The views of a ``[batch, C, H, W]`` batch that ``tta`` scores, each of the batch's size.

    ``flip``: the images and their mirror images. ``five_crop``: the four corners and the centre, each
    ``crop_fraction`` of the side, resized back to ``H x W``. ``ten_crop``: those five and the same crops
    of the mirror images.

    Example::

        >>> images = torch.arange(16.0).reshape(1, 1, 4, 4)
        >>> [v[0, 0, 0].tolist() for v in tta_views(images, "flip")]
        [[0.0, 1.0, 2.0, 3.0], [3.0, 2.0, 1.0, 0.0]]
        >>> crops = tta_views(images, "ten_crop", 0.5)
        >>> centre = crops[4][0, 0]  # pixels 5, 6, 9, 10, resized (bilinear) to 4 x 4
        >>> len(crops), tuple(centre.shape), centre[0, 0].item(), centre[-1, -1].item()
        (10, (4, 4), 5.0, 10.0)
    """
    from torchvision.transforms.v2 import functional as TF

    if tta == "flip":
        return [images, TF.horizontal_flip(images)]
    height, width = images.shape[-2:]
    size = [max(1, round(height * crop_fraction)), max(1, round(width * crop_fraction))]
    crops = TF.five_crop(images, size) if tta == "five_crop" else TF.ten_crop(images, size)
    return [TF.resize(crop, [height, width], antialias=True) for crop in crops]


def averaged_logits(outputs: list[Tensor], task: str) -> Tensor:
    """Logits whose probabilities are the mean of those of ``outputs`` (one per view).

    ``multiclass``: the log of the mean softmax (its softmax is that mean); ``multilabel``: the logit of
    the mean sigmoid; ``regression``: the mean output.

    Example::

        >>> a, b = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]])
        >>> averaged_logits([a, b], "multiclass").softmax(-1)
        tensor([[0.5000, 0.5000]])
    """
    stacked = torch.stack([o.float() for o in outputs])
    if task == "multiclass":
        return torch.logsumexp(stacked.log_softmax(-1), 0) - math.log(len(outputs))
    if task == "multilabel":
        return torch.logit(stacked.sigmoid().mean(0), eps=1e-7)
    return stacked.mean(0)
