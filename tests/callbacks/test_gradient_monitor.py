"""GradientMonitor and clipping: pre-clip norms, clipped norm within the limit (fp32, bf16), AGC; steps that
NonFiniteGuard(non_finite="skip") skips are measured by the monitor first."""

from __future__ import annotations

import logging
import math
from functools import partial

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_recipes.callbacks import GradientMonitor, NonFiniteGuard
from lightning_recipes.modules._base import TransferModule


class Toy(TransferModule):
    def __init__(self, nan_at_step: int | None = None, **kwargs) -> None:
        kwargs.setdefault("optimizer", partial(torch.optim.SGD, momentum=0.9))
        super().__init__(**kwargs)
        self.backbone = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh())
        self.head = nn.Linear(16, 3)
        self.nan_at_step = nan_at_step

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.head(self.backbone(x)), y)
        if batch_idx == self.nan_at_step:
            loss = loss * float("nan")
        return loss


def loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g) * 5
    return DataLoader(TensorDataset(x, torch.randint(0, 3, (64,), generator=g)), batch_size=8)


class PostClip(L.Callback):
    """Records, after each optimizer step, the gradients it used (after all clipping; zeroed only later)."""

    def __init__(self) -> None:
        self.norms: list[float] = []
        self.max_abs: list[float] = []
        self.grads: list[dict[str, torch.Tensor]] = []

    def on_train_start(self, trainer, pl_module):
        def hook(optimizer, args, kwargs):  # step(closure) runs backward + clipping first
            grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            if not grads:
                return
            self.norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())
            self.max_abs.append(max(g.abs().max().item() for g in grads))
            self.grads.append(
                {n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None}
            )

        trainer.optimizers[0].register_step_post_hook(hook)


