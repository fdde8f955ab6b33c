"""Adapters on the real pretrained weights in ../shared (slow): checkpoint size and merged exports."""

from __future__ import annotations

import lightning as L
import peft
import pytest
import torch
from torch.utils.data import DataLoader

from lightning_recipes import ImageClassifier, TextClassifier


def fit_and_save(model: L.LightningModule, batches: list, path) -> int:
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=path.parent,
    )
    trainer.fit(model, DataLoader(batches, batch_size=None))
    trainer.save_checkpoint(path)
    return path.stat().st_size


@pytest.mark.slow
def test_minilm_lora_checkpoint_is_under_5_percent_of_full_and_reloads(shared_dir, tmp_path) -> None:
    minilm = str(shared_dir / "models/all-MiniLM-L6-v2")
    batch = {"input_ids": torch.randint(1000, 5000, (4, 12)), "labels": torch.tensor([0, 1, 0, 1])}
    names = {"num_classes": 2, "label_names": ["negative", "positive"], "pooling": "mean"}
    full = fit_and_save(TextClassifier(minilm, **names), [batch], tmp_path / "full.ckpt")
    lora = TextClassifier(minilm, **names, lr=1e-3, adapter=peft.LoraConfig(r=8))
    small = fit_and_save(lora, [batch], tmp_path / "lora.ckpt")
    assert small < 0.05 * full
    loaded = TextClassifier.load_from_checkpoint(tmp_path / "lora.ckpt").eval()
    with torch.no_grad():
        assert torch.equal(loaded(batch), lora.eval()(batch))
    assert loaded.predict_texts(["a fine film"])[0]["label"] in ("negative", "positive")  # tokenizer restored


@pytest.mark.slow
def test_efficientnet_lite0_lora_merges_into_a_timm_folder(shared_dir, tmp_path) -> None:
    import timm

    model = ImageClassifier(f"local-dir:{shared_dir / 'models/efficientnet_lite0'}", num_classes=4,
                            adapter=peft.LoraConfig(r=8, lora_alpha=16))  # fmt: skip
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    images = torch.randn(2, 3, 96, 96)
    expected = model.eval()(images)
    exported = timm.create_model(f"local-dir:{model.save_pretrained(tmp_path / 'merged', merge=True)}",
                                 pretrained=True).eval()  # fmt: skip
    assert exported.num_classes == 4
    with torch.no_grad():
        assert torch.allclose(exported(images), expected, atol=1e-4)
