"""CausalLM (lightning_recipes/modules/causal_lm.py) with tiny GPT-2 configs and a tokenizer trained here."""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from spawned_ddp import SpawnedDDP
from torch.utils.data import DataLoader, Dataset

from lightning_recipes import CausalLM, TextCorpusDataModule, connect
from lightning_recipes._hub import PretrainedLoadError
from lightning_recipes.callbacks import PredictionWriter
from lightning_recipes.data.bpe import train_bpe_tokenizer

TINY = {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 64, "vocab_size": 300}


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory, write_corpus) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lm")
    text = write_corpus(root / "corpus.txt")
    train_bpe_tokenizer([text], vocab_size=300, output_dir=root / "tok")
    return {"text": text, "tokenizer": root / "tok"}


def tiny_lm(assets: dict[str, Path], **kwargs) -> CausalLM:
    torch.manual_seed(0)
    return CausalLM(config={**TINY, **kwargs.pop("config", {})}, tokenizer=str(assets["tokenizer"]), **kwargs)


def greedy_ids(lm: CausalLM, prompt: str, steps: int) -> list[int]:
    """Reference greedy decoding: argmax of the full forward pass, one token at a time."""
    ids = lm.tokenizer(prompt)["input_ids"]
    new: list[int] = []
    lm.eval()
    with torch.no_grad():
        for _ in range(steps):
            new.append(int(lm(torch.tensor([ids + new]))[0, -1].argmax()))
    return new


def test_param_groups_list_a_tied_lm_head_once_in_the_backbone(assets) -> None:
    lm = tiny_lm(assets)
    assert lm.head.weight is lm.backbone.wte.weight  # GPT-2 ties lm_head to the token embeddings
    groups = lm.param_groups()
    assert [g["name"] for g in groups] == ["backbone"]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(lm.model.parameters()))

    untied = tiny_lm(assets, config={"tie_word_embeddings": False}, lr=1e-3, backbone_lr=1e-4)
    groups = {g["name"]: g for g in untied.param_groups()}
    assert [p is untied.model.lm_head.weight for p in groups["head"]["params"]] == [True]
    assert (groups["head"]["lr"], groups["backbone"]["lr"]) == (1e-3, 1e-4)

    for p in lm.backbone.parameters():  # freezing the backbone freezes the tied output projection too
        p.requires_grad_(False)
    assert lm.param_groups() == [] and not lm.head.weight.requires_grad
    with pytest.raises(ValueError, match="tied to its input embeddings.*tie_word_embeddings: false"):
        lm.configure_optimizers()


def test_layer_groups_run_from_embeddings_to_last_block(assets) -> None:
    lm = tiny_lm(assets)
    groups = lm.layer_groups()
    assert len(groups) == 2 + 1
    body = lm.backbone
    assert [m for m in groups[0]] == [body.wte, body.wpe, body.drop]
    assert groups[1] is body.h[0]
    assert [m for m in groups[2]] == [body.h[1], body.ln_f]
    params = [id(p) for g in groups for p in g.parameters()]
    assert sorted(params) == sorted(id(p) for p in body.parameters())  # all of them, each once
    # backbone and head are the registered parts; the whole model is not registered a second time
    assert {k.split(".")[0] for k in lm.state_dict()} == {"backbone", "head"}
    assert lm.state_dict()["head.weight"].data_ptr() == lm.state_dict()["backbone.wte.weight"].data_ptr()


