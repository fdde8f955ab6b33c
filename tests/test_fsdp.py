"""TransformerFSDP fits on one CPU process (gloo) and, with marker ``gpu``, on one CUDA GPU.

Each fits a tiny model of a family (and a LoRA adapter) with one FSDP unit per block, activation
checkpointing and ``bf16-mixed``, checks the units and the wrappers while it trains, that the loss
falls, and that the checkpoint reloads on CPU to the weights FSDP trained. Two processes (sharded
for real) run in ``tests/recipes/test_fsdp_recipes.py`` (slow). The GPU cases: ``python -m pytest -m gpu``.
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

pytestmark = pytest.mark.usefixtures("in_process_group")
DEVICES = [
    "cpu",
    pytest.param(
        "gpu",
        marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")],
    ),
]

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


def trainer(tmp_path: Path, device: str, precision: str = "bf16-mixed", **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator=device,
        devices=1,
        strategy=TransformerFSDP(activation_checkpointing=True),
        precision=precision,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **kwargs,
    )


def fit(model, loader, tmp_path: Path, device: str, precision: str = "bf16-mixed") -> tuple[Wrapped, Path]:
    seen = Wrapped()
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    run = trainer(
        tmp_path, device, precision, max_epochs=15, callbacks=[seen, checkpoints], gradient_clip_val=5.0
    )
    run.fit(model, loader)  # norm clipping under FSDP: FSDP's own clip_grad_norm_ (Lightning's refuses FSDP)
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


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family", ["text", "lm"])
def test_fsdp_fits_every_layer_of_each_family_and_the_checkpoint_reloads(tmp_path, family, device) -> None:
    torch.manual_seed(0)
    if family == "text":
        model = TextClassifier("bert", pretrained=False, config=BERT, num_classes=2, lr=3e-3)
        loader = rows(True)
    else:
        model, loader = CausalLM(config=GPT2, lr=1e-2), rows(False)
    seen, last = fit(model, loader, tmp_path, device)
    assert seen.units == 1 + 2 and seen.checkpointed == 2  # the root and one unit per block, each recomputed
    assert all(torch.isfinite(torch.tensor(seen.losses))) and seen.losses[-1] < 0.7 * seen.losses[0]
    # the checkpoint holds what FSDP trained: its loss is the end-of-fit loss, far below the start
    reloaded = mean_loss(type(model).load_from_checkpoint(last, map_location="cpu"), loader)
    assert reloaded < 0.7 * seen.losses[0] and reloaded == pytest.approx(seen.losses[-1], abs=0.25)


GPU = DEVICES[1]


@pytest.mark.parametrize("device", [GPU])
def test_fsdp_trains_a_lora_adapter_only_and_its_small_checkpoint_reloads(tmp_path, device) -> None:
    """GPT-2 ties its (frozen) embeddings to the LM head: under FSDP that needs bf16-mixed, so a GPU."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(**GPT2)).save_pretrained(tmp_path / "gpt2")
    model = CausalLM(model_name_or_path=str(tmp_path / "gpt2"), lr=1e-2, adapter=peft.LoraConfig(r=4))
    base_loss = mean_loss(CausalLM(model_name_or_path=str(tmp_path / "gpt2")), rows(False))
    seen, last = fit(model, rows(False), tmp_path, device)
    assert seen.units == 1 + 2 and seen.checkpointed == 2
    stored = torch.load(last, weights_only=False)["state_dict"]
    assert stored and all("lora_" in k for k in stored)  # trainable-only: the adapter, not the base
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in stored.items())  # B starts at 0: trained
    reloaded = CausalLM.load_from_checkpoint(last, map_location="cpu")  # the base from tmp_path/gpt2
    assert mean_loss(reloaded, rows(False)) < base_loss - 0.05


def test_frozen_tied_weights_in_float32_are_refused_saying_what_to_use(tmp_path) -> None:
    lm = CausalLM(config=GPT2, adapter=peft.LoraConfig(r=2))
    with pytest.raises(
        ValueError, match=r"frozen tied weights \(backbone.*wte.weight.*bf16-mixed on GPUs, or .*ddp"
    ):
        trainer(tmp_path, "cpu", "32-true", max_epochs=1).fit(lm, rows(False))


def adapter_precision(device: str) -> str:
    return "32-true" if device == "cpu" else "bf16-mixed"  # CPU: mixed precision with frozen weights refused


def bert_with_lora(tmp_path: Path) -> TextClassifier:
    from transformers import BertConfig, BertModel

    if not (tmp_path / "bert").exists():
        torch.manual_seed(0)
        BertModel(BertConfig(**{k: v for k, v in BERT.items() if k != "model_type"})).save_pretrained(
            tmp_path / "bert"
        )
    return TextClassifier(str(tmp_path / "bert"), num_classes=2, lr=3e-3, adapter=peft.LoraConfig(r=2))


@pytest.mark.parametrize("device", DEVICES)
def test_a_trainable_only_checkpoint_loads_under_fsdp_and_is_checked_against_its_base(
    tmp_path, device
) -> None:
    """FSDP loads full state dicts only: the frozen weights come from the rebuilt base, checked."""
    model = bert_with_lora(tmp_path)
    seen, last = fit(model, rows(True), tmp_path, device, adapter_precision(device))
    expected = mean_loss(TextClassifier.load_from_checkpoint(last, map_location="cpu"), rows(True))
    assert expected < seen.losses[0]
    fresh = bert_with_lora(tmp_path)  # LoRA B = 0: the base's loss until the checkpoint loads
    run = trainer(tmp_path, device, adapter_precision(device))
    (metrics,) = run.validate(fresh, rows(True), ckpt_path=last)
    assert metrics["val/loss"] == pytest.approx(expected, abs=0.02)

    other = bert_with_lora(tmp_path)
    with torch.no_grad():
        other.backbone.embeddings.word_embeddings.weight.add_(0.01)  # another base
    run = trainer(tmp_path, device, adapter_precision(device))
    with pytest.raises(ValueError, match="frozen ones come from its base .* not those the checkpoint"):
        run.validate(other, rows(True), ckpt_path=last)


def test_on_cpu_mixed_precision_with_frozen_weights_is_refused_saying_what_to_use(tmp_path) -> None:
    with pytest.raises(
        ValueError, match=r"precision='bf16-mixed' and frozen weights.*--trainer.precision=32-true"
    ):
        trainer(tmp_path, "cpu", "bf16-mixed", max_epochs=1).fit(bert_with_lora(tmp_path), rows(True))
