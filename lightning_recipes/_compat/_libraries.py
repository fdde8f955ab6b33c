"""torch, timm, datasets and huggingface_hub private API, as ``lightning_recipes`` uses it (see
:mod:`lightning_recipes._compat`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

# ================================================================================================
# torch
# ================================================================================================

# The attribute behind ``LRScheduler.get_last_lr()`` (and ``ReduceLROnPlateau``'s): one LR per
# parameter group. It is written by a scheduler that sets LRs outside ``step()`` (``WarmupDecay``)
# and resized/scaled with the parameter groups (``callbacks/_lr_groups.py``). Checked: torch 2.15.
SCHEDULER_LAST_LR = "_last_lr"


def set_last_lr(scheduler: Any, lrs: list[float]) -> None:
    """Set what ``scheduler.get_last_lr()`` returns (``_last_lr``). Checked: torch 2.15."""
    setattr(scheduler, SCHEDULER_LAST_LR, list(lrs))


def sub_schedulers(scheduler: Any) -> list[Any]:
    """The schedulers a ``SequentialLR`` or ``ChainedScheduler`` wraps (``_schedulers``); ``[]`` for others.

    They share the optimizer of the wrapper and keep their own per-group lists. Checked: torch 2.15.
    """
    return list(getattr(scheduler, "_schedulers", None) or [])


def is_batch_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a BatchNorm layer: ``BatchNorm1d/2d/3d``, ``SyncBatchNorm`` (what
    ``sync_batchnorm=True`` converts them to), the lazy variants and subclasses such as timm's
    ``BatchNormAct2d``.

    Uses torch's private base ``torch.nn.modules.batchnorm._BatchNorm``: there is no public common
    base (``SyncBatchNorm`` and the lazy classes do not derive from ``BatchNorm2d``). Lightning's
    ``BaseFinetuning`` tests the same class. Checked: torch 2.15.
    """
    return isinstance(module, _BatchNorm)


# ================================================================================================
# timm
# ================================================================================================


def timm_group_parameters(model: nn.Module) -> dict[int, list[str]]:
    """Parameter names of a timm model in its coarse layer groups (stem, stages...), keyed by group index.

    ``timm.models.group_parameters(model, model.group_matcher(coarse=True))``: public re-export of
    ``timm.models._manipulate.group_parameters`` (also in timm 1.0.15 and 1.0.27). Checked: timm 1.0.31.
    """
    from timm.models import group_parameters

    return group_parameters(model, model.group_matcher(coarse=True))


# ================================================================================================
# datasets
# ================================================================================================


def dataset_fingerprint(ds: Any) -> str:
    """The fingerprint ``datasets`` keeps for a ``Dataset`` (``ds._fingerprint``): a hash of its data and
    every transform applied, which the text data modules put in their cache keys.

    Checked: datasets 5.2.0 (the installed one; ``datasets>=3.0`` in pyproject.toml has it too).
    """
    return ds._fingerprint


# ================================================================================================
# huggingface_hub and datasets: offline mode for one call
# ================================================================================================


@contextmanager
def hub_offline() -> Iterator[None]:
    """Make ``huggingface_hub`` (and so transformers and timm) and ``datasets`` offline inside the block.

    Both read ``HF_HUB_OFFLINE`` once, at import, into module constants (``huggingface_hub.constants
    .HF_HUB_OFFLINE``, which ``huggingface_hub.is_offline_mode()`` returns; ``datasets.config
    .HF_HUB_OFFLINE``), so setting the variable later changes nothing: the constants are set here and
    put back on exit. Offline, a cached copy still loads and a missing one fails at once instead of
    retrying the network.

    Checked: huggingface_hub 2.4.0, datasets 5.2.0, transformers 5.23, timm 1.0.31.
    """
    import sys

    from huggingface_hub import constants

    modules = [constants] + ([sys.modules["datasets"].config] if "datasets" in sys.modules else [])
    saved = [m.HF_HUB_OFFLINE for m in modules]
    env = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    for module in modules:
        module.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for module, value in zip(modules, saved, strict=True):
            module.HF_HUB_OFFLINE = value
        if env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = env
