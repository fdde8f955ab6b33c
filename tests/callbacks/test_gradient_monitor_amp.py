"""Mixed precision, gradient accumulation, gradient checkpointing, clipping and GradientMonitor together.

CPU: ``bf16-mixed`` runs here. ``precision="16-mixed"`` on CPU becomes ``bf16-mixed`` in Lightning 2.6
(tested below), so the fp16 grad-scaler path is tested with Lightning's ``MixedPrecision("16-mixed",
"cpu")`` plugin given explicitly: the same plugin, scaler and hooks a GPU run uses, on CPU fp16 autocast.
"""

from __future__ import annotations

import logging
from functools import partial

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins import MixedPrecision
from test_gradient_monitor import NormLog, PostClip
from torch.utils.data import DataLoader

from lightning_recipes import TextClassifier
from lightning_recipes.callbacks import GradientMonitor, NonFiniteGuard

BERT = {"model_type": "bert", "vocab_size": 32, "hidden_size": 16, "num_hidden_layers": 2,
        "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 32}  # fmt: skip


def batches(n: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(4 * n):
        ids, label = torch.randint(5, 32, (12,), generator=g), torch.randint(0, 2, (), generator=g)
        rows.append({"input_ids": ids, "attention_mask": torch.ones(12, dtype=torch.long), "labels": label})
    return DataLoader(rows, batch_size=4)


def test_bf16_accumulation_checkpointing_and_clipping_together(tmp_path) -> None:
    torch.manual_seed(0)
    model = TextClassifier(
        "bert", pretrained=False, config=BERT, num_classes=2, lr=0.05, gradient_checkpointing=True
    )
    assert any(getattr(m, "gradient_checkpointing", False) is True for m in model.backbone.modules())
    limit = 0.05
    monitor, post = GradientMonitor(per_group=True), PostClip()
    log = NormLog(monitor)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        precision="bf16-mixed",
        accumulate_grad_batches=2,
        gradient_clip_val=limit,
        callbacks=[monitor, log, post],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, batches(8))
    assert trainer.global_step == monitor.steps == len(post.norms) == 4  # 8 batches, 2 per optimizer step
    assert max(post.norms) <= limit * (1 + 1e-4)  # the clipped norm never exceeds the limit
    assert any(n > limit for n in log.norms) and monitor.clipped_steps == sum(n > limit for n in log.norms)
    for before, after in zip(log.norms, post.norms, strict=True):
        assert after == pytest.approx(min(before, limit), rel=1e-3)
    assert {"grad/norm/head", "grad/norm/backbone"} <= set(trainer.callback_metrics)


def test_fp16_mixed_on_cpu_becomes_bf16_mixed(tmp_path) -> None:
    with pytest.warns(UserWarning, match="AMP with fp16 is not supported on CPU"):
        trainer = L.Trainer(accelerator="cpu", precision="16-mixed", logger=False, default_root_dir=tmp_path)
    assert trainer.precision == "bf16-mixed"


NO_GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, NO_GPU])


def fp16(init_scale: float, device: str = "cpu") -> MixedPrecision:
    """Lightning's ``16-mixed`` plugin on ``device``, its scaler starting at ``init_scale``."""
    return MixedPrecision("16-mixed", device, scaler=torch.amp.GradScaler(device, init_scale=init_scale))


class Scales(L.Callback):
    """The loss scale at each optimizer step, before the scaler updates it."""

    def __init__(self) -> None:
        self.scales: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.scales.append(trainer.precision_plugin.scaler.get_scale())


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_fp16_grad_scaler_accumulation_checkpointing_and_clipping_together(tmp_path, caplog, device) -> None:
    """A scale of 2**19 overflows fp16 at first: the scaler skips those steps and halves the scale; the
    monitor counts them as the scaler's, a skipping guard leaves them to it (not bad steps), and every
    step taken is unscaled and clipped."""
    torch.manual_seed(0)
    model = TextClassifier(
        "bert", pretrained=False, config=BERT, num_classes=2, lr=0.05, gradient_checkpointing=True
    )
    limit = 0.05
    monitor, post, scales = GradientMonitor(per_group=True), PostClip(), Scales()
    log, guard = NormLog(monitor), NonFiniteGuard("skip")
    trainer = L.Trainer(
        accelerator=device,
        devices=1,
        max_epochs=1,
        plugins=[fp16(2.0**19, device)],
        accumulate_grad_batches=2,
        gradient_clip_val=limit,
        callbacks=[monitor, log, guard, post, scales],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    with caplog.at_level(logging.INFO):
        trainer.fit(model, batches(16))
    overflowed = [not torch.isfinite(torch.tensor(n)) for n in log.norms]
    assert trainer.global_step == monitor.steps == 8 and 0 < sum(overflowed) < 8
    # each overflow halved the scale; the scaler took the other steps (PostClip sees only those)
    halvings = [later == now / 2 for now, later in zip(scales.scales, scales.scales[1:], strict=False)]
    assert halvings == overflowed[:-1]
    assert monitor.scaler_skipped_steps == sum(overflowed) and guard.skipped_steps == 0
    assert guard.consecutive_skips == 0  # finite losses: the scaler's overflows are not bad steps
    assert len(post.norms) == 8 - sum(overflowed)
    taken = [n for n, o in zip(log.norms, overflowed, strict=True) if not o]
    assert all(n < 100 for n in taken)  # unscaled: the scaled norms are ~2**16 times larger
    assert max(post.norms) <= limit * (1 + 1e-4)
    for before, after in zip(taken, post.norms, strict=True):
        assert after == pytest.approx(min(before, limit), rel=1e-3)
    assert trainer.callback_metrics["grad/scale"] == scales.scales[-1]
    assert trainer.callback_metrics["grad/scaler_skipped_steps"] == sum(overflowed)
    assert not [r for r in caplog.records if r.getMessage().startswith("NonFiniteGuard:")]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("GradientMonitor:")]
    assert lines == [
        f"GradientMonitor: epoch 0: the fp16 grad scaler skipped {sum(overflowed)} of 8 optimizer steps whose"
        f" scaled gradients overflowed ({sum(overflowed)} in total; loss scale now"
        f" {trainer.precision_plugin.scaler.get_scale():g}). A few early on are how it finds its scale;"
        " many mean the model is not training: lower the learning rate, or use precision=bf16-mixed."
    ]


