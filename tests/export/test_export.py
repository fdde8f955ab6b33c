"""``lightning-recipes export`` (lightning_recipes/export/): a run's best checkpoint exported per family and
format, reloaded in a fresh process without lightning_recipes and compared with the checkpoint; the model
card; bad input and a parity failure leave nothing behind."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from export_helpers import (
    image_folders,
    perturb_lora,
    reload_probabilities,
    run_tiny_recipe,
    save_checkpoint,
    skip_without_onnx,
    text_inputs,
)

from lightning_recipes import CausalLM, ImageClassifier, TextClassifier
from lightning_recipes.cli import main

TINY_GPT2 = {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 64, "vocab_size": 300}


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run directory of a two-epoch `lightning run` of a tiny ResNet, with test metrics and curves."""
    tmp = tmp_path_factory.mktemp("image_run")
    model = {
        "class_path": "lightning_recipes.ImageClassifier",
        "init_args": {"model_name_or_path": "test_resnet", "pretrained": False, "num_classes": 3, "lr": 0.01},
    }
    data = {
        "class_path": "lightning_recipes.ImageDataModule",
        "init_args": {"root": str(image_folders(tmp)), "batch_size": 6, "num_workers": 0, "image_size": 32},
    }
    return run_tiny_recipe(tmp, model, data)


def best_checkpoint(run: Path) -> Path:
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    (best,) = [v["best_model_path"] for k, v in state["callbacks"].items() if k.startswith("ModelCheckpoint")]
    return Path(best)


