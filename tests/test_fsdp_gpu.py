"""TransformerFSDP executed on one CUDA GPU (marker ``gpu``; skipped where there is none).

torch 2.15's FSDP refuses CPU devices, so ``tests/test_strategies.py`` checks on CPU every decision made
before torch wraps the model, and these tests run the wrapped model: on a GPU machine,
``python -m pytest -m gpu``. Each fits a tiny model of a family (and an adapter) with one FSDP unit per
block, activation checkpointing and ``bf16-mixed``, checks the units and the wrappers while it trains,
that the loss falls, and that the checkpoint reloads on CPU to the weights FSDP trained.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import peft
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from lightning_recipes import CausalLM, TextClassifier
from lightning_recipes.strategies import TransformerFSDP

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

BERT = {"model_type": "bert", "vocab_size": 32, "hidden_size": 16, "num_hidden_layers": 2,
        "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 32,
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}  # fmt: skip
GPT2 = {"n_layer": 2, "n_embd": 16, "n_head": 2, "n_positions": 16, "vocab_size": 64,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}  # fmt: skip


def rows(labels: bool) -> DataLoader:
    """Eight fixed sequences, batches of 4: a model memorises them, so its training loss falls."""
    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(8):
        ids = torch.randint(5, 32, (12,), generator=g)
        item = {"input_ids": ids, "attention_mask": torch.ones(12, dtype=torch.long)}
        if labels:
            item["labels"] = torch.tensor(i % 2)
        items.append(item)
    return DataLoader(items, batch_size=4)


class Wrapped(L.Callback):
    """Counts, during training, the FSDP units and activation-checkpoint wrappers; records the losses."""

    def __init__(self) -> None:
        self.units = self.checkpointed = 0
        self.losses: list[float] = []

    def on_train_start(self, trainer, pl_module):
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
        from torch.distributed.fsdp import FullyShardedDataParallel

        self.units = sum(isinstance(m, FullyShardedDataParallel) for m in trainer.strategy.model.modules())
        self.checkpointed = sum(isinstance(m, CheckpointWrapper) for m in trainer.strategy.model.modules())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def fit(model: L.LightningModule, loader: DataLoader, tmp_path: Path) -> tuple[Wrapped, Path]:
    seen = Wrapped()
    trainer = L.Trainer(
        accelerator="gpu",
        devices=1,
        strategy=TransformerFSDP(activation_checkpointing=True),
        precision="bf16-mixed",
        max_epochs=15,
        callbacks=[seen, ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, loader)
    return seen, tmp_path / "ckpt" / "last.ckpt"


@torch.no_grad()
def mean_loss(model: L.LightningModule, loader: DataLoader) -> float:
    """The model's loss on ``loader`` on CPU in float32 (no dropout in these configs)."""
    model = model.cpu().float().eval()
    losses = []
    for batch in loader:
        if isinstance(model, CausalLM):
            total, count = model.token_nll(batch)
            losses.append(float(total / count))
        else:
            losses.append(float(model.loss(*model.logits_and_target(batch))))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("family", ["text", "lm"])
def test_fsdp_fits_every_layer_of_each_family_and_the_checkpoint_reloads(tmp_path, family: str) -> None:
    torch.manual_seed(0)
    if family == "text":
        model = TextClassifier("bert", pretrained=False, config=BERT, num_classes=2, lr=3e-3)
        loader = rows(True)
    else:
        model, loader = CausalLM(config=GPT2, lr=1e-2), rows(False)
    seen, last = fit(model, loader, tmp_path)
    assert seen.units == 1 + 2 and seen.checkpointed == 2  # the root and one unit per block, each recomputed
    assert all(torch.isfinite(torch.tensor(seen.losses))) and seen.losses[-1] < 0.7 * seen.losses[0]
    # the checkpoint holds what FSDP trained: its loss is the end-of-fit loss, far below the start
    reloaded = mean_loss(type(model).load_from_checkpoint(last, map_location="cpu"), loader)
    assert reloaded < 0.7 * seen.losses[0] and reloaded == pytest.approx(seen.losses[-1], abs=0.25)


def test_fsdp_trains_a_lora_adapter_only_and_its_small_checkpoint_reloads(tmp_path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(**GPT2)).save_pretrained(tmp_path / "gpt2")
    model = CausalLM(model_name_or_path=str(tmp_path / "gpt2"), lr=1e-2, adapter=peft.LoraConfig(r=4))
    base_loss = mean_loss(CausalLM(model_name_or_path=str(tmp_path / "gpt2")), rows(False))
    seen, last = fit(model, rows(False), tmp_path)
    assert seen.units == 1 + 2 and seen.checkpointed == 2
    stored = torch.load(last, weights_only=False)["state_dict"]
    assert stored and all("lora_" in k for k in stored)  # trainable-only: the adapter, not the base
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in stored.items())  # B starts at 0: trained
    reloaded = CausalLM.load_from_checkpoint(last, map_location="cpu")  # the base from tmp_path/gpt2
    assert mean_loss(reloaded, rows(False)) < base_loss - 0.05
