"""LRFinder: suggestion on a convex toy problem, bitwise state restore, ratios, files, DDP agreement."""

from __future__ import annotations

import csv
import math
import random
import textwrap
from functools import partial

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_recipes.callbacks import LRFinder
from lightning_recipes.callbacks.lr_finder import suggest_lr
from lightning_recipes.modules._base import TransferModule


class Quadratic(TransferModule):
    """Least squares with E[x x^T] = I: plain SGD converges for lr < 2, fastest at lr = 1."""

    def __init__(self, lr: float = 1e-3) -> None:
        super().__init__(lr=lr, optimizer=torch.optim.SGD)
        self.backbone = nn.Identity()
        self.head = nn.Linear(8, 1, bias=False)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return 0.5 * F.mse_loss(self.head(x), y)


def quadratic_data(batches: int = 100, batch_size: int = 256) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batches * batch_size, 8, generator=g)
    w = torch.randn(8, 1, generator=g)
    return DataLoader(TensorDataset(x, x @ w), batch_size=batch_size)


def trainer(tmp_path, callbacks, **kwargs) -> L.Trainer:
    options = dict(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    options.update(kwargs)
    return L.Trainer(callbacks=callbacks, **options)


@pytest.mark.parametrize("rule", ["steepest", "min_div_10", "valley"])
def test_convex_toy_suggestion_lands_in_good_region(tmp_path, rule):
    torch.manual_seed(0)
    finder = LRFinder(min_lr=1e-5, max_lr=10.0, num_training_steps=100, rule=rule)
    model = Quadratic()
    trainer(tmp_path, [finder], max_steps=1).fit(model, quadratic_data())
    # the sweep spans 6 decades; the good region (fast, stable SGD on this problem) is ~[0.03, 2)
    assert finder.suggested_lr is not None, finder.reason
    assert 0.03 < finder.suggested_lr < 2.0, (rule, finder.suggested_lr, finder.reason)
    assert model.lr == finder.suggested_lr


class Noisy(TransferModule):
    """Dropout and BatchNorm (RNG, buffers), AdamW with a cosine schedule, head + backbone groups."""

    def __init__(self) -> None:
        super().__init__(
            lr=1e-2,
            backbone_lr=1e-3,
            lr_scheduler=partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=5),
        )
        self.backbone = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2))
        self.head = nn.Linear(16, 2)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.head(self.backbone(x)), y)


def noisy_data() -> DataLoader:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40 * 8, 4, generator=g)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=8, shuffle=True)


def snapshot(trainer, pl_module) -> dict:
    opt = trainer.optimizers[0]
    return {
        "weights": {k: v.clone() for k, v in pl_module.state_dict().items()},
        "opt_state": {
            k: {n: (t.clone() if torch.is_tensor(t) else t) for n, t in s.items()}
            for k, s in opt.state_dict()["state"].items()
        },
        "groups": [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups],
        "sched": dict(trainer.lr_scheduler_configs[0].scheduler.state_dict()),
        "rng": (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()),
        "step": trainer.global_step,
    }


def prime(trainer, pl_module) -> None:
    """One optimizer and one scheduler step, so that both hold state the sweep must not disturb."""
    opt = trainer.optimizers[0]
    for p in pl_module.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    opt.zero_grad()
    trainer.lr_scheduler_configs[0].scheduler.step()


@pytest.mark.parametrize("primed", [False, True], ids=["fresh", "with_optimizer_state"])
def test_sweep_restores_everything_but_the_learning_rate(tmp_path, primed):
    torch.manual_seed(0)
    finder = LRFinder(num_training_steps=30, skip_begin=3)
    states = {}
    sweep = finder.lr_find

    def lr_find(trainer, pl_module):  # Lightning runs tuner callbacks first: wrap the sweep itself
        if primed:
            prime(trainer, pl_module)
        states["before"] = snapshot(trainer, pl_module)
        sweep(trainer, pl_module)
        states["after"] = snapshot(trainer, pl_module)

    finder.lr_find = lr_find
    trainer(tmp_path, [finder], max_steps=1, limit_train_batches=40).fit(Noisy(), noisy_data())
    a, b = states["before"], states["after"]
    assert len(finder.results["lr"]) == 30 and finder.suggested_lr is not None, finder.reason
    for k in a["weights"]:
        assert torch.equal(a["weights"][k], b["weights"][k]), k
    assert a["opt_state"].keys() == b["opt_state"].keys()
    assert (len(a["opt_state"]) > 0) == primed
    for k in a["opt_state"]:
        for name, value in a["opt_state"][k].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["opt_state"][k][name])), (k, name)
    assert torch.equal(a["rng"][0], b["rng"][0]) and np.array_equal(a["rng"][1], b["rng"][1])
    assert a["rng"][2] == b["rng"][2] and a["step"] == b["step"]
    # the learning rate is all that changed: head = suggestion, backbone keeps its 1/10 ratio
    factor = finder.suggested_lr / a["groups"][0]["lr"]
    for ga, gb in zip(a["groups"], b["groups"], strict=True):
        for key in ga:
            if "lr" in key:
                assert gb[key] == pytest.approx(ga[key] * factor, rel=1e-12), key
            else:
                assert gb[key] == ga[key], key
    assert b["groups"][0]["lr"] == pytest.approx(finder.suggested_lr)
    assert b["groups"][1]["lr"] == pytest.approx(finder.suggested_lr / 10)
    for key in a["sched"]:
        if key in ("base_lrs", "_last_lr"):
            assert b["sched"][key] == pytest.approx([v * factor for v in a["sched"][key]])
        else:
            assert a["sched"][key] == b["sched"][key], key


