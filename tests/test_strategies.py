"""TransformerFSDP: the policies it builds from the recipe's model, and the refusals.

FSDP training itself (one CPU process here, two in the slow ``tests/recipes/test_fsdp_recipes.py``) is in
``tests/test_fsdp.py``.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn

from lightning_recipes import CausalLM, ImageClassifier, TextClassifier
from lightning_recipes.callbacks import FreezeUnfreeze, LRFinder
from lightning_recipes.strategies import TransformerFSDP, transformer_block_classes

BERT = {"model_type": "bert", "vocab_size": 32, "hidden_size": 16, "num_hidden_layers": 2,
        "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 32}  # fmt: skip
GPT2 = {"n_layer": 2, "n_embd": 16, "n_head": 2, "n_positions": 16, "vocab_size": 64}


def tiny_bert() -> TextClassifier:
    return TextClassifier("bert", pretrained=False, config=BERT, num_classes=2)


def test_block_classes_of_each_family() -> None:
    assert {c.__name__ for c in transformer_block_classes(tiny_bert())} == {"BertLayer"}
    assert {c.__name__ for c in transformer_block_classes(CausalLM(config=GPT2))} == {"GPT2Block"}
    image = ImageClassifier("test_resnet", num_classes=2, pretrained=False)
    with pytest.raises(ValueError, match="ImageClassifier has none .* use --trainer.strategy=ddp"):
        transformer_block_classes(image)


def test_adapter_models_wrap_the_blocks_of_the_adapted_backbone() -> None:
    import peft

    text = TextClassifier("bert", pretrained=False, config=BERT, num_classes=2, adapter=peft.LoraConfig(r=2))
    lm = CausalLM(config=GPT2, adapter=peft.LoraConfig(r=2))
    for model, block in ((text, "BertLayer"), (lm, "GPT2Block")):
        strategy = TransformerFSDP()
        assert {c.__name__ for c in strategy.configure_policies(model)} == {block}
        assert strategy.kwargs["use_orig_params"] is True  # Lightning's default: frozen + LoRA in one model
        policy = strategy.kwargs["auto_wrap_policy"]
        units = [m for m in model.modules() if policy(module=m, recurse=False, nonwrapped_numel=0)]
        assert len(units) == 2 and all(any("lora_" in n for n, _ in u.named_parameters()) for u in units)
    with pytest.raises(ValueError, match=r"use_orig_params=False\) with frozen parameters .* Remove"):
        TransformerFSDP(use_orig_params=False).configure_policies(lm)
    TransformerFSDP(use_orig_params=False).configure_policies(CausalLM(config=GPT2))  # all trainable: fine


def test_policies_wrap_and_checkpoint_every_block() -> None:
    """The wrap policy FSDP gets makes one unit per block; activation checkpointing wraps each block."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointWrapper,
        apply_activation_checkpointing,
    )

    model = CausalLM(config=GPT2)
    strategy = TransformerFSDP(activation_checkpointing=True)
    strategy.configure_policies(model)
    policy = strategy.kwargs["auto_wrap_policy"]
    targets = [m for m in model.modules() if policy(module=m, recurse=False, nonwrapped_numel=0)]
    assert [type(m).__name__ for m in targets] == ["GPT2Block", "GPT2Block"]  # an FSDP unit per block
    apply_activation_checkpointing(model, **strategy._activation_checkpointing_kwargs)
    wrapped = [m for m in model.modules() if isinstance(m, CheckpointWrapper)]
    assert [type(m._checkpoint_wrapped_module).__name__ for m in wrapped] == ["GPT2Block", "GPT2Block"]
    assert TransformerFSDP()._activation_checkpointing_kwargs == {}  # off by default


def test_a_policy_of_ones_own_is_kept() -> None:
    mine = {nn.Linear}
    strategy = TransformerFSDP(auto_wrap_policy=mine)
    kept = strategy.kwargs["auto_wrap_policy"]
    strategy.configure_policies(tiny_bert())
    assert strategy.kwargs["auto_wrap_policy"] is kept


def fsdp_trainer(tmp_path, **kwargs) -> L.Trainer:
    strategy = TransformerFSDP()
    return L.Trainer(accelerator="cpu", strategy=strategy, logger=False, default_root_dir=tmp_path, **kwargs)


def test_mixed_precision_follows_the_trainer_precision(tmp_path) -> None:
    trainer = fsdp_trainer(tmp_path, precision="bf16-mixed")
    config = trainer.strategy.mixed_precision_config
    assert (config.param_dtype, config.reduce_dtype, config.buffer_dtype) == (torch.bfloat16,) * 3


@pytest.mark.parametrize(
    ("callback", "message"),
    [
        (FreezeUnfreeze(), r"not TransformerFSDP: .* Use --trainer.strategy=ddp"),
        (LRFinder(), r"LRFinder does not run under TransformerFSDP.*set --model.init_args.lr"),
    ],
)
def test_freezing_and_lr_sweeps_refuse_fsdp_saying_what_to_do(tmp_path, callback, message) -> None:
    trainer = fsdp_trainer(tmp_path)
    with pytest.raises(NotImplementedError, match=message):
        callback.setup(trainer, tiny_bert(), "fit")
    callback.setup(trainer, tiny_bert(), "validate")  # only fit is refused