def test_val_perplexity_is_exp_of_the_token_weighted_mean_loss(assets, tiny_trainer_kwargs) -> None:
    lm = tiny_lm(assets)
    torch.manual_seed(1)
    ids = torch.randint(0, 300, (2, 12))
    short = torch.ones(1, 12, dtype=torch.long)
    short[0, 4:] = 0  # second batch: 3 predicted tokens of 11 in its only row
    batches = [{"input_ids": ids}, {"input_ids": ids[:1], "attention_mask": short}]
    lm.eval()  # no dropout, as in validation
    with torch.no_grad():
        sums = [lm.token_nll(b) for b in batches]
    total, count = sum(float(t) for t, _ in sums), sum(int(c) for _, c in sums)
    assert count == 2 * 11 + 3
    trainer = L.Trainer(**tiny_trainer_kwargs)
    (metrics,) = trainer.validate(lm, dataloaders=DataLoader(batches, batch_size=None), verbose=False)
    assert metrics["val/loss"] == pytest.approx(total / count, rel=1e-5)
    assert metrics["val/ppl"] == pytest.approx(math.exp(total / count), rel=1e-5)
    # an average of per-batch losses would differ: the batches hold different numbers of tokens
    per_batch = [float(t) / int(c) for t, c in sums]
    assert abs(sum(per_batch) / 2 - total / count) > 1e-4
    # the metric is reset after each epoch: validating again, or in fit, starts from zero
    (again,) = trainer.validate(lm, dataloaders=DataLoader(batches, batch_size=None), verbose=False)
    assert again["val/ppl"] == pytest.approx(metrics["val/ppl"], rel=1e-6)
    lm.train()
    fit = L.Trainer(**{**tiny_trainer_kwargs, "max_steps": 1, "num_sanity_val_steps": 0})
    fit.fit(lm, DataLoader(batches[:1], batch_size=None), DataLoader(batches, batch_size=None))
    assert fit.callback_metrics["val/ppl"] != pytest.approx(metrics["val/ppl"], rel=1e-6)  # 1 step changed it


def test_fit_from_scratch_adopts_the_data_tokenizer_and_reloads_identically(
    assets, tmp_path: Path, tiny_trainer_kwargs
) -> None:
    dm = TextCorpusDataModule(
        str(assets["text"]),
        bpe_vocab_size=280,
        tokenizer_dir=str(tmp_path / "tok"),
        block_size=32,
        batch_size=4,
        cache_dir=str(tmp_path / "cache"),
    )
    torch.manual_seed(0)
    lm = CausalLM(config={**TINY, "bos_token_id": 0, "eos_token_id": 0}, lr=1e-3)
    assert lm.tokenizer is None
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = L.Trainer(**{**tiny_trainer_kwargs, "enable_checkpointing": True, "callbacks": [checkpoint]})
    connect(lm, dm)  # the handshake: the data module's BPE tokenizer goes to the model
    trainer.fit(lm, dm)
    assert {"train/loss", "val/loss", "val/ppl"} <= set(trainer.callback_metrics)
    assert lm.tokenizer is dm.tokenizer and len(lm.tokenizer) == 280
    assert lm.model.generation_config.eos_token_id == lm.tokenizer.eos_token_id == 0

    reloaded = CausalLM.load_from_checkpoint(checkpoint.last_model_path)
    assert reloaded.hparams.model_name_or_path is None and reloaded.hparams.tokenizer is None
    text = "the queen said to her lord"
    assert reloaded.tokenizer(text)["input_ids"] == lm.tokenizer(text)["input_ids"]
    ids = torch.tensor([lm.tokenizer(text)["input_ids"]])
    lm.eval(), reloaded.eval()
    with torch.no_grad():
        assert torch.equal(lm(ids), reloaded(ids))


def test_save_pretrained_round_trip_and_offline_checkpoint_of_a_pretrained_model(
    assets, tmp_path: Path, tiny_trainer_kwargs
) -> None:
    lm = tiny_lm(assets)
    folder = lm.save_pretrained(tmp_path / "export")
    assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()
    finetuned = CausalLM(model_name_or_path=str(folder), config={"resid_pdrop": 0.0})
    assert finetuned.model.config.resid_pdrop == 0.0
    assert all(m.training for m in finetuned.modules())  # dropout on, unlike from_pretrained
    assert finetuned.tokenizer is not None and len(finetuned.tokenizer) == 300
    ids = torch.randint(0, 300, (2, 10))
    lm.eval(), finetuned.eval()
    with torch.no_grad():
        assert torch.equal(lm(ids), finetuned(ids))

    trainer = L.Trainer(**{**tiny_trainer_kwargs, "max_steps": 0})
    trainer.strategy.connect(finetuned)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    shutil.rmtree(folder)  # the pretrained folder is gone: the checkpoint alone must do
    reloaded = CausalLM.load_from_checkpoint(tmp_path / "model.ckpt").eval()
    with torch.no_grad():
        assert torch.equal(finetuned(ids), reloaded(ids))
    assert reloaded.model.config.resid_pdrop == 0.0


