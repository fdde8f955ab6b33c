"""The recipes in recipes/lm/ run end to end through `lightning run`, with a tiny GPT-2 and local text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lightning_recipes import CausalLM
from lightning_recipes.cli import main
from lightning_recipes.data.bpe import train_bpe_tokenizer

REPO = Path(__file__).resolve().parents[1]
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
        f"--data.init_args.train_files={text_file}",
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
        f"--data.init_args.train_files={text_file.parent / '*.txt'}",
        f"--data.init_args.tokenizer={tiny_pretrained}",
        "--data.init_args.block_size=32",
        "--data.init_args.batch_size=4",
        "--trainer.accumulate_grad_batches=1",
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
        f"--data.init_args.val_files={text_file}",
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
        f"--data.init_args.train_files={text_file.parent / '*.txt'}",
        f"--data.init_args.tokenizer={tiny_pretrained}",
        "--data.init_args.block_size=32",
        "--data.init_args.batch_size=4",
        "--trainer.accumulate_grad_batches=1",
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
        f"--data.init_args.train_files={text_file}",
        "--data.init_args.block_size=32",
        capsys=capsys,
    )
    assert {"val/ppl", "test/ppl"} <= set(metrics)
    (last,) = (tmp_path / "run").rglob("last.ckpt")
    assert all("lora_" in k for k in torch.load(last, weights_only=False)["state_dict"])
