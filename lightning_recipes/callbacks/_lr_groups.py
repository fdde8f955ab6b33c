"""Learning rates of optimizer parameter groups and of the LR schedulers that drive them, kept in step.

One implementation for the two callbacks that change learning rates mid-fit:
:class:`~lightning_recipes.callbacks.LRFinder` scales every group by the same factor
(:func:`scale_group_lrs`), :class:`~lightning_recipes.callbacks.FreezeUnfreeze` adds groups at a
ratio of a reference group (:func:`add_scaled_group`). Both touch the same entries:

* in each parameter group, every key containing ``"lr"`` (``lr``, ``initial_lr``, ``max_lr``,
  ``min_lr``: the last three are written by ``OneCycleLR`` and ``LRScheduler``);
* in each LR scheduler of the optimizer, and in the schedulers a ``SequentialLR`` or
  ``ChainedScheduler`` wraps, the per-group lists in :data:`SCHEDULER_GROUP_LISTS`. Entries of lists
  whose name contains ``"lr"`` are learning rates and are scaled; ``lr_lambdas`` (functions) and the
  momentum lists are copied from the reference group as they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from lightning_recipes import _compat

# Per-parameter-group lists kept by torch's LR schedulers (``_last_lr``: see ``_compat``).
SCHEDULER_GROUP_LISTS = (
    "base_lrs",
    _compat.SCHEDULER_LAST_LR,
    "max_lrs",  # CyclicLR
    "min_lrs",  # ReduceLROnPlateau
    "lr_lambdas",  # LambdaLR (WarmupDecay), MultiplicativeLR
    "base_momentums",  # CyclicLR
    "max_momentums",  # CyclicLR
)


def _is_lr(key: str, value: Any) -> bool:
    """Whether ``value``, held under ``key`` (a group key or a scheduler list name), is a learning rate."""
    return "lr" in key and key != "lr_lambdas" and isinstance(value, (float, int, torch.Tensor))


def reference_index(optimizer: Optimizer) -> int:
    """Index of the reference parameter group: the one named ``"head"``, else the first.

    Example::

        >>> p, q = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
        >>> groups = [{"params": [p], "name": "backbone"}, {"params": [q], "name": "head"}]
        >>> reference_index(torch.optim.SGD(groups, lr=1.0))
        1
    """
    names = [g.get("name") for g in optimizer.param_groups]
    return names.index("head") if "head" in names else 0


def scheduler_tree(schedulers: Iterable[Any]) -> list[Any]:
    """``schedulers``, each followed (depth first) by those a ``SequentialLR``/``ChainedScheduler`` wraps.

    Example::

        >>> from torch.optim.lr_scheduler import ConstantLR, ExponentialLR, SequentialLR
        >>> opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
        >>> seq = SequentialLR(opt, [ConstantLR(opt, 0.5, 2), ExponentialLR(opt, 0.9)], milestones=[2])
        >>> [type(s).__name__ for s in scheduler_tree([seq])]
        ['SequentialLR', 'ConstantLR', 'ExponentialLR']
    """
    found = []
    for scheduler in schedulers:
        found.append(scheduler)
        found.extend(scheduler_tree(_compat.sub_schedulers(scheduler)))
    return found


def schedulers_of(trainer: Any, optimizer: Optimizer) -> list[Any]:
    """The LR schedulers of ``trainer`` (``trainer.lr_scheduler_configs``) that drive ``optimizer``."""
    return [
        config.scheduler
        for config in trainer.lr_scheduler_configs
        if getattr(config.scheduler, "optimizer", None) is optimizer
    ]


def scale_group_lrs(optimizer: Optimizer, schedulers: Iterable[Any], factor: float) -> None:
    """Multiply every learning rate of ``optimizer``'s groups and ``schedulers``' group lists by ``factor``.

    Every group keeps its ratio to the others, and the schedulers go on from the scaled values (their
    ``base_lrs``, ``min_lrs``... move with the groups). ``schedulers`` are those driving
    ``optimizer`` (:func:`schedulers_of`); the schedulers they wrap are included.

    Example::

        >>> head, body = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
        >>> opt = torch.optim.SGD([{"params": [head], "lr": 0.1}, {"params": [body], "lr": 0.01}], lr=0.1)
        >>> cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
        >>> scale_group_lrs(opt, [cosine], 2.0)
        >>> [g["lr"] for g in opt.param_groups], cosine.base_lrs, cosine.get_last_lr()
        ([0.2, 0.02], [0.2, 0.02], [0.2, 0.02])
    """
    for group in optimizer.param_groups:
        for key, value in list(group.items()):
            if _is_lr(key, value):
                group[key] = value * factor
    for scheduler in scheduler_tree(schedulers):
        for key in SCHEDULER_GROUP_LISTS:
            values = getattr(scheduler, key, None)
            if isinstance(values, list):
                setattr(scheduler, key, [v * factor if _is_lr(key, v) else v for v in values])


def add_scaled_group(
    optimizer: Optimizer,
    schedulers: Iterable[Any],
    params: Sequence[nn.Parameter],
    name: str,
    ratio: float,
    reference: int | None = None,
) -> dict[str, Any] | None:
    """Add a parameter group at ``ratio`` times the reference group's learning rates; extend the schedulers.

    The new group copies every setting of group ``reference`` (default :func:`reference_index`), with
    each learning rate multiplied by ``ratio``, and is called ``name``. Each per-group list of the
    ``schedulers`` (and of the schedulers they wrap) that has one entry per old group gets one more:
    the reference group's entry, times ``ratio`` for learning rates. Parameters already in the
    optimizer are left out; returns the new group, or ``None`` when no parameter was left.

    Example::

        >>> head, body = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
        >>> opt = torch.optim.SGD([{"params": [head], "name": "head"}], lr=0.1, momentum=0.9)
        >>> cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
        >>> group = add_scaled_group(opt, [cosine], [body], "backbone", 0.5)
        >>> group["lr"], group["initial_lr"], group["momentum"], cosine.base_lrs
        (0.05, 0.05, 0.9, [0.1, 0.05])
        >>> add_scaled_group(opt, [cosine], [body], "again", 0.5) is None
        True
    """
    present = {id(p) for g in optimizer.param_groups for p in g["params"]}
    params = [p for p in params if id(p) not in present]
    if not params:
        return None
    n_old = len(optimizer.param_groups)
    ref = reference_index(optimizer) if reference is None else reference
    group = {
        k: (v * ratio if _is_lr(k, v) else v)
        for k, v in optimizer.param_groups[ref].items()
        if k not in ("params", "name")
    }
    group.update(name=name, params=params)
    optimizer.add_param_group(group)
    for scheduler in scheduler_tree(schedulers):
        for key in SCHEDULER_GROUP_LISTS:
            values = getattr(scheduler, key, None)
            if isinstance(values, list) and len(values) == n_old:
                value = values[ref]
                values.append(value * ratio if _is_lr(key, value) else value)
    return optimizer.param_groups[-1]
