"""Add-layers on CausalLM (lightning_recipes/modules/_top_blocks.py): new blocks outside the frozen body."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from lightning_recipes import CausalLM
from lightning_recipes.callbacks import FreezeUnfreeze
from lightning_recipes.data.bpe import train_bpe_tokenizer
from lightning_recipes.modules._top_blocks import BodyView, identity_copy

TINY = {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 64, "vocab_size": 300}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory, write_corpus) -> Path:
    root = tmp_path_factory.mktemp("top_blocks")
    tokenizer = train_bpe_tokenizer([write_corpus(root / "corpus.txt")], vocab_size=300)
    torch.manual_seed(0)
    lm = CausalLM(config={**TINY, "bos_token_id": 0, "eos_token_id": 0})
    lm.set_tokenizer(tokenizer)
    return lm.save_pretrained(root / "model")


def ids() -> torch.Tensor:
    return torch.randint(1, 300, (2, 12), generator=torch.Generator().manual_seed(0))


def test_new_blocks_start_as_the_identity_and_sit_outside_the_backbone(pretrained: Path) -> None:
    base = CausalLM(model_name_or_path=str(pretrained)).eval()
    lm = CausalLM(model_name_or_path=str(pretrained), new_top_blocks=2).eval()
    with torch.no_grad():
        assert torch.allclose(lm(ids()), base(ids()), atol=1e-5)  # step 0 is the pretrained model
    assert lm.model.config.n_layer == 4 and len(lm.model.transformer.h) == 4
    assert isinstance(lm.backbone, BodyView) and len(lm.backbone.h) == 2
    assert [b.attn.layer_idx for b in lm.head.blocks] == [2, 3]  # their own KV-cache slots
    assert lm.head.lm_head.weight is not lm.model.transformer.wte.weight  # untied, a copy
    assert torch.equal(lm.head.lm_head.weight, lm.model.transformer.wte.weight)
    names = {g["name"]: {id(p) for p in g["params"]} for g in lm.param_groups()}
    assert names["head"] == {id(p) for p in lm.head.parameters()}
    assert names["backbone"] == {id(p) for p in lm.backbone.parameters()}
    assert not names["head"] & names["backbone"]
    assert {id(p) for p in lm.model.parameters()} == names["head"] | names["backbone"]  # each weight once
    assert len(lm.layer_groups()) == 3  # embeddings, block 0, block 1 + ln_f: the new blocks are not in it
    lm.train()
    assert lm.model.transformer.training and lm.model.training
    (text,) = lm.generate("the king", max_new_tokens=4)
    (reference,) = base.generate("the king", max_new_tokens=4)
    assert text == reference


def test_freeze_unfreeze_trains_the_new_blocks_then_the_body_and_checkpoints_reload(
    pretrained: Path, tiny_trainer_kwargs, tmp_path: Path
) -> None:
    lm = CausalLM(model_name_or_path=str(pretrained), new_top_blocks=1, lr=1e-2)
    body = {k: v.clone() for k, v in lm.backbone.state_dict().items()}
    new = {k: v.clone() for k, v in lm.head.state_dict().items()}
    batches = DataLoader([{"input_ids": row} for row in torch.randint(1, 300, (8, 12))], batch_size=4)
    kwargs = {**tiny_trainer_kwargs, "limit_val_batches": 0, "max_epochs": 1}
    trainer = L.Trainer(**kwargs, callbacks=[FreezeUnfreeze(unfreeze_at_epoch=1)])
    trainer.fit(lm, batches)
    assert all(torch.equal(v, lm.backbone.state_dict()[k]) for k, v in body.items())  # frozen in epoch 0
    assert not all(torch.equal(v, lm.head.state_dict()[k]) for k, v in new.items())
    assert not any(p.requires_grad for p in lm.backbone.parameters())
    trainer = L.Trainer(**{**kwargs, "max_epochs": 2}, callbacks=[FreezeUnfreeze(unfreeze_at_epoch=1)])
    trainer.fit(lm, batches)
    assert all(p.requires_grad for p in lm.backbone.parameters())
    assert not all(torch.equal(v, lm.backbone.state_dict()[k]) for k, v in body.items())
    assert [g["name"] for g in trainer.optimizers[0].param_groups] == ["head", "backbone"]

    trainer.save_checkpoint(tmp_path / "x.ckpt")
    again = CausalLM.load_from_checkpoint(tmp_path / "x.ckpt").eval()
    assert again.hparams.new_top_blocks == 1 and again.model.config.n_layer == 3
    with torch.no_grad():
        assert torch.equal(again(ids()), lm.eval()(ids()))
    exported = again.save_pretrained(tmp_path / "export")  # a plain 3-layer GPT-2 with an untied head
    plain = CausalLM(model_name_or_path=str(exported)).eval()
    assert plain.model.config.n_layer == 3 and not plain.model.config.tie_word_embeddings
    with torch.no_grad():
        assert torch.allclose(plain(ids()), again(ids()), atol=1e-5)


def test_bad_counts_and_unknown_blocks_are_named(pretrained: Path) -> None:
    with pytest.raises(ValueError, match="new_top_blocks must be >= 0 .* got -1"):
        CausalLM(model_name_or_path=str(pretrained), new_top_blocks=-1)
    block = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    with pytest.raises(ValueError, match="cannot find the attention and MLP output projections of Sequent"):
        identity_copy(block, layer_idx=1)