def test_pretrained_false_builds_the_architecture_with_random_weights(assets, tmp_path: Path) -> None:
    lm = tiny_lm(assets)
    folder = lm.save_pretrained(tmp_path / "export")
    scratch = CausalLM(model_name_or_path=str(folder), pretrained=False, config={"resid_pdrop": 0.0})
    assert scratch.from_scratch and scratch.hparams.pretrained is False
    config, source = scratch.model.config, lm.model.config
    assert (config.n_layer, config.n_embd, config.n_positions) == (source.n_layer, source.n_embd, 64)
    assert config.resid_pdrop == 0.0  # config entries override the architecture's, as when fine-tuning
    assert not torch.equal(scratch.backbone.wte.weight, lm.backbone.wte.weight)  # random, not pretrained
    # as TextClassifier's pretrained=False: no pretrained tokenizer either, unless one is given
    assert scratch.tokenizer is None
    named = CausalLM(model_name_or_path=str(folder), pretrained=False, tokenizer=str(assets["tokenizer"]))
    assert named.from_scratch and len(named.tokenizer) == 300
    assert not CausalLM(model_name_or_path=str(folder)).from_scratch  # pretrained=True: the default


def test_untying_a_pretrained_model_copies_the_embeddings(
    assets, tmp_path: Path, tiny_trainer_kwargs
) -> None:
    tied = tiny_lm(assets)
    folder = tied.save_pretrained(tmp_path / "tied")
    untied = CausalLM(model_name_or_path=str(folder), config={"tie_word_embeddings": False})
    head, wte = untied.model.lm_head.weight, untied.backbone.wte.weight
    assert head is not wte and torch.equal(head, wte)  # pretrained values, not a random init
    assert [g["name"] for g in untied.param_groups()] == ["head", "backbone"]
    ids = torch.randint(0, 300, (2, 10))
    tied.eval(), untied.eval()
    with torch.no_grad():
        assert torch.equal(tied(ids), untied(ids))
        head.add_(1.0)  # now they differ, and stay so through a checkpoint
        trainer = L.Trainer(**{**tiny_trainer_kwargs, "max_steps": 0})
        trainer.strategy.connect(untied)
        trainer.save_checkpoint(tmp_path / "untied.ckpt")
        reloaded = CausalLM.load_from_checkpoint(tmp_path / "untied.ckpt").eval()
        assert reloaded.model.lm_head.weight is not reloaded.backbone.wte.weight
        assert torch.equal(reloaded(ids), untied(ids)) and not torch.equal(reloaded(ids), tied(ids))


def test_unpadded_blocks_are_scored_with_an_all_ones_mask(assets) -> None:
    """A corpus block that starts with EOS (GPT-2's pad token too) gets an explicit all-ones attention
    mask, so transformers has no padding to warn about, and the loss is the unmasked one."""
    lm = tiny_lm(assets, config={"pad_token_id": 0, "eos_token_id": 0}).eval()  # no dropout
    seen, forward = [], lm.model.forward
    lm.model.forward = lambda *args, **kwargs: (
        seen.append(kwargs.get("attention_mask")) or forward(*args, **kwargs)
    )
    ids = torch.tensor([[0, 5, 6, 7, 0], [8, 9, 10, 11, 12]])
    total, count = lm.token_nll({"input_ids": ids})
    assert torch.equal(seen[0], torch.ones_like(ids)) and int(count) == 8
    reference = lm.model(input_ids=ids, use_cache=False).logits[:, :-1]  # the spy sees this call too
    expected = torch.nn.functional.cross_entropy(
        reference.flatten(0, 1), ids[:, 1:].flatten(), reduction="sum"
    )
    assert float(total) == pytest.approx(float(expected), rel=1e-5)
    masked = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    lm.token_nll({"input_ids": ids, "attention_mask": masked})
    assert torch.equal(seen[-1], masked)  # a given mask is passed as it is