def export(capsys, *args: object) -> tuple[int, str, str]:
    code = main(["export", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def probabilities(module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        if isinstance(module, ImageClassifier):
            return module(*inputs.values()).softmax(-1)
        if isinstance(module, CausalLM):
            return module(**inputs).softmax(-1)
        return module(inputs).softmax(-1)


def test_a_run_exports_its_best_checkpoint_for_timm_with_a_model_card(image_run, tmp_path, capsys) -> None:
    out_dir = tmp_path / "export"
    code, out, err = export(capsys, image_run, "--to", out_dir)  # images default to timm
    assert code == 0, err
    best = best_checkpoint(image_run)
    assert best.name != "last.ckpt" and f"Exported {best} as timm to {out_dir}" in out
    diff = float(re.search(r"Parity: max abs difference of probabilities (\S+) <= 0.0001", out).group(1))

    record = json.loads((out_dir / "export.json").read_text())
    assert (record["format"], record["label_names"], record["task"]) == (
        "timm",
        ["a", "b", "c"],
        "multiclass",
    )
    assert record["parity"]["max_abs_diff"] == diff <= 1e-4 and record["parity"]["inputs"].endswith(
        "run's data"
    )
    config = json.loads((out_dir / "config.json").read_text())
    assert config["label_names"] == ["a", "b", "c"]
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]  # the run's image_size, not timm's 160

    images = {"images": torch.randn(3, 3, 32, 32)}
    model = ImageClassifier.load_from_checkpoint(best).eval()
    got = reload_probabilities("timm", out_dir, images, tmp_path)
    torch.testing.assert_close(got, probabilities(model, images), atol=1e-5, rtol=0)

    card = (out_dir / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert (front["library_name"], front["pipeline_tag"]) == ("timm", "image-classification")
    assert "base_model" not in front  # random init: nothing to credit
    metrics = {m["name"]: m["value"] for m in front["model-index"][0]["results"][0]["metrics"]}
    logged = [row for row in (image_run / "metrics.csv").read_text().splitlines()]
    header = logged[0].split(",")
    test_row = next(r.split(",") for r in logged[1:] if r.split(",")[header.index("test/acc")])
    assert metrics["test/acc"] == pytest.approx(float(test_row[header.index("test/acc")]), abs=1e-6)
    assert "accuracy" in front["metrics"] and "`a`, `b`, `c`" in card
    pngs = sorted(p.name for p in (out_dir / "images").glob("*.png"))
    assert pngs and all(f"(images/{name})" in card for name in pngs)
    assert "input size [3, 32, 32]" in card and "Resolved config.yaml" in card
    assert not list(tmp_path.glob(".export.export-*"))  # the temporary sibling is gone

    # An existing, non-empty target is refused unless --overwrite; the refused one is left as it was.
    code, _, err = export(capsys, image_run, "--to", out_dir)
    assert code == 2 and f"--to {out_dir} exists and is not empty; pass --overwrite" in err
    assert (out_dir / "README.md").read_text() == card
    assert export(capsys, image_run, "--to", out_dir, "--overwrite")[0] == 0


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_an_image_run_exports_traced_with_a_dynamic_batch(fmt, image_run, tmp_path, capsys) -> None:
    if fmt == "onnx":
        skip_without_onnx()
    code, out, err = export(
        capsys, image_run / "checkpoints" / "last.ckpt", "--to", tmp_path / fmt, "--format", fmt
    )
    assert code == 0, err
    record = json.loads((tmp_path / fmt / "export.json").read_text())
    assert record["inputs"] == {"images": {"shape": ["batch", 3, 32, 32], "dtype": "float32"}}
    assert record["preprocessing"]["input_size"] == [3, 32, 32]  # the transform a user must apply
    assert (record.get("opset") or 0) >= (17 if fmt == "onnx" else 0)
    images = {"images": torch.randn(5, 3, 32, 32)}  # another batch size than the traced examples
    model = ImageClassifier.load_from_checkpoint(image_run / "checkpoints" / "last.ckpt").eval()
    got = reload_probabilities(fmt, tmp_path / fmt, images, tmp_path)
    torch.testing.assert_close(got, probabilities(model, images), atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def text_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT classifier whose new head is BERT's own (pooler + classifier), as a checkpoint."""
    from tiny_text_models import make_model

    tmp = tmp_path_factory.mktemp("text")
    torch.manual_seed(0)
    model = TextClassifier(
        str(make_model(tmp / "bert")),
        num_classes=2,
        label_names=["neg", "pos"],
        hidden_dim=32,
        activation="tanh",
    )
    return save_checkpoint(model, tmp / "text.ckpt")


@pytest.mark.parametrize("fmt", ["hf", "torchscript", pytest.param("onnx", marks=pytest.mark.slow)])
def test_a_text_classifier_exports_and_reloads_without_lightning_recipes(
    fmt, text_ckpt, tmp_path, capsys
) -> None:
    if fmt == "onnx":
        skip_without_onnx()
    args = [] if fmt == "hf" else ["--format", fmt]  # hf is the default for text
    code, out, err = export(capsys, text_ckpt, "--to", tmp_path / fmt, *args)
    assert code == 0, err
    inputs = text_inputs()  # 3 x 9 tokens: another batch and length than the examples, padding included
    model = TextClassifier.load_from_checkpoint(text_ckpt).eval()
    got = reload_probabilities("hf-text" if fmt == "hf" else fmt, tmp_path / fmt, inputs, tmp_path)
    torch.testing.assert_close(got, probabilities(model, inputs), atol=1e-5, rtol=0)
    assert (tmp_path / fmt / "tokenizer.json").is_file()  # the preprocessing travels with every format
    if fmt == "hf":
        config = json.loads((tmp_path / fmt / "config.json").read_text())
        assert config["id2label"] == {"0": "neg", "1": "pos"} and config["label2id"] == {"neg": 0, "pos": 1}
        front = yaml.safe_load((tmp_path / fmt / "README.md").read_text().split("---")[1])
        assert (front["library_name"], front["pipeline_tag"]) == ("transformers", "text-classification")
    else:
        record = json.loads((tmp_path / fmt / "export.json").read_text())
        assert list(record["inputs"]) == ["input_ids", "attention_mask", "token_type_ids"]
        assert record["inputs"]["input_ids"]["shape"] == ["batch", "sequence"]


@pytest.fixture(scope="module")
def lm_base(tmp_path_factory: pytest.TempPathFactory, write_corpus) -> Path:
    """A tiny GPT-2 with a BPE tokenizer saved as a Hugging Face folder (a local pretrained base)."""
    from lightning_recipes.data.bpe import train_bpe_tokenizer

    tmp = tmp_path_factory.mktemp("lm")
    train_bpe_tokenizer([write_corpus(tmp / "corpus.txt")], vocab_size=300, output_dir=tmp / "tok")
    torch.manual_seed(0)
    lm = CausalLM(config=TINY_GPT2, tokenizer=str(tmp / "tok"))
    return lm.save_pretrained(tmp / "base")


@pytest.mark.parametrize("fmt", ["hf", "torchscript", pytest.param("onnx", marks=pytest.mark.slow)])
def test_a_causal_lm_exports_and_reloads_without_lightning_recipes(fmt, lm_base, tmp_path, capsys) -> None:
    if fmt == "onnx":
        skip_without_onnx()
    ckpt = save_checkpoint(CausalLM(str(lm_base)), tmp_path / "lm.ckpt")
    code, out, err = export(capsys, ckpt, "--to", tmp_path / fmt, "--format", fmt)
    assert code == 0, err
    inputs = text_inputs(vocab=300, token_types=False)
    model = CausalLM.load_from_checkpoint(ckpt).eval()
    got = reload_probabilities("hf-lm" if fmt == "hf" else fmt, tmp_path / fmt, inputs, tmp_path)
    torch.testing.assert_close(got, probabilities(model, inputs), atol=1e-5, rtol=0)
    assert got.shape == (3, 9, 300)


@pytest.mark.slow  # about 25 s: three exports, each reloaded twice
def test_a_lora_lm_exports_as_an_adapter_folder_or_merged(lm_base, tmp_path, capsys) -> None:
    import peft

    model = CausalLM(str(lm_base), adapter=peft.LoraConfig(r=4))
    perturb_lora(model)
    ckpt = save_checkpoint(model, tmp_path / "lora.ckpt")
    inputs = text_inputs(vocab=300, token_types=False)
    expected = probabilities(CausalLM.load_from_checkpoint(ckpt).eval(), inputs)
    assert (expected - probabilities(CausalLM(str(lm_base)).eval(), inputs)).abs().max() > 1e-3  # LoRA counts

    assert export(capsys, ckpt, "--to", tmp_path / "adapter")[0] == 0
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert "needs its base model" in (tmp_path / "adapter" / "README.md").read_text()
    got = reload_probabilities("peft-lm", tmp_path / "adapter", inputs, tmp_path)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)

    assert export(capsys, ckpt, "--to", tmp_path / "merged", "--merge")[0] == 0
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    got = reload_probabilities("hf-lm", tmp_path / "merged", inputs, tmp_path)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
