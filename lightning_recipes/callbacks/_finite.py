"""Finite checks of weights and logged keys for :class:`~lightning_recipes.callbacks.NonFiniteGuard`."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import torch
from torch import Tensor, nn

# torch >= 2.6: the foreach inf-norm (one kernel per device and dtype); torch 2.5: one norm per tensor.
_get_total_norm = getattr(torch.nn.utils, "get_total_norm", None)

_DATALOADER_SUFFIX = re.compile(r"(/dataloader_idx_\d+)+$")


def is_loss_key(key: str) -> bool:
    """Whether a logged key names a loss: its last ``/`` component contains ``loss`` (any case), after
    Lightning's ``/dataloader_idx_<i>`` suffix.

    Example::

        >>> [is_loss_key(k) for k in ("val/loss", "train/loss_epoch", "test/loss/dataloader_idx_1", "loss")]
        [True, True, True, True]
        >>> [is_loss_key(k) for k in ("val/acc", "loss/val_acc", "grad/scale")]
        [False, False, False]
    """
    return "loss" in _DATALOADER_SUFFIX.sub("", key).rsplit("/", 1)[-1].lower()


def all_finite(tensors: Iterable[Tensor]) -> bool:
    """Whether every element of ``tensors`` is finite, with one device sync (per kind of device).

    Extremes, which cannot overflow (a sum or a 2-norm of large finite values can) and in which NaN
    propagates: on accelerators the largest absolute value of all of them (:func:`largest_abs`, one
    foreach kernel per device and dtype); on CPU each tensor's minimum and maximum (``torch.aminmax``:
    one pass, half the time of torch's inf-norm there, which takes ``abs`` first).
    """
    tensors = [t.detach() for t in tensors if t.numel()]
    on_cpu = [t for t in tensors if t.device.type == "cpu"]
    elsewhere = [t for t in tensors if t.device.type != "cpu"]
    extremes = [torch.stack([m.float() for t in on_cpu for m in torch.aminmax(t)])] if on_cpu else []
    extremes += [largest_abs(elsewhere)] if elsewhere else []
    return all(bool(torch.isfinite(e).all()) for e in extremes)


def largest_abs(tensors: list[Tensor]) -> Tensor:
    """The largest absolute value of all ``tensors`` (their inf-norm; NaN if any holds NaN), as a 0-d tensor
    on the first one's device: torch's foreach norm (``torch.nn.utils.get_total_norm``, torch >= 2.6), or
    one norm per tensor (torch 2.5)."""
    if _get_total_norm is not None:
        return _get_total_norm(tensors, math.inf)
    device = tensors[0].device
    return torch.stack([torch.linalg.vector_norm(t, math.inf).float().to(device) for t in tensors]).max()


def constant_buffers(module: nn.Module) -> set[str]:
    """Names of ``module``'s floating-point buffers that hold ±inf and no NaN: constants (attention masks,
    observers' initial minima), not state that went wrong. One check per buffer."""
    return {
        n
        for n, b in module.named_buffers()
        if b.is_floating_point() and not bool(torch.isfinite(b).all()) and not bool(torch.isnan(b).any())
    }


def non_finite_weights(module: nn.Module, skip: Iterable[str] = ()) -> list[str]:
    """Names of ``module``'s parameters and floating-point buffers (less ``skip``) that hold a NaN/inf.

    One check per tensor: for messages; :func:`all_finite` is the cheap test.
    """
    skip = set(skip)
    tensors = [
        *module.named_parameters(),
        *((n, b) for n, b in module.named_buffers() if b.is_floating_point()),
    ]
    return [n for n, t in tensors if n not in skip and t.numel() and not bool(torch.isfinite(t).all())]
