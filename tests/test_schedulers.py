from __future__ import annotations

from functools import partial

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_recipes import ImageClassifier
from lightning_recipes.schedulers import WarmupDecay


class RecordLR(L.Callback):
    def __init__(self) -> None:
        self.lrs: list[list[float]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.lrs.append([g["lr"] for g in optimizer.param_groups])


def fit(tiny_trainer_kwargs, **trainer_kwargs) -> tuple[list[list[float]], WarmupDecay]:
    model = ImageClassifier(
        "test_resnet",
        num_classes=2,
        pretrained=False,
        lr=1.0,
        backbone_lr=0.1,
        optimizer=partial(torch.optim.SGD),
        lr_scheduler=partial(WarmupDecay, warmup_ratio=0.25),
        scheduler_interval="step",
    )
    data = DataLoader(TensorDataset(torch.randn(16, 3, 32, 32), torch.randint(0, 2, (16,))), batch_size=2)
    record = RecordLR()
    kwargs = {**tiny_trainer_kwargs, "limit_train_batches": 4, "limit_val_batches": 0, **trainer_kwargs}
    trainer = L.Trainer(**kwargs, callbacks=[record])
    trainer.fit(model, data)
    return record.lrs, trainer.lr_scheduler_configs[0].scheduler


def test_schedule_is_sized_by_the_trainer(tiny_trainer_kwargs):
    lrs, scheduler = fit(tiny_trainer_kwargs, max_epochs=2)  # 2 epochs x 4 batches = 8 steps
    assert scheduler.total_steps == 8
    head = [round(step[0], 4) for step in lrs]
    assert head == [0.0, 0.5, 1.0, 0.8333, 0.6667, 0.5, 0.3333, 0.1667]
    assert all(abs(b - h / 10) < 1e-9 for h, b in lrs)  # the backbone keeps its ratio
    lrs, scheduler = fit(tiny_trainer_kwargs, max_epochs=2, accumulate_grad_batches=2)
    assert scheduler.total_steps == 4 and [round(s[0], 4) for s in lrs] == [0.0, 1.0, 0.6667, 0.3333]


def test_bad_settings_and_unbounded_training():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="warmup_ratio"):
        WarmupDecay(opt, warmup_ratio=1.5)
    with pytest.raises(ValueError, match="decay must be"):
        WarmupDecay(opt, decay="step")
    with pytest.raises(ValueError, match="finite training length"):
        WarmupDecay(opt).set_total_steps(float("inf"))


def test_cosine_and_state_round_trip():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    schedule = WarmupDecay(opt, decay="cosine", total_steps=4)
    assert [round(schedule.factor(s), 4) for s in range(5)] == [1.0, 0.8536, 0.5, 0.1464, 0.0]
    again = WarmupDecay(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0), decay="cosine")
    again.load_state_dict(schedule.state_dict())
    assert again.total_steps == 4