def test_generate_greedy_matches_reference_and_honours_length(assets) -> None:
    lm = tiny_lm(assets)
    prompt = "the king said"
    reference = greedy_ids(lm, prompt, 6)
    continuation = lm.tokenizer.decode(reference)
    assert lm.generate(prompt, max_new_tokens=6, eos_token_id=[]) == [prompt + continuation]
    assert lm.generate(prompt, max_new_tokens=6, eos_token_id=[], return_full_text=False) == [continuation]
    # batched prompts of different lengths (left-padded) give what each gives alone
    other = "to my good lord and her queen"
    batched = lm.generate([prompt, other], max_new_tokens=4, eos_token_id=[])
    assert batched == lm.generate(prompt, max_new_tokens=4, eos_token_id=[]) + lm.generate(
        other, max_new_tokens=4, eos_token_id=[]
    )
    lm.train()
    lm.generate(prompt, max_new_tokens=2)
    assert lm.training  # generate evaluates without dropout, then restores the mode


def test_generate_stops_at_the_first_eos(assets) -> None:
    lm = tiny_lm(assets)
    prompt = "the queen"
    reference = greedy_ids(lm, prompt, 8)
    stop_at = next(i for i in range(1, 8) if reference[i] not in reference[:i])
    text = lm.generate(prompt, max_new_tokens=8, eos_token_id=reference[stop_at], return_full_text=False)
    assert text == [lm.tokenizer.decode(reference[:stop_at])]


def test_sampling_is_seeded_and_returns_one_string_per_sequence(assets) -> None:
    lm = tiny_lm(assets)
    kwargs = {"max_new_tokens": 10, "do_sample": True, "temperature": 1.5, "top_k": 50, "top_p": 0.95}
    state = torch.get_rng_state()
    a = lm.generate(["the", "my lord"], num_return_sequences=3, seed=7, **kwargs)
    assert torch.equal(torch.get_rng_state(), state)  # the global random state is untouched
    assert (
        len(a) == 6
        and all(s.startswith("the") for s in a[:3])
        and all(s.startswith("my lord") for s in a[3:])
    )
    assert a == lm.generate(["the", "my lord"], num_return_sequences=3, seed=7, **kwargs)
    assert len(set(a)) > 2
    with pytest.raises(ValueError, match="context length 64"):
        lm.generate("the", max_new_tokens=64)
    with pytest.raises(ValueError, match="temperature > 0"):
        lm.generate("the", do_sample=True, temperature=0.0)