@pytest.mark.parametrize("fused", [False, True])
def test_fp16_norms_are_unscaled_with_a_fused_optimizer_too(tmp_path, fused: bool) -> None:
    """A fused optimizer unscales inside its step, after the monitor ran: the monitor divides itself."""
    torch.manual_seed(0)
    model = TextClassifier(
        "bert", pretrained=False, config=BERT, num_classes=2, lr=0.05,
        optimizer=partial(torch.optim.AdamW, fused=fused),
    )  # fmt: skip
    monitor = GradientMonitor()
    log = NormLog(monitor)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=1, plugins=[fp16(2.0**10)], callbacks=[monitor, log], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(model, batches(1))
    torch.manual_seed(0)
    reference = TextClassifier("bert", pretrained=False, config=BERT, num_classes=2, lr=0.05)
    for p in reference.parameters():
        p.grad = None
    with torch.autocast("cpu", dtype=torch.float16):
        loss = reference.training_step(next(iter(batches(1))), 0)
    loss.backward()
    expected = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in reference.parameters()])).item()
    assert log.norms[0] == pytest.approx(expected, rel=1e-2)


SKIP_IN_SYNC = r"""
import lightning as L, torch, torch.nn.functional as F, sys
from lightning.pytorch.plugins import MixedPrecision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from lightning_recipes.callbacks import GradientMonitor, NonFiniteGuard


class Toy(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        if self.global_rank == 1 and batch_idx == 2:  # one rank only: its NaN reaches both through all-reduce
            loss = loss * float("nan")
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


class Check(L.Callback):
    def on_train_end(self, trainer, pl_module):
        flat = torch.cat([p.detach().float().flatten() for p in pl_module.parameters()])
        every = trainer.strategy.all_gather(flat)
        skipped = trainer.strategy.all_gather(torch.tensor(float(guard.skipped_steps)))
        by_scaler = trainer.strategy.all_gather(torch.tensor(float(monitor.scaler_skipped_steps)))
        scaler = trainer.precision_plugin.scaler
        scale = trainer.strategy.all_gather(torch.tensor(scaler.get_scale() if scaler else 0.0))
        if trainer.is_global_zero:
            print("finite", bool(torch.isfinite(every).all()), "same", bool(torch.equal(every[0], every[1])),
                  "skipped", skipped.tolist(), "by scaler", by_scaler.tolist(), "scale", scale.tolist(),
                  "steps", trainer.global_step, flush=True)


g = torch.Generator().manual_seed(0)
data = TensorDataset(torch.randn(64, 4, generator=g), torch.randint(0, 3, (64,), generator=g))
monitor, guard = GradientMonitor(), NonFiniteGuard("skip")
amp = {"precision": "bf16-mixed"} if sys.argv[2] == "bf16-mixed" else {
    "plugins": [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=1024.0))]}
trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", **amp, max_epochs=1,
                    accumulate_grad_batches=2, gradient_clip_val=0.5, callbacks=[monitor, guard, Check()],
                    logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, default_root_dir=sys.argv[1])
trainer.fit(Toy(), DataLoader(data, batch_size=4))
"""


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_a_non_finite_step_is_skipped_on_every_rank(tmp_path, run_script, precision: str) -> None:
    out = run_script(SKIP_IN_SYNC, tmp_path, precision, env={"PYTHONWARNINGS": "ignore"}).stdout
    # 8 batches per rank, 2 per optimizer step: 4 steps, the one with rank 1's NaN skipped on both ranks:
    # by NonFiniteGuard under bf16, by the grad scaler under fp16 (which halves its scale on both ranks)
    if precision == "bf16-mixed":
        expected = "skipped [1.0, 1.0] by scaler [0.0, 0.0] scale [0.0, 0.0]"
    else:
        expected = "skipped [0.0, 0.0] by scaler [1.0, 1.0] scale [512.0, 512.0]"
    assert f"finite True same True {expected} steps 4" in out, out
