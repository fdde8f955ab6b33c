"""NaN/inf checks for :class:`~lightning_recipes.callbacks.NonFiniteGuard` (weights, losses, checkpoints)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    import lightning.pytorch as pl

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


def would_be_best(checkpoint: Any, value: Tensor) -> bool:
    """Whether ``ModelCheckpoint`` would make the non-finite ``value`` its best score (lightning 2.6.6:
    NaN is stored as the worst infinity and then wins only while no other score exists; an infinity
    in the good direction always wins). ``save_top_k=0`` never saves on a score.

    Example::

        >>> from lightning.pytorch.callbacks import ModelCheckpoint
        >>> mc = ModelCheckpoint(monitor="val/loss", mode="min")
        >>> would_be_best(mc, torch.tensor(float("nan"))), would_be_best(mc, torch.tensor(float("-inf")))
        (True, True)
        >>> mc.best_model_score = torch.tensor(0.5)
        >>> would_be_best(mc, torch.tensor(float("nan"))), would_be_best(mc, torch.tensor(float("inf")))
        (False, False)
    """
    if getattr(checkpoint, "save_top_k", 1) == 0:
        return False
    v = value.item()
    worst = math.isnan(v) or ((v > 0) == (getattr(checkpoint, "mode", "min") == "min"))
    best = getattr(checkpoint, "best_model_score", None)
    return not worst or best is None or not _finite(best)


def last_finite_checkpoint(trainer: pl.Trainer, last_files: bool = True) -> str | None:
    """The newest file a checkpoint callback of ``trainer`` saved while the values it monitors were finite.

    A ``ModelCheckpoint``'s top-k files with a finite score, and its ``last`` file (or, without a
    ``monitor``, the files it saved). ``last_files=False`` leaves out the ``last`` file of one with a
    ``monitor``: it may hold a non-finite value that was let through. ``None`` when there is none.
    """
    found: list[tuple[int, int, str]] = []
    for cb in trainer.checkpoint_callbacks:
        paths = []
        if getattr(cb, "monitor", None):
            paths += [(1, p) for p, s in getattr(cb, "best_k_models", {}).items() if _finite(s)]
            if last_files:
                paths.append((0, getattr(cb, "last_model_path", "")))
        else:
            paths += [(1, getattr(cb, "best_model_path", "")), (0, getattr(cb, "last_model_path", ""))]
        found += [(Path(p).stat().st_mtime_ns, rank, str(p)) for rank, p in paths if p and Path(p).is_file()]
    return max(found)[2] if found else None


def _finite(value: Any) -> bool:
    return bool(torch.isfinite(torch.as_tensor(value)).all())
