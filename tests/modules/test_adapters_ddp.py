"""Adapters under DDP (slow: two CPU processes, gloo): adapter and head weights stay equal on every rank."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import peft
import pytest
import torch
from spawned_ddp import SpawnedDDP
from torch.utils.data import DataLoader, Dataset

from lightning_recipes import TextClassifier


class Sentences(Dataset):
    """16 random token sequences with labels: under DDP each rank trains on its own 8."""

    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(i)
        return {"input_ids": torch.randint(5, 50, (6,), generator=generator), "labels": torch.tensor(i % 3)}


class SaveTrainable(L.Callback):
    """Each rank writes its trainable weights after training."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        weights = {n: p.detach().clone() for n, p in pl_module.named_parameters() if p.requires_grad}
        torch.save(weights, self.folder / f"rank{trainer.global_rank}.pt")


@pytest.mark.slow
def test_adapter_and_head_weights_are_bitwise_equal_across_ranks(tmp_path) -> None:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
    )
    BertModel(config).save_pretrained(tmp_path / "bert")
    model = TextClassifier(str(tmp_path / "bert"), num_classes=3, lr=1e-2, adapter=peft.LoraConfig(r=4))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=SpawnedDDP(),
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[SaveTrainable(tmp_path)],
        default_root_dir=str(tmp_path),
    )
    trainer.fit(model, DataLoader(Sentences(), batch_size=4))
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert set(rank0) == set(before) and any("lora_B" in n for n in rank0)
    assert any(n.startswith("head.") for n in rank0)
    assert all(torch.equal(rank0[n], rank1[n]) for n in rank0)
    assert all(not torch.equal(rank0[n], before[n]) for n in rank0 if "lora_B" in n or n.startswith("head."))
