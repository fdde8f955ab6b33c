"""The zoo's GPT-2 (lightning_recipes/zoo/lm.py): built with CausalLM, deterministic, RNG untouched; the core
loads it by name once built, and never builds it."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_recipes import CausalLM, registry, zoo
from lightning_recipes._random_state import SEED_ENV_VARS
from lightning_recipes.cache import default_cache_dir
from lightning_recipes.modules._hf import resolve_model_name
from lightning_recipes.modules.image import create_backbone
from lightning_recipes.registry import TINY_SHAKESPEARE_URL, GPT2Weights, ZooNotBuiltError

TINY = {"n_layer": 1, "n_head": 2, "n_embd": 16, "n_positions": 32, "vocab_size": 300}


@pytest.fixture
def tiny_lm(tmp_path, monkeypatch, write_corpus) -> GPT2Weights:
    """A cold cache, a source text in a shared-data folder and a zoo GPT-2 that builds in seconds."""
    monkeypatch.setenv("LIGHTNING_RECIPES_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LIGHTNING_RECIPES_SHARED", str(tmp_path / "shared"))
    write_corpus(tmp_path / "shared" / "data" / "toy.txt", lines=300)
    entry = GPT2Weights(
        "gpt2-tiny.toy", "data/toy.txt", "https://example.org/toy.txt", None,
        **TINY, block_size=16, batch_size=4, steps=3, lr=1e-2,
    )  # fmt: skip
    monkeypatch.setitem(registry.ZOO, entry.name, entry)
    for name in SEED_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    return entry


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_build_is_deterministic_and_leaves_the_random_state_alone(tiny_lm, tmp_path, monkeypatch) -> None:
    torch.manual_seed(7)
    random.seed(7)
    np.random.seed(7)
    first = zoo.build(tiny_lm.name)
    draws = torch.rand(2), random.random(), np.random.rand()
    torch.manual_seed(7)
    random.seed(7)
    np.random.seed(7)
    assert draws[0].tolist() == torch.rand(2).tolist()  # as if the build had not run
    assert (draws[1], draws[2]) == (random.random(), np.random.rand())
    assert "PL_GLOBAL_SEED" not in os.environ

    # Another cache, the shared folder given as `--source` instead of the variable: the same weights.
    monkeypatch.setenv("LIGHTNING_RECIPES_CACHE", str(tmp_path / "other-cache"))
    monkeypatch.delenv("LIGHTNING_RECIPES_SHARED")
    second = zoo.build(tiny_lm.name, source=tmp_path / "shared")
    assert second != first and second.name == first.name
    a, b = weights(first), weights(second)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (first / "tokenizer.json").read_text() == (second / "tokenizer.json").read_text()
    untrained = CausalLM(config={**TINY, "bos_token_id": 0, "eos_token_id": 0}).model.state_dict()
    assert not torch.equal(a["transformer.h.0.mlp.c_fc.weight"], untrained["transformer.h.0.mlp.c_fc.weight"])
    assert not list(first.parent.glob("*.tmp"))  # the build was renamed into place


def test_causal_lm_loads_a_built_zoo_name_offline_and_never_builds_it(tiny_lm) -> None:
    folder = tiny_lm.path()
    not_built = "lightning-recipes zoo build gpt2-tiny.toy.*`lightning run` builds"
    with pytest.raises(ZooNotBuiltError, match=not_built):
        CausalLM(model_name_or_path="gpt2-tiny.toy")
    assert not folder.exists() and not folder.parent.exists()  # the constructor built nothing
    zoo.build(tiny_lm.name)
    lm = CausalLM(model_name_or_path="gpt2-tiny.toy")
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    saved = weights(folder)
    assert all(torch.equal(lm.model.state_dict()[k], v) for k, v in saved.items())
    assert lm.hparams.model_name_or_path == "gpt2-tiny.toy"  # the recipe's name, not the cache path
    assert lm.model.config.n_layer == 1 and len(lm.tokenizer) <= 300
    assert lm.tokenizer.decode(lm.tokenizer("the king said")["input_ids"]) == "the king said"
    again = CausalLM(model_name_or_path="gpt2-tiny.toy")
    assert zoo.build(tiny_lm.name) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # built: not built again
    assert torch.equal(again.model.lm_head.weight, lm.model.lm_head.weight)
    assert resolve_model_name("gpt2-tiny.toy") == str(folder)
    assert resolve_model_name("gpt2") == "gpt2"


def test_missing_or_different_source_text_is_a_clear_error(tiny_lm, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LIGHTNING_RECIPES_SHARED", str(tmp_path / "nowhere"))
    monkeypatch.chdir(tmp_path)  # a ../shared beside the working directory is not looked for
    with pytest.raises(FileNotFoundError, match="gpt2-tiny.toy.*data/toy.txt.*https://example.org/toy.txt"):
        zoo.build(tiny_lm.name)
    monkeypatch.delenv("LIGHTNING_RECIPES_SHARED")
    with pytest.raises(FileNotFoundError, match="--source DIR` or set LIGHTNING_RECIPES_SHARED"):
        zoo.build(tiny_lm.name)
    monkeypatch.setenv("LIGHTNING_RECIPES_SHARED", str(tmp_path / "shared"))
    wrong = GPT2Weights(**{**tiny_lm.__dict__, "source_sha256": "0" * 64})
    monkeypatch.setitem(registry.ZOO, tiny_lm.name, wrong)
    with pytest.raises(ValueError, match="SHA-256 is [0-9a-f]{64}, expected 0000"):
        zoo.build(tiny_lm.name)
    assert not tiny_lm.path().exists() and not wrong.path().exists()


def test_the_shipped_entry_names_tiny_shakespeare_and_an_image_name_is_refused() -> None:
    entry = registry.ZOO["gpt2-mini.shakespeare"]
    assert isinstance(entry, GPT2Weights)
    assert entry.source_url == TINY_SHAKESPEARE_URL and entry.source == "data/tinyshakespeare/input.txt"
    assert entry.path().parent == default_cache_dir() / "weights"
    with pytest.raises(ValueError, match="'resnet10t.digits04' is a timm backbone"):
        resolve_model_name("resnet10t.digits04")
    with pytest.raises(ValueError, match="'gpt2-mini.shakespeare' is a transformers model, not a timm"):
        create_backbone("gpt2-mini.shakespeare")


@pytest.mark.slow
def test_gpt2_mini_shakespeare_is_far_better_than_random_on_held_out_text(shared_dir) -> None:
    """The real entry: built once per session (about 2 minutes on 2 idle CPU cores)."""
    zoo.build("gpt2-mini.shakespeare", source=shared_dir)
    lm = CausalLM(model_name_or_path="gpt2-mini.shakespeare").eval()
    lines = (shared_dir / "data/sst2/dev.tsv").read_text().splitlines()[1:201]
    sst2 = [line.split("\t")[0] for line in lines]
    ids = lm.tokenizer("\n".join(sst2))["input_ids"]
    blocks = torch.tensor(ids[: len(ids) // 128 * 128]).view(-1, 128)
    random_lm = CausalLM(config=lm.model.config.to_diff_dict()).eval()
    with torch.no_grad():
        ppl = [(lambda t, n: float((t / n).exp()))(*m.token_nll(blocks)) for m in (lm, random_lm)]
    assert ppl[0] < ppl[1] / 4, ppl  # English text the model never saw: far better than uniform guessing
