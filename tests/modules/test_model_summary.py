"""Lightning's model summary of each family runs an example input: real FLOPs and layer shapes, not a
column of zeros (#24's noise)."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.utilities.model_summary import summarize
from tiny_text_models import make_model

from lightning_recipes import CausalLM, ImageClassifier, TextClassifier

GPT2 = {"model_type": "gpt2", "n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 64, "vocab_size": 300}


def test_each_family_has_an_example_input_with_flops_and_shapes(tmp_path: Path) -> None:
    image = ImageClassifier("test_resnet", num_classes=2, pretrained=False)
    assert image.example_input_array.shape == (1, *image.data_config["input_size"])
    summary = summarize(image)
    assert summary.total_flops > 0 and summary.in_sizes[summary.layer_names.index("backbone")] == [
        1,
        3,
        160,
        160,
    ]
    assert summary.out_sizes[summary.layer_names.index("head")] == [1, 2]

    text = TextClassifier(str(make_model(tmp_path / "bert")), num_classes=2)
    (inputs,) = text.example_input_array
    assert set(inputs) == {"input_ids", "attention_mask", "token_type_ids"} and inputs["input_ids"].shape == (
        1,
        64,
    )
    assert summarize(text).total_flops > 0  # 64: the tiny BERT's max_position_embeddings, under 128

    lm = CausalLM(config=GPT2)
    assert lm.example_input_array["input_ids"].shape == (1, 64) and summarize(lm).total_flops > 0
    assert lm(**lm.example_input_array).shape == (1, 64, 300)
    assert torch.equal(lm.example_input_array["input_ids"], torch.zeros(1, 64, dtype=torch.long))


def test_no_example_under_a_sharding_strategy() -> None:
    """FSDP wraps the layers: a forward pass outside the training loop would run them without their root."""
    import lightning as L

    from lightning_recipes.strategies import TransformerFSDP  # Lightning's FSDPStrategy, also on CPU

    lm = CausalLM(config=GPT2)
    lm.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False)
    assert lm.example_input_array is not None
    lm.trainer = L.Trainer(accelerator="cpu", devices=1, strategy=TransformerFSDP(), logger=False)
    assert lm.example_input_array is None


def test_the_lm_example_carries_its_attention_mask(monkeypatch) -> None:
    """Token 0 is the padding token of the library's BPE tokenizers (and the zoo GPT-2): without a mask,
    the summary's forward pass made transformers warn about padded input at the start of every fit."""
    from transformers import PreTrainedModel

    seen = []
    monkeypatch.setattr(
        PreTrainedModel,
        "warn_if_padding_and_no_attention_mask",
        lambda self, ids, mask: seen.append(mask is None and self.config.pad_token_id in ids[:, [-1, 0]]),
    )
    lm = CausalLM(config={**GPT2, "pad_token_id": 0})
    assert summarize(lm).total_flops > 0
    assert seen == [False]  # asked once, and the mask was there
    lm(input_ids=torch.zeros(1, 8, dtype=torch.long))
    assert seen[-1] is True  # the check itself sees padding without a mask
