"""The recipes in recipes/lm/ run end to end through `lightning run`, with a tiny GPT-2 and local text."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from lightning_recipes import CausalLM, registry
from lightning_recipes.cli import main
from lightning_recipes.data.bpe import train_bpe_tokenizer
from lightning_recipes.registry import GPT2Weights

REPO = Path(__file__).resolve().parents[2]
LM = REPO / "recipes" / "lm"
FAST = [
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=2",
    "--trainer.limit_test_batches=2",
    "--trainer.enable_progress_bar=false",
    "--trainer.logger=false",
]
TINY = {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 64, "vocab_size": 300, "bos_token_id": 0,
        "eos_token_id": 0}  # fmt: skip


@pytest.fixture
def text_file(tmp_path: Path, write_corpus) -> Path:
    return write_corpus(tmp_path / "texts" / "corpus.txt")


@pytest.fixture
def tiny_pretrained(tmp_path: Path, text_file: Path) -> Path:
    """A 'pretrained' tiny GPT-2 with its tokenizer, saved like a Hub model folder."""
    tokenizer = train_bpe_tokenizer([text_file], vocab_size=300, output_dir=tmp_path / "tok")
    torch.manual_seed(0)
    lm = CausalLM(config=TINY)
    lm.set_tokenizer(tokenizer)
    return lm.save_pretrained(tmp_path / "tiny-gpt2")


def run(recipe: str, tmp_path: Path, *overrides: str, capsys) -> dict[str, float]:
    common = [
        f"--trainer.default_root_dir={tmp_path / 'run'}",
        f"--data.init_args.cache_dir={tmp_path / 'cache'}",
    ]
    code = main(["run", str(LM / recipe), *FAST, *common, "--data.init_args.num_workers=0", *overrides])
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    metrics = out.out.split("Final metrics:")[1].strip().splitlines()[0]
    return {k: float(v) for k, v in (item.split("=") for item in metrics.split(", "))}


def test_scratch_recipe_trains_its_tokenizer_and_checkpoints_reload(tmp_path, text_file, capsys) -> None:
    tokenizer_dir = tmp_path / "run" / "tokenizer"
    metrics = run(
        "gpt2_scratch_shakespeare.yaml",
        tmp_path,
        f"--model.init_args.config={json.dumps(TINY)}",
        f"--data.init_args.train_file={text_file}",
        "--data.init_args.bpe_vocab_size=300",
        f"--data.init_args.tokenizer_dir={tokenizer_dir}",
        "--data.init_args.block_size=32",
        "--data.init_args.batch_size=4",
        "--data.init_args.val_fraction=0.1",
        "--data.init_args.test_fraction=0.1",
        capsys=capsys,
    )
    assert metrics["test/ppl"] == pytest.approx(torch.tensor(metrics["test/loss"]).exp().item(), rel=1e-4)
    assert (tokenizer_dir / "tokenizer.json").is_file()
    (last,) = (tmp_path / "run").rglob("last.ckpt")
    lm = CausalLM.load_from_checkpoint(last)
    assert len(lm.tokenizer) == 300 and lm.model.config.n_layer == 2
    (text,) = lm.generate("the king", max_new_tokens=5)
    assert text.startswith("the king")


def test_finetune_recipe_on_a_local_model_folder(tmp_path, text_file, tiny_pretrained, capsys) -> None:
    metrics = run(
        "gpt2_finetune.yaml",
        tmp_path,
        f"--model.init_args.model_name_or_path={tiny_pretrained}",
        f"--data.init_args.train_file={text_file.parent / '*.txt'}",
        f"--data.init_args.tokenizer={tiny_pretrained}",
        "--data.init_args.block_size=32",
        "--data.init_args.batch_size=4",
        capsys=capsys,
    )
    assert {"train/loss", "val/loss", "val/ppl", "test/loss", "test/ppl"} <= set(metrics)


def test_evaluate_recipe_reports_the_perplexity_of_the_model_as_is(
    tmp_path, text_file, tiny_pretrained, capsys
):
    metrics = run(
        "gpt2_evaluate.yaml",
        tmp_path,
        f"--model.init_args.model_name_or_path={tiny_pretrained}",
        f"--data.init_args.val_file={text_file}",
        f"--data.init_args.tokenizer={tiny_pretrained}",
        "--data.init_args.block_size=64",
        capsys=capsys,
    )
    assert set(metrics) == {"val/loss", "val/ppl"}
    # the same number as evaluating the exported model by hand, block by block
    lm = CausalLM(model_name_or_path=str(tiny_pretrained)).eval()
    ids = lm.tokenizer(text_file.read_text())["input_ids"] + [0]
    blocks = torch.tensor(ids[: 2 * 4 * 64]).view(8, 64)  # limit_val_batches=2 x batch_size 4
    with torch.no_grad():
        total, count = lm.token_nll({"input_ids": blocks})
    assert metrics["val/loss"] == pytest.approx(float(total / count), rel=1e-4)


def test_lora_recipe_trains_the_adapter_only_and_reloads(tmp_path, text_file, tiny_pretrained, capsys):
    metrics = run(
        "gpt2_lora.yaml",
        tmp_path,
        f"--model.init_args.model_name_or_path={tiny_pretrained}",
        f"--data.init_args.train_file={text_file.parent / '*.txt'}",
        f"--data.init_args.tokenizer={tiny_pretrained}",
        "--data.init_args.block_size=32",
        "--data.init_args.batch_size=4",
        capsys=capsys,
    )
    assert {"val/ppl", "test/ppl"} <= set(metrics)
    (last,) = (tmp_path / "run").rglob("last.ckpt")
    stored = torch.load(last, weights_only=False)["state_dict"]
    assert stored and all("lora_" in k for k in stored)  # the tied lm_head and embeddings stay frozen
    lm = CausalLM.load_from_checkpoint(last)
    assert {k for k, p in lm.named_parameters() if p.requires_grad} == {k for k in stored if "lora_" in k}


def test_offline_lora_recipe_adapts_a_local_model(tmp_path, text_file, tiny_pretrained, capsys) -> None:
    """gpt2_mini_lora_local with the zoo model replaced by a tiny local one (the zoo build takes minutes)."""
    metrics = run(
        "gpt2_mini_lora_local.yaml",
        tmp_path,
        f"--model.init_args.model_name_or_path={tiny_pretrained}",
        f"--data.init_args.train_file={text_file}",
        "--data.init_args.block_size=32",
        capsys=capsys,
    )
    assert {"val/ppl", "test/ppl"} <= set(metrics)
    (last,) = (tmp_path / "run").rglob("last.ckpt")
    assert all("lora_" in k for k in torch.load(last, weights_only=False)["state_dict"])


# -- the offline recipes on the zoo GPT-2 (a tiny stand-in for gpt2-mini.shakespeare) -------------------
ZOO_TINY = {"n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 64, "vocab_size": 300}


@pytest.fixture
def tiny_zoo(tmp_path: Path, monkeypatch, write_corpus) -> GPT2Weights:
    """``gpt2-mini.shakespeare`` replaced by a tiny GPT-2 pretrained (40 steps) on a toy corpus; `lightning
    run` builds it before the first run, in the session's cache, so only the first test pays for it."""
    monkeypatch.setenv("LIGHTNING_RECIPES_SHARED", str(tmp_path / "shared"))
    source = write_corpus(tmp_path / "shared" / "toy.txt", lines=400, seed=1)
    # sentences separated like the tables' rows (each one a document, then EOS), not by newlines
    source.write_text("<|endoftext|>".join(source.read_text().splitlines()))
    entry = GPT2Weights(
        "gpt2-mini.shakespeare", "toy.txt", "https://example.org/toy.txt", None,
        **ZOO_TINY, block_size=32, batch_size=8, steps=40, lr=1e-2,
    )  # fmt: skip
    monkeypatch.setitem(registry.ZOO, "gpt2-mini.shakespeare", entry)
    return entry


