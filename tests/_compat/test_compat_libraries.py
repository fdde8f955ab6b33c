"""torch, timm, datasets, huggingface_hub: lightning_recipes/_compat/_libraries.py, one test each.

An upgrade breaking a private API fails here, loudly, naming the library, its installed version, the
private name and the version the entry was checked against (``compat_helpers.broken``).
"""

from __future__ import annotations

import inspect

import pytest
import torch
from compat_helpers import broken, params
from torch import nn
from torch.optim import lr_scheduler as sched

from lightning_recipes import _compat

# ================================================================================================
# torch
# ================================================================================================


def optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)


SCHEDULERS = {
    "LambdaLR": lambda o: sched.LambdaLR(o, lambda e: 0.5),
    "CosineAnnealingLR": lambda o: sched.CosineAnnealingLR(o, T_max=4),
    "OneCycleLR": lambda o: sched.OneCycleLR(o, max_lr=0.1, total_steps=4),
    "ReduceLROnPlateau": lambda o: sched.ReduceLROnPlateau(o),
    "SequentialLR": lambda o: sched.SequentialLR(o, [sched.ConstantLR(o), sched.ExponentialLR(o, 0.9)], [2]),
    "ChainedScheduler": lambda o: sched.ChainedScheduler([sched.ConstantLR(o), sched.ExponentialLR(o, 0.9)]),
}


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_scheduler_last_lr_is_what_get_last_lr_returns(name):
    scheduler = SCHEDULERS[name](optimizer())
    last = getattr(scheduler, _compat.SCHEDULER_LAST_LR, None)
    assert isinstance(last, list) and last == scheduler.get_last_lr(), broken(
        "torch", f"{name}.{_compat.SCHEDULER_LAST_LR} is {last!r}, get_last_lr() {scheduler.get_last_lr()!r}"
    )
    _compat.set_last_lr(scheduler, [0.123])
    assert scheduler.get_last_lr() == [0.123], broken(
        "torch", f"{name}.get_last_lr() no longer reads _last_lr"
    )


def test_sub_schedulers_of_sequential_and_chained():
    for name in ("SequentialLR", "ChainedScheduler"):
        scheduler = SCHEDULERS[name](optimizer())
        subs = _compat.sub_schedulers(scheduler)
        assert [type(s).__name__ for s in subs] == ["ConstantLR", "ExponentialLR"], broken(
            "torch", f"{name}._schedulers is {subs!r}"
        )
        assert all(s.optimizer is scheduler.optimizer for s in subs)
    assert _compat.sub_schedulers(SCHEDULERS["CosineAnnealingLR"](optimizer())) == []


def test_is_batch_norm_covers_every_batch_norm_class():
    from timm.layers import BatchNormAct2d

    norms = [
        nn.BatchNorm1d(2),
        nn.BatchNorm2d(2),
        nn.BatchNorm3d(2),
        nn.SyncBatchNorm(2),
        nn.LazyBatchNorm2d(),
    ]
    for module in [*norms, BatchNormAct2d(2)]:
        assert _compat.is_batch_norm(module), broken(
            "torch", f"{type(module).__name__} no longer derives from torch.nn.modules.batchnorm._BatchNorm"
        )
    for module in (nn.LayerNorm(2), nn.GroupNorm(1, 2), nn.InstanceNorm2d(2), nn.Linear(2, 2)):
        assert not _compat.is_batch_norm(module), broken("torch", f"{type(module).__name__} is a _BatchNorm")


# ================================================================================================
# timm
# ================================================================================================


def test_timm_group_parameters_gives_coarse_layer_groups():
    import timm
    from timm.models import group_parameters

    assert params(group_parameters)[:2] == ["module", "group_matcher"], broken(
        "timm", f"timm.models.group_parameters{inspect.signature(group_parameters)}"
    )
    model = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    grouped = _compat.timm_group_parameters(model)
    names = [name for _, group in sorted(grouped.items()) for name in group]
    assert list(sorted(grouped)) == [0, 1, 2, 3, 4], broken(
        "timm", f"coarse groups of a ResNet: {sorted(grouped)}"
    )
    assert sorted(names) == sorted(n for n, _ in model.named_parameters()), broken(
        "timm", "group_parameters no longer returns every parameter name once"
    )
    assert names[0].startswith("conv1"), broken("timm", f"the first group is not the stem: {grouped[0]}")


# -- datasets -----------------------------------------------------------------------------------------


def test_dataset_fingerprint_names_the_data_and_its_transforms():
    import datasets

    ds = datasets.Dataset.from_dict({"text": ["a", "b"]})
    fingerprint = _compat.dataset_fingerprint(ds)
    assert isinstance(fingerprint, str) and fingerprint, (
        f"datasets {datasets.__version__}: Dataset._fingerprint is gone or empty "
        "(checked with datasets 5.2.0)"
    )
    mapped = ds.map(lambda row: {"text": row["text"] * 2})
    assert _compat.dataset_fingerprint(mapped) != fingerprint, (
        f"datasets {datasets.__version__}: Dataset._fingerprint no longer changes with a transform"
    )


# -- huggingface_hub / datasets offline constants ------------------------------------------------------


def test_hub_offline_sets_and_restores_the_libraries_offline_constants(monkeypatch):
    import datasets
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    with _compat.hub_offline():
        assert huggingface_hub.is_offline_mode(), (
            f"huggingface_hub {huggingface_hub.__version__}: is_offline_mode() no longer reads "
            "constants.HF_HUB_OFFLINE (checked with 2.4.0)"
        )
        assert datasets.config.HF_HUB_OFFLINE is True
    assert not huggingface_hub.is_offline_mode() and datasets.config.HF_HUB_OFFLINE is False
