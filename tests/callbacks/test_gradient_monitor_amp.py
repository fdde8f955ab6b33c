"""Mixed precision, gradient accumulation, gradient checkpointing, clipping and GradientMonitor together.

CPU: ``bf16-mixed`` runs here. ``16-mixed`` (fp16 with the grad scaler) needs CUDA: on CPU Lightning
2.6 turns it into ``bf16-mixed`` (tested below), so the scaler path runs only on a GPU (docs/multi_gpu.md).
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from test_gradient_monitor import NormLog, PostClip
from torch.utils.data import DataLoader

from lightning_recipes import TextClassifier
from lightning_recipes.callbacks import GradientMonitor

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


SKIP_IN_SYNC = r"""
import lightning as L, torch, torch.nn.functional as F, sys
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from lightning_recipes.callbacks import GradientMonitor


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
        skipped = trainer.strategy.all_gather(torch.tensor(float(monitor.skipped_steps)))
        if trainer.is_global_zero:
            print("finite", bool(torch.isfinite(every).all()), "same", bool(torch.equal(every[0], every[1])),
                  "skipped", skipped.tolist(), "steps", trainer.global_step, flush=True)


g = torch.Generator().manual_seed(0)
data = TensorDataset(torch.randn(64, 4, generator=g), torch.randint(0, 3, (64,), generator=g))
monitor = GradientMonitor(skip_non_finite=True)
trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", precision="bf16-mixed", max_epochs=1,
                    accumulate_grad_batches=2, gradient_clip_val=0.5, callbacks=[monitor, Check()],
                    logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, default_root_dir=sys.argv[1])
trainer.fit(Toy(), DataLoader(data, batch_size=4))
"""


@pytest.mark.slow
def test_a_non_finite_step_is_skipped_on_every_rank(tmp_path, run_script) -> None:
    out = run_script(SKIP_IN_SYNC, tmp_path, env={"PYTHONWARNINGS": "ignore"}).stdout
    # 8 batches per rank, 2 per optimizer step: 4 steps, the one with rank 1's NaN skipped on both ranks
    assert "finite True same True skipped [1.0, 1.0] steps 4" in out, out