@pytest.fixture
def sentences(tmp_path: Path, write_corpus) -> dict[str, Path]:
    """SST-2-like tables (``sentence<TAB>label``) of toy sentences the zoo model never saw."""
    tables = {}
    for split, seed, lines in (("train", 2, 300), ("dev", 3, 80)):
        text = write_corpus(tmp_path / f"{split}.txt", lines=lines, seed=seed).read_text().splitlines()
        tables[split] = tmp_path / "sst2" / f"{split}.tsv"
        tables[split].parent.mkdir(exist_ok=True)
        tables[split].write_text("sentence\tlabel\n" + "".join(f"{s}\t{i % 2}\n" for i, s in enumerate(text)))
    return tables


def run_recipe(recipe: str, tmp_path: Path, *overrides: str, capsys) -> tuple[dict[str, float], str]:
    """Run a recipe from the repository root with tiny limits; ``(final metrics, stdout)``."""
    code = main(["run", str(LM / recipe), *FAST, f"--data.init_args.cache_dir={tmp_path / 'cache'}",
                 "--data.init_args.num_workers=0", *overrides])  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    line = out.out.split("Final metrics:")[1].strip().splitlines()[0]
    return {k: float(v) for k, v in (item.split("=") for item in line.split(", "))}, out.out


def table_overrides(sentences: dict[str, Path], *splits: str) -> list[str]:
    return [
        f"--data.init_args.{split}_file={sentences['train' if split == 'train' else 'dev']}"
        for split in splits
    ]