def fit(tmp_path, model, callbacks, **kwargs):
    options = dict(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=8,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    options.update(kwargs)
    trainer = L.Trainer(callbacks=callbacks, **options)
    trainer.fit(model, loader())
    return trainer


class NormLog(L.Callback):
    """Copies the monitor's pre-clip norm after each step (the monitor runs first)."""

    def __init__(self, monitor: GradientMonitor) -> None:
        self.monitor, self.norms = monitor, []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.norms.append(self.monitor.last_norm)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_clip_by_norm_never_exceeds_limit_and_monitor_sees_unclipped_norm(tmp_path, precision):
    torch.manual_seed(0)
    limit = 0.5
    monitor, post = GradientMonitor(), PostClip()
    log = NormLog(monitor)
    fit(tmp_path, Toy(lr=0.05), [monitor, log, post], gradient_clip_val=limit, precision=precision)
    assert len(post.norms) == 8
    assert max(post.norms) <= limit * (1 + 1e-5)
    clipped = [n > limit for n in log.norms]
    assert any(clipped)  # the test clips for real
    assert monitor.clipped_steps == sum(clipped) and monitor.steps == 8
    for before, after in zip(log.norms, post.norms, strict=True):  # the monitor's norm is the pre-clip norm
        assert after == pytest.approx(min(before, limit), rel=1e-4)


def test_clip_by_value_never_exceeds_limit(tmp_path):
    torch.manual_seed(0)
    monitor, post = GradientMonitor(), PostClip()
    fit(tmp_path, Toy(lr=0.05), [monitor, post], gradient_clip_val=0.05, gradient_clip_algorithm="value")
    assert max(post.max_abs) <= 0.05 * (1 + 1e-6)
    assert monitor.clipped_steps > 0


@pytest.mark.parametrize(("algorithm", "clipped"), [("norm", True), ("value", False), (None, True)])
def test_clipped_counts_follow_the_trainer_algorithm(algorithm, clipped):
    from types import SimpleNamespace

    from lightning.pytorch.utilities import GradClipAlgorithmType

    p = nn.Parameter(torch.zeros(3))
    p.grad = torch.full((3,), 0.4)  # norm 0.69 > 0.5, largest value 0.4 < 0.5
    opt = torch.optim.SGD([p], lr=0.1)
    algo = GradClipAlgorithmType(algorithm) if algorithm else GradClipAlgorithmType.NORM
    monitor = GradientMonitor()
    trainer = SimpleNamespace(gradient_clip_val=0.5, gradient_clip_algorithm=algo, strategy=None)
    assert monitor._is_clipped(trainer, opt, GradientMonitor.grad_norms(opt)[0]) is clipped
    trainer.gradient_clip_val = None
    assert monitor._is_clipped(trainer, opt, 0.69) is False


def test_monitor_does_not_change_training(tmp_path):
    torch.manual_seed(0)
    a = Toy(lr=0.05)
    b = Toy(lr=0.05)
    b.load_state_dict(a.state_dict())
    fit(tmp_path, a, [])
    fit(tmp_path, b, [GradientMonitor(per_group=True)])
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


def test_per_group_norms_are_logged_and_consistent(tmp_path):
    torch.manual_seed(0)
    monitor = GradientMonitor(per_group=True)
    trainer = fit(tmp_path, Toy(lr=0.05), [monitor], gradient_clip_val=1e-3)
    metrics = trainer.callback_metrics
    assert {"grad/norm", "grad/norm/head", "grad/norm/backbone", "grad/clipped_fraction"} <= set(metrics)
    head, backbone = monitor.last_group_norms["head"], monitor.last_group_norms["backbone"]
    assert monitor.last_norm == pytest.approx((head**2 + backbone**2) ** 0.5, rel=1e-5)
    assert metrics["grad/norm"].item() == pytest.approx(monitor.last_norm, rel=1e-5)
    assert metrics["grad/clipped_fraction"].item() == 1.0


def test_agc_clips_backbone_unitwise_and_leaves_head(tmp_path):
    from timm.utils.agc import unitwise_norm

    torch.manual_seed(0)
    factor = 0.01
    model = Toy(lr=0.05, agc_clip_factor=factor)
    post, pre = PostClip(), []

    class Pre(L.Callback):  # weights and head gradient as AGC sees them (before clipping, before the step)
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            pre.append(
                (
                    {n: p.detach().clone() for n, p in pl_module.named_parameters()},
                    pl_module.head.weight.grad.clone(),
                )
            )

    fit(tmp_path, model, [Pre(), post], limit_train_batches=4)
    assert len(post.grads) == len(pre) == 4
    for grads, (weights, head_grad) in zip(post.grads, pre, strict=True):
        for name, grad in grads.items():
            if name.startswith("backbone."):
                limit = unitwise_norm(weights[name]).clamp(min=1e-3) * factor
                assert (unitwise_norm(grad) <= limit * (1 + 1e-5)).all(), name
        assert torch.equal(grads["head.weight"], head_grad)  # AGC leaves the head alone
    # and the head's gradient is far above what AGC would allow, so the backbone bound is not vacuous
    weights, head_grad = pre[0]
    assert (unitwise_norm(head_grad) > unitwise_norm(weights["head.weight"]) * factor).any()


def lines(caplog, prefix: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(prefix)]


def test_a_step_the_guard_skips_is_measured_first(tmp_path, caplog):
    torch.manual_seed(0)
    model = Toy(lr=0.05, nan_at_step=1)
    snapshots = []

    class Snap(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            snapshots.append({n: p.detach().clone() for n, p in pl_module.named_parameters()})

    monitor, guard = GradientMonitor(), NonFiniteGuard("skip")
    log = NormLog(monitor)
    with caplog.at_level(logging.INFO):
        trainer = fit(tmp_path, model, [monitor, log, guard, Snap()], limit_train_batches=3)
    assert lines(caplog, "NonFiniteGuard:") == [
        "NonFiniteGuard: skipped the optimizer step at epoch 0, global step 1: "
        "the gradients are not finite; weights left unchanged "
        "(non_finite='skip'; each epoch with skips ends with a count).",
        "NonFiniteGuard: epoch 0: skipped 1 of 3 optimizer steps with non-finite gradients (1 in total).",
    ]
    assert lines(caplog, "GradientMonitor:") == []  # the monitor only measures
    assert guard.skipped_steps == 1
    assert trainer.callback_metrics["grad/skipped_steps"].item() == 1.0
    # the monitor saw the skipped step's gradients before the guard dropped them; not counted as clipped
    assert math.isnan(log.norms[1]) and math.isfinite(log.norms[2]) and monitor.steps == 3
    assert monitor.clipped_steps == 0
    for name, value in snapshots[0].items():  # step 1 (NaN) left the weights as they were
        assert torch.equal(value, snapshots[1][name]), name
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(snapshots[1][n], snapshots[2][n]) for n in snapshots[1])  # step 2 trained


class NaNEveryOtherStep(Toy):
    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if batch_idx % 2 == 0 else loss


def test_skips_are_announced_once_then_counted_per_epoch(tmp_path, caplog):
    monitor = GradientMonitor()
    with caplog.at_level(logging.INFO):
        fit(
            tmp_path,
            NaNEveryOtherStep(lr=0.05),
            [monitor, NonFiniteGuard("skip")],
            limit_train_batches=4,
            max_epochs=2,
        )
    said = lines(caplog, "NonFiniteGuard:")
    assert len(said) == 3 and said[0].startswith(
        "NonFiniteGuard: skipped the optimizer step at epoch 0, global"
    )
    assert said[1:] == [
        f"NonFiniteGuard: epoch {e}: skipped 2 of 4 optimizer steps with non-finite gradients"
        f" ({2 * e + 2} in total)."
        for e in (0, 1)
    ]
    assert monitor.steps == 8


def test_state_dict_roundtrip():
    monitor, guard = GradientMonitor(), NonFiniteGuard("skip")
    monitor.steps, monitor.clipped_steps, guard.skipped_steps = 10, 4, 1
    restored, restored_guard = GradientMonitor(), NonFiniteGuard("skip")
    restored.load_state_dict(monitor.state_dict())
    restored_guard.load_state_dict(guard.state_dict())
    assert (restored.steps, restored.clipped_steps, restored_guard.skipped_steps) == (10, 4, 1)
    with pytest.raises(ValueError, match="norm_type"):
        GradientMonitor(norm_type=0)


def _sharded_norms(rank: int, init: str, out: str) -> None:
    """One of 2 processes, each holding half of every gradient (as FSDP shards them)."""
    from datetime import timedelta

    import torch.distributed as dist

    # a rank that cannot reach the other fails within a minute instead of gloo's 30-minute default
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2, timeout=timedelta(seconds=60))
    try:
        full = [torch.arange(1.0, 7.0), -torch.arange(1.0, 5.0) * 3]  # two parameters, one per group
        shards = [nn.Parameter(t.chunk(2)[rank].clone()) for t in full]
        for shard, t in zip(shards, full, strict=True):
            shard.grad = t.chunk(2)[rank].clone()
        opt = torch.optim.SGD(
            [{"params": [shards[0]], "name": "a"}, {"params": [shards[1]], "name": "b"}], lr=0.1
        )
        result = [
            GradientMonitor.grad_norms(opt, 2.0, sharded=True),
            GradientMonitor.grad_norms(opt, math.inf, True),
        ]
        result.append(GradientMonitor._max_abs(opt, sharded=True))
        torch.save(result, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two processes, like every multi-process test (recipes/test_fsdp_recipes.py: FSDP)
def test_sharded_gradients_give_the_norms_of_the_whole_gradients(tmp_path) -> None:
    """Under FSDP each rank holds a shard of every gradient: the norms are reduced over the ranks."""
    import torch.multiprocessing as mp

    mp.spawn(_sharded_norms, args=(f"file://{tmp_path / 'pg'}", str(tmp_path / "out")), nprocs=2)
    a, b = torch.arange(1.0, 7.0), -torch.arange(1.0, 5.0) * 3
    for rank in (0, 1):  # every rank gets the same, whole-gradient figures
        (two, groups), (inf, _), max_abs = torch.load(tmp_path / f"out.{rank}")
        assert groups == pytest.approx({"a": a.norm().item(), "b": b.norm().item()})
        assert two == pytest.approx(torch.cat([a, b]).norm().item())
        assert inf == max_abs == 12.0