class ApplyAt(L.Callback):
    """Sets the head LR (other groups keep their ratio) at the start of an epoch, without a sweep."""

    def __init__(self, epoch: int, lr: float) -> None:
        self.epoch, self.lr = epoch, lr

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            LRFinder().apply(trainer, pl_module, self.lr)


def test_milestone_sweep_mid_fit_restores_state_and_training_continues_identically(tmp_path):
    torch.manual_seed(0)
    finder = LRFinder(num_training_steps=30, skip_begin=3, milestones=[1])
    finder.on_fit_start = lambda *args: None  # only the mid-fit sweep, after an epoch of training
    states = {}
    sweep = finder.lr_find

    def lr_find(trainer, pl_module):
        states["before"] = snapshot(trainer, pl_module)
        sweep(trainer, pl_module)
        states["after"] = snapshot(trainer, pl_module)

    finder.lr_find = lr_find
    swept = Noisy()
    t = trainer(tmp_path, [finder], max_epochs=2, limit_train_batches=40)
    t.fit(swept, noisy_data())
    # Lightning alone records 0-1 points here; up to 30 (the sweep may stop early on divergence)
    assert 20 <= len(finder.results["lr"]) <= 30 and finder.suggested_lr is not None, finder.reason
    a, b = states["before"], states["after"]
    assert a["step"] == b["step"] == 40 and len(a["opt_state"]) > 0
    for k in a["weights"]:
        assert torch.equal(a["weights"][k], b["weights"][k]), k
    for k in a["opt_state"]:
        for name, value in a["opt_state"][k].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["opt_state"][k][name])), (k, name)
    assert torch.equal(a["rng"][0], b["rng"][0])
    assert b["groups"][0]["lr"] == pytest.approx(finder.suggested_lr)
    assert (tmp_path / "lr_find_epoch1.csv").is_file()

    # the rest of the run is exactly a run that set the same LR at epoch 1 without sweeping
    torch.manual_seed(0)
    plain = Noisy()
    t2 = trainer(tmp_path / "plain", [ApplyAt(1, finder.suggested_lr)], max_epochs=2, limit_train_batches=40)
    t2.fit(plain, noisy_data())
    assert t.global_step == t2.global_step == 80
    for (name, p), q in zip(swept.state_dict().items(), plain.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def test_sweep_again_at_the_unfreeze_epoch(tmp_path):
    from lightning_recipes.callbacks import FreezeUnfreeze

    torch.manual_seed(0)
    seen = {}

    class Groups(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            seen[trainer.current_epoch] = {g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups}

    unfreeze = FreezeUnfreeze(unfreeze_at_epoch=1, backbone_lr_ratio=0.1)
    finder = LRFinder(num_training_steps=20, skip_begin=2, milestones=[1])
    swept = {}  # what each sweep trains: optimizer groups, trainable backbone
    sweep = finder.lr_find

    def lr_find(trainer, pl_module):
        swept[trainer.current_epoch] = (
            [g["name"] for g in trainer.optimizers[0].param_groups],
            all(p.requires_grad for p in pl_module.backbone.parameters()),
        )
        sweep(trainer, pl_module)

    finder.lr_find = lr_find
    model = Noisy()
    t = trainer(tmp_path, [unfreeze, finder, Groups()], max_epochs=2, limit_train_batches=25)
    t.fit(model, noisy_data())
    assert [h["epoch"] for h in finder.history] == [0, 1]
    # FreezeUnfreeze runs ahead of the tuner callback: the epoch-1 sweep covers the unfrozen backbone
    assert swept == {0: (["head"], False), 1: (["head", "backbone"], True)}
    assert t.callbacks.index(unfreeze) < t.callbacks.index(finder)
    assert all(h["lr"] is not None for h in finder.history), finder.history
    assert set(seen[0]) == {"head"} and seen[0]["head"] == pytest.approx(finder.history[0]["lr"])
    assert seen[1]["head"] == pytest.approx(finder.history[1]["lr"])
    assert seen[1]["backbone"] == pytest.approx(0.1 * finder.history[1]["lr"])
    assert unfreeze.stage == 2 and all(p.requires_grad for p in model.backbone.parameters())  # 2 groups


def test_resumed_run_skips_the_sweep(tmp_path):
    torch.manual_seed(0)
    t = trainer(tmp_path, [], max_steps=2, limit_train_batches=40)
    t.fit(Noisy(), noisy_data())
    t.save_checkpoint(tmp_path / "a.ckpt")
    finder = LRFinder(num_training_steps=30, skip_begin=3)
    trainer(tmp_path, [finder], max_steps=3, limit_train_batches=40).fit(
        Noisy(), noisy_data(), ckpt_path=str(tmp_path / "a.ckpt")
    )
    assert finder.results == {} and finder.suggested_lr is None


def test_no_suggestion_leaves_learning_rate_unchanged(tmp_path):
    class Flat(Quadratic):
        def training_step(self, batch, batch_idx):
            return 0.0 * self.head.weight.sum() + 1.0

    finder = LRFinder(num_training_steps=30, skip_begin=3)
    model = Flat(lr=0.123)
    with pytest.warns(UserWarning, match="no learning rate to suggest.*never decreased"):
        t = trainer(tmp_path, [finder], max_steps=1)
        t.fit(model, quadratic_data(batches=40))
    assert finder.suggested_lr is None and "never decreased" in finder.reason
    assert model.lr == 0.123 and t.optimizers[0].param_groups[0]["lr"] == 0.123
    assert (tmp_path / "lr_find.png").stat().st_size > 0


def test_csv_png_and_logger(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    torch.manual_seed(0)
    finder = LRFinder(min_lr=1e-5, num_training_steps=40, skip_begin=3)
    logger = CSVLogger(tmp_path, name="run")
    t = trainer(tmp_path, [finder], max_steps=1, logger=logger)
    t.fit(Quadratic(), quadratic_data(batches=50))
    run_dir = tmp_path / "run" / "version_0"
    with (run_dir / "lr_find.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(finder.results["lr"]) > 3
    assert [float(r["lr"]) for r in rows] == pytest.approx(finder.results["lr"])
    assert (run_dir / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    logged = (run_dir / "metrics.csv").read_text()
    assert "lr_finder/suggested_lr" in logged


def test_suggest_lr_rules_filter_non_finite():
    lrs = [10 ** (-6 + i / 10) for i in range(61)]
    losses = [2.0 - math.tanh(2 * (math.log10(lr) + 3)) for lr in lrs]  # steepest at 1e-3
    losses[30] = float("nan")
    losses[31] = float("inf")
    lr, _ = suggest_lr(lrs, losses, "steepest", skip_begin=0, skip_end=0)
    assert 10**-3.5 < lr < 10**-2.5
    lr, _ = suggest_lr(lrs, losses, "min_div_10", skip_begin=0, skip_end=0)
    assert lr == pytest.approx(lrs[-1] / 10)
    lr, _ = suggest_lr(lrs, losses, "valley", skip_begin=0, skip_end=0)
    assert 1e-5 < lr < 1e-1
    assert suggest_lr(lrs, [float("nan")] * 61)[0] is None
    assert suggest_lr(lrs, list(reversed(losses[:30])) + [5.0] * 31, "min_div_10", skip_begin=0)[0] is None
    with pytest.raises(ValueError, match="rule"):
        suggest_lr(lrs, losses, "fastest")
    with pytest.raises(ValueError, match="min_lr"):
        LRFinder(min_lr=1.0, max_lr=0.1)


DDP_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import lightning as L
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset
    from lightning_recipes.callbacks import LRFinder
    from lightning_recipes.modules._base import TransferModule

    class Quadratic(TransferModule):
        def __init__(self):
            super().__init__(lr=1e-3, optimizer=torch.optim.SGD)
            self.backbone = nn.Identity()
            self.head = nn.Linear(8, 1, bias=False)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return 0.5 * F.mse_loss(self.head(x), y)

    if __name__ == "__main__":
        out = Path(sys.argv[1])
        g = torch.Generator().manual_seed(0)
        x = torch.randn(100 * 128, 8, generator=g)
        data = DataLoader(TensorDataset(x, x @ torch.randn(8, 1, generator=g)), batch_size=64)
        finder = LRFinder(min_lr=1e-5, num_training_steps=60, skip_begin=5)
        model = Quadratic()
        trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=2, callbacks=[finder],
                            logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, default_root_dir=str(out))
        trainer.fit(model, data)
        lrs = [g["lr"] for g in trainer.optimizers[0].param_groups]
        (out / f"rank{trainer.global_rank}.txt").write_text(f"{finder.suggested_lr!r} {model.lr!r} {lrs!r}")
    """
)


@pytest.mark.slow
def test_ddp_ranks_agree_on_the_suggestion(tmp_path, run_script):
    run_script(DDP_SCRIPT, tmp_path)
    rank0, rank1 = (tmp_path / "rank0.txt").read_text(), (tmp_path / "rank1.txt").read_text()
    assert rank0 == rank1
    assert rank0.split()[0] != "None"