def test_asis_recipe_scores_and_continues_prompts_with_the_zoo_weights(
    tmp_path, tiny_zoo, sentences, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(REPO)  # the recipe's prompts file is relative to the repository root
    recipe = yaml.safe_load((LM / "gpt2_mini_asis_local.yaml").read_text())
    assert recipe["stages"] == ["validate", "predict"]  # as-is: no fit stage, nothing is trained
    metrics, out = run_recipe(
        "gpt2_mini_asis_local.yaml", tmp_path, *table_overrides(sentences, "val"),
        f"--trainer.default_root_dir={tmp_path / 'run'}", "--data.init_args.block_size=32",
        '--model.init_args.generation={"max_new_tokens": 6, "min_new_tokens": 3}',
        capsys=capsys,
    )  # fmt: skip
    # the perplexity of the zoo weights themselves, computed by hand on the same blocks
    lm = CausalLM(model_name_or_path="gpt2-mini.shakespeare").eval()
    rows = sentences["dev"].read_text().splitlines()[1:]
    ids = [t for row in rows for t in lm.tokenizer(row.split("\t")[0])["input_ids"] + [0]]
    blocks = torch.tensor(ids[: 2 * 16 * 32]).view(-1, 32)  # limit_val_batches=2 x batch_size 16
    with torch.no_grad():
        total, count = lm.token_nll({"input_ids": blocks})
    assert metrics["val/loss"] == pytest.approx(float(total / count), rel=1e-4)
    assert metrics["val/ppl"] < len(lm.tokenizer) / 4  # pretrained: far better than uniform guessing
    assert "Best checkpoint: None" in out and "Last checkpoint: None" in out
    with open(out.split("Predictions:")[-1].split()[0]) as f:
        predictions = list(csv.DictReader(f))
    prompts = (LM / "prompts.txt").read_text().splitlines()
    assert [p["prompt"] for p in predictions] == prompts
    assert all(len(p["pred_continuation"]) >= 3 for p in predictions)  # 3 new tokens at least, decoded


def test_finetune_recipe_starts_from_the_zoo_weights_far_below_scratch(
    tmp_path, tiny_zoo, sentences, capsys
) -> None:
    common = [*table_overrides(sentences, "train", "val", "test"), "--data.init_args.block_size=32",
              "--data.init_args.batch_size=8", "--trainer.limit_train_batches=1"]  # fmt: skip
    finetuned, _ = run_recipe(
        "gpt2_mini_finetune_local.yaml", tmp_path, *common, f"--trainer.default_root_dir={tmp_path / 'ft'}",
        capsys=capsys,
    )  # fmt: skip
    folder = tiny_zoo.path()  # the same recipe, the same budget, random weights of the same shape
    scratch, _ = run_recipe(
        "gpt2_mini_finetune_local.yaml", tmp_path, *common, f"--trainer.default_root_dir={tmp_path / 'sc'}",
        "--model.init_args.model_name_or_path=null",
        f"--model.init_args.config={json.dumps({**ZOO_TINY, 'bos_token_id': 0, 'eos_token_id': 0})}",
        f"--data.init_args.tokenizer={folder}", capsys=capsys,
    )  # fmt: skip
    assert finetuned["test/ppl"] < scratch["test/ppl"] / 4, (finetuned, scratch)


def test_add_layers_recipe_trains_new_blocks_on_a_frozen_body_then_unfreezes_it(
    tmp_path, tiny_zoo, sentences, capsys
) -> None:
    from safetensors.torch import load_file

    common = [*table_overrides(sentences, "train", "val", "test"), "--data.init_args.block_size=32",
              "--data.init_args.batch_size=8", f"--trainer.default_root_dir={tmp_path / 'run'}"]  # fmt: skip
    _, out = run_recipe("gpt2_mini_add_layers_local.yaml", tmp_path, *common, capsys=capsys)
    frozen_epoch = Path(out.split("Last checkpoint:")[1].split()[0])
    pretrained = {f"backbone.{k.removeprefix('transformer.')}": v for k, v in load_file(
        str(tiny_zoo.path() / "model.safetensors")).items() if k.startswith("transformer.")}  # fmt: skip

    def state(path: Path) -> tuple[dict, dict, list]:
        ckpt = torch.load(path, weights_only=False)
        (callback,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("FreezeUnfreeze")]
        groups = [(g["name"], g["lr"]) for g in ckpt["optimizer_states"][0]["param_groups"]]
        return ckpt["state_dict"], callback, groups

    weights, callback, groups = state(frozen_epoch)
    assert callback["stage"] == 0 and groups == [("head", 1e-3)]  # epoch 0: the body is frozen
    assert all(torch.equal(weights[k], v) for k, v in pretrained.items())  # ... and untouched
    assert any(k.startswith("head.blocks.1.") for k in weights)  # 2 new blocks, trained:
    assert weights["head.blocks.0.attn.c_proj.weight"].abs().sum() > 0  # no longer the zero init

    _, out = run_recipe("gpt2_mini_add_layers_local.yaml", tmp_path, *common, "--trainer.max_epochs=2",
                        f"--ckpt_path={frozen_epoch}", capsys=capsys)  # fmt: skip
    weights, callback, groups = state(Path(out.split("Last checkpoint:")[1].split()[0]))
    assert callback["stage"] == callback["num_groups"] == 3  # epoch 1: every group of the body unfrozen
    assert groups == [("head", 1e-3), ("backbone", pytest.approx(1e-4))]
    key = "backbone.h.0.mlp.c_fc.weight"
    assert not torch.equal(weights[key], pretrained[key])
    lm = CausalLM.load_from_checkpoint(Path(out.split("Last checkpoint:")[1].split()[0]))
    assert lm.model.config.n_layer == 4 and len(lm.head.blocks) == 2
