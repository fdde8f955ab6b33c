"""_lr_groups: scaling and adding parameter groups keeps optimizer groups and LR schedulers in step."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler as sched

from lightning_recipes.callbacks._lr_groups import (
    SCHEDULER_GROUP_LISTS,
    add_scaled_group,
    reference_index,
    scale_group_lrs,
    scheduler_tree,
    schedulers_of,
)
from lightning_recipes.schedulers import WarmupDecay

KINDS = ["cosine", "onecycle", "sequential", "chained", "plateau", "warmup_decay"]


def make_scheduler(kind: str, optimizer: torch.optim.Optimizer):
    n = len(optimizer.param_groups)
    if kind == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=10)
    if kind == "onecycle":
        return sched.OneCycleLR(optimizer, max_lr=[0.1 / 10**i for i in range(n)], total_steps=20)
    if kind == "sequential":
        warm = sched.LinearLR(optimizer, start_factor=0.5, total_iters=2)
        return sched.SequentialLR(
            optimizer, [warm, sched.CosineAnnealingLR(optimizer, T_max=8)], milestones=[2]
        )
    if kind == "chained":
        return sched.ChainedScheduler([sched.ExponentialLR(optimizer, 0.9), sched.StepLR(optimizer, 3, 0.5)])
    if kind == "plateau":
        return sched.ReduceLROnPlateau(optimizer, factor=0.5, patience=0, min_lr=1e-3)
    return WarmupDecay(optimizer, warmup_ratio=0.2, decay="cosine", total_steps=10)


def step(scheduler, i: int) -> None:
    scheduler.optimizer.step()
    if isinstance(scheduler, sched.ReduceLROnPlateau):
        scheduler.step(1.0)  # never improves: halves every step, down to min_lrs
    else:
        scheduler.step()


def lrs(optimizer) -> list[float]:
    return [g["lr"] for g in optimizer.param_groups]


def two_groups() -> torch.optim.Optimizer:
    head, body = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    groups = [
        {"params": [head], "name": "head", "lr": 0.1},
        {"params": [body], "name": "backbone", "lr": 0.01},
    ]
    return torch.optim.SGD(groups, lr=0.1, momentum=0.9)


def scheduler_lists(scheduler) -> dict[tuple[int, str], list]:
    return {
        (i, key): list(getattr(s, key))
        for i, s in enumerate(scheduler_tree([scheduler]))
        for key in SCHEDULER_GROUP_LISTS
        if isinstance(getattr(s, key, None), list)
    }


@pytest.mark.parametrize("kind", KINDS)
def test_scale_group_lrs_scales_groups_and_every_scheduler_list(kind):
    opt, twin = two_groups(), two_groups()
    scheduler, twin_scheduler = make_scheduler(kind, opt), make_scheduler(kind, twin)
    for i in range(3):
        step(scheduler, i)
        step(twin_scheduler, i)
    groups_before = [dict((k, v) for k, v in g.items() if k != "params") for g in opt.param_groups]
    lists_before = scheduler_lists(scheduler)

    scale_group_lrs(opt, [scheduler], 2.5)

    for before, group in zip(groups_before, opt.param_groups, strict=True):
        for key, value in before.items():
            if "lr" in key:
                assert group[key] == pytest.approx(2.5 * value), key
            else:
                assert group[key] == value, key
    lists_after = scheduler_lists(scheduler)
    assert lists_after.keys() == lists_before.keys()
    for (i, key), values in lists_before.items():
        if key == "lr_lambdas" or "lr" not in key:
            assert lists_after[(i, key)] == values, key  # functions and momentums are not learning rates
        else:
            assert lists_after[(i, key)] == pytest.approx([2.5 * v for v in values]), (i, key)
    assert scheduler.get_last_lr() == pytest.approx([2.5 * v for v in twin_scheduler.get_last_lr()])
    # the schedule goes on at 2.5x an unscaled twin, groups keeping their 1:10 ratio
    for i in range(3, 12):
        step(scheduler, i)
        step(twin_scheduler, i)
        assert lrs(opt) == pytest.approx([2.5 * v for v in lrs(twin)]), i


def test_scale_group_lrs_values_cosine_and_sequential():
    opt = two_groups()
    cosine = sched.CosineAnnealingLR(opt, T_max=10)
    scale_group_lrs(opt, [cosine], 3.0)
    assert lrs(opt) == pytest.approx([0.3, 0.03])
    assert cosine.base_lrs == pytest.approx([0.3, 0.03]) and cosine.get_last_lr() == pytest.approx(
        [0.3, 0.03]
    )
    assert [g["initial_lr"] for g in opt.param_groups] == pytest.approx([0.3, 0.03])

    opt = two_groups()
    seq = make_scheduler("sequential", opt)  # starts at 0.5x (LinearLR warm-up)
    assert lrs(opt) == pytest.approx([0.05, 0.005])
    scale_group_lrs(opt, [seq], 2.0)
    warm, cos = seq._schedulers
    assert lrs(opt) == pytest.approx([0.1, 0.01])
    assert warm.base_lrs == pytest.approx([0.2, 0.02]) and cos.base_lrs == pytest.approx([0.2, 0.02])
    assert seq.get_last_lr() == pytest.approx([0.1, 0.01]) and warm.get_last_lr() == pytest.approx(
        [0.1, 0.01]
    )
    for i in range(2):
        step(seq, i)
    assert lrs(opt) == pytest.approx([0.2, 0.02])  # the cosine phase starts from the scaled base LRs


def test_scale_group_lrs_values_onecycle_plateau_warmup_decay():
    opt = two_groups()
    onecycle = make_scheduler("onecycle", opt)
    scale_group_lrs(opt, [onecycle], 0.5)
    assert [g["max_lr"] for g in opt.param_groups] == pytest.approx([0.05, 0.005])
    assert [g["initial_lr"] for g in opt.param_groups] == pytest.approx([0.002, 0.0002])
    assert [g["min_lr"] for g in opt.param_groups] == pytest.approx([2e-7, 2e-8])
    assert [g["momentum"] for g in opt.param_groups] == [0.95, 0.95]  # cycled momentum untouched

    opt = two_groups()
    plateau = make_scheduler("plateau", opt)
    scale_group_lrs(opt, [plateau], 10.0)
    assert lrs(opt) == pytest.approx([1.0, 0.1]) and plateau.min_lrs == pytest.approx([0.01, 0.01])
    assert plateau.get_last_lr() == pytest.approx([1.0, 0.1])

    opt = two_groups()
    warmup = make_scheduler("warmup_decay", opt)
    lambdas = list(warmup.lr_lambdas)
    for i in range(2):
        step(warmup, i)
    assert lrs(opt) == pytest.approx([0.1, 0.01])  # end of the 2-step warm-up
    scale_group_lrs(opt, [warmup], 0.1)
    assert warmup.base_lrs == pytest.approx([0.01, 0.001]) and warmup.lr_lambdas == lambdas
    assert lrs(opt) == pytest.approx([0.01, 0.001]) and warmup.get_last_lr() == pytest.approx([0.01, 0.001])


@pytest.mark.parametrize("kind", KINDS)
def test_add_scaled_group_extends_every_scheduler_list_at_the_ratio(kind):
    head, body = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([{"params": [head], "name": "head", "lr": 0.1}], lr=0.1, momentum=0.9)
    scheduler = make_scheduler(kind, opt)
    for i in range(3):
        step(scheduler, i)
    head_group = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
    lists_before = scheduler_lists(scheduler)

    group = add_scaled_group(opt, [scheduler], [body], "backbone", 0.25)

    assert group is opt.param_groups[1] and group["name"] == "backbone" and group["params"] == [body]
    for key, value in head_group.items():
        if key == "name":
            continue
        expected = 0.25 * value if "lr" in key else value
        assert group[key] == pytest.approx(expected), key
    lists_after = scheduler_lists(scheduler)
    assert lists_after.keys() == lists_before.keys()
    for (i, key), values in lists_before.items():
        assert len(values) == 1 and lists_after[(i, key)][0] == values[0], (i, key)
        added = lists_after[(i, key)][1]
        if key == "lr_lambdas" or "lr" not in key:
            assert added is values[0], (i, key)
        else:
            assert added == pytest.approx(0.25 * values[0]), (i, key)
    # the schedule drives the new group at a fixed 1:4 ratio to the head
    for i in range(3, 12):
        step(scheduler, i)
        head_lr, body_lr = lrs(opt)
        assert body_lr == pytest.approx(0.25 * head_lr), i


def test_add_scaled_group_values_and_skips_present_params():
    head, body, extra = (nn.Parameter(torch.zeros(2)) for _ in range(3))
    opt = torch.optim.SGD([{"params": [head], "lr": 0.2}, {"params": [body], "lr": 0.4}], lr=0.1)
    cosine = sched.CosineAnnealingLR(opt, T_max=10)
    assert reference_index(opt) == 0  # unnamed groups: the first is the reference
    assert add_scaled_group(opt, [cosine], [body, head], "again", 0.5) is None
    assert len(opt.param_groups) == 2 and cosine.base_lrs == [0.2, 0.4]
    group = add_scaled_group(opt, [cosine], [body, extra], "extra", 0.5, reference=1)
    assert group["params"] == [extra] and group["lr"] == pytest.approx(0.2)
    assert cosine.base_lrs == pytest.approx([0.2, 0.4, 0.2]) and cosine.get_last_lr() == pytest.approx(
        [0.2, 0.4, 0.2]
    )

    opt = torch.optim.SGD([{"params": [head], "name": "head", "lr": 0.1}], lr=0.1)
    plateau = sched.ReduceLROnPlateau(opt, min_lr=[0.01])
    add_scaled_group(opt, [plateau], [body], "backbone.1", 0.1)
    add_scaled_group(opt, [plateau], [extra], "backbone.0", 0.01)
    assert [g["name"] for g in opt.param_groups] == ["head", "backbone.1", "backbone.0"]
    assert lrs(opt) == pytest.approx([0.1, 0.01, 0.001])
    assert plateau.min_lrs == pytest.approx([0.01, 0.001, 0.0001])
    assert plateau.get_last_lr() == pytest.approx([0.1, 0.01, 0.001])


def test_schedulers_of_picks_the_optimizers_schedulers():
    a, b = two_groups(), two_groups()
    sa, sb = sched.CosineAnnealingLR(a, T_max=3), sched.StepLR(b, 2)
    trainer = SimpleNamespace(
        lr_scheduler_configs=[SimpleNamespace(scheduler=sa), SimpleNamespace(scheduler=sb)]
    )
    assert schedulers_of(trainer, a) == [sa] and schedulers_of(trainer, b) == [sb]