def test_bad_input_names_the_problem(assets, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs model_name_or_path"):
        CausalLM()
    with pytest.raises(ValueError, match="Unknown model_type 'gtp2'.*gpt2"):
        CausalLM(config={"model_type": "gtp2"})
    with pytest.raises(FileNotFoundError, match="no-such-folder"):
        CausalLM(model_name_or_path=str(tmp_path / "no-such-folder"))
    with pytest.raises(PretrainedLoadError, match="'lightning-recipes-test/no-such-model'.*hf download"):
        CausalLM(model_name_or_path="lightning-recipes-test/no-such-model")
    with pytest.raises(ValueError, match="vocab_size is 100.*>= 300"):
        CausalLM(config={**TINY, "vocab_size": 100}, tokenizer=str(assets["tokenizer"]))
    with pytest.raises(ValueError, match="has no tokenizer"):
        CausalLM(config=TINY).generate("the")


def test_gradient_checkpointing_gives_the_same_gradients(assets) -> None:
    batch = {"input_ids": torch.randint(0, 300, (2, 16))}
    grads = []
    for checkpointing in (False, True):
        lm = tiny_lm(assets, config={"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0},
                     gradient_checkpointing=checkpointing)  # fmt: skip
        name = (
            "is_activation_checkpointing"
            if hasattr(lm.model, "is_activation_checkpointing")
            else "is_gradient_checkpointing"
        )
        assert getattr(lm.model, name) is checkpointing
        total, count = lm.token_nll(batch)
        (total / count).backward()
        grads.append(lm.backbone.h[0].mlp.c_fc.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_other_architectures_split_the_same_way(assets) -> None:
    config = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
              "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": 300}  # fmt: skip
    lm = CausalLM(config=config, tokenizer=str(assets["tokenizer"]))
    body = lm.backbone
    groups = lm.layer_groups()
    assert groups[0] is body.embed_tokens  # a group of one module is that module
    assert [groups[1], groups[2]] == [body.layers[0], body.layers[1]]
    assert groups[3][0] is body.layers[2] and body.norm in list(groups[3])
    assert sorted(id(p) for g in groups for p in g.parameters()) == sorted(id(p) for p in body.parameters())
    # untied lm_head: a head group of its own
    assert [(g["name"], len(g["params"])) for g in lm.param_groups()][0] == ("head", 1)
    (text,) = lm.generate("the king", max_new_tokens=3, eos_token_id=[], return_full_text=False)
    assert text == lm.tokenizer.decode(greedy_ids(lm, "the king", 3))


def test_block_size_beyond_the_context_fails_at_setup(assets, tmp_path: Path, tiny_trainer_kwargs) -> None:
    dm = TextCorpusDataModule(
        str(assets["text"]), tokenizer=str(assets["tokenizer"]), block_size=128, cache_dir=str(tmp_path)
    )
    with pytest.raises(ValueError, match="block_size=128 of the data exceeds the model's context length 64"):
        connect(tiny_lm(assets), dm)


def test_freeze_unfreeze_unfreezes_an_untied_model_layer_group_by_group(assets, tiny_trainer_kwargs) -> None:
    from lightning_recipes.callbacks import FreezeUnfreeze

    lm = tiny_lm(assets, config={"tie_word_embeddings": False}, lr=1e-2, layer_decay=0.5)
    callback = FreezeUnfreeze(unfreeze_at_epoch=1, gradual_every=1)
    batches = DataLoader([{"input_ids": torch.randint(0, 300, (2, 8))}] * 2, batch_size=None)
    trainer = L.Trainer(**{**tiny_trainer_kwargs, "max_epochs": 4, "callbacks": [callback]})
    trainer.fit(lm, batches)
    groups = [(g["name"], g["lr"], len(g["params"])) for g in trainer.optimizers[0].param_groups]
    # top block + ln_f first (12 + 2 tensors), then block 0, then the embeddings wte + wpe
    assert groups == [
        ("head", 1e-2, 1),
        ("backbone.2", 1e-3, 14),
        ("backbone.1", 5e-4, 12),
        ("backbone.0", 2.5e-4, 2),
    ]


def test_predict_continues_each_prompt_of_the_predict_file(
    assets, tmp_path: Path, tiny_trainer_kwargs
) -> None:
    prompts = ["the king said", "", "to my good lord, and her queen"]  # an empty line, a comma
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    lm = tiny_lm(assets, generation={"max_new_tokens": 4, "eos_token_id": []})
    dm = TextCorpusDataModule(
        predict_file=str(tmp_path / "prompts.txt"), batch_size=2, cache_dir=str(tmp_path)
    )
    connect(lm, dm)
    writer = PredictionWriter(output_dir=str(tmp_path / "out"))
    L.Trainer(**tiny_trainer_kwargs, callbacks=[writer]).predict(lm, datamodule=dm, return_predictions=False)
    rows = list(csv.DictReader(writer.path.open()))
    assert list(rows[0]) == ["index", "prompt", "pred_continuation"]
    assert [r["prompt"] for r in rows] == prompts
    expected = lm.generate(prompts, max_new_tokens=4, eos_token_id=[], return_full_text=False)
    assert [r["pred_continuation"] for r in rows] == expected


# ---- under DDP (slow: two CPU processes, gloo): the perplexity of the whole validation set ------------


class Uneven(Dataset):
    """Item ``i`` has ``2 + i`` real tokens of 12: ranks (even/odd items) see different token counts."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(0, 64, (12,), generator=torch.Generator().manual_seed(i))
        mask = (torch.arange(12) < 2 + i).long()
        return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.slow
def test_val_perplexity_is_the_same_on_two_processes_as_on_one(tmp_path) -> None:
    torch.manual_seed(0)
    lm = CausalLM(config={"n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 16, "vocab_size": 64})
    common = {
        "accelerator": "cpu",
        "logger": False,
        "enable_progress_bar": False,
        "default_root_dir": str(tmp_path),
    }
    loader = DataLoader(Uneven(), batch_size=2)
    (single,) = L.Trainer(devices=1, **common).validate(lm, loader, verbose=False)
    (ddp,) = L.Trainer(devices=2, strategy=SpawnedDDP(), **common).validate(lm, loader, verbose=False)
    assert ddp["val/ppl"] == pytest.approx(single["val/ppl"], rel=1e-5)
    assert ddp["val/loss"] == pytest.approx(single["val/loss"], rel=1e-5)
