"""Every as-is recipe runs end to end with a tiny model of its kind, trains nothing and speaks its classes."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml

from lightning_recipes import registry
from lightning_recipes._random_state import SEED_ENV_VARS
from lightning_recipes.cli import LightningRecipesCLI
from lightning_recipes.recipes import read_description

REPO = Path(__file__).resolve().parents[2]
# The image and text families' as-is recipes (the LM family's are run in tests/recipes/test_lm_recipes.py).
RECIPES = sorted(
    p
    for family in ("image", "text")
    for p in (REPO / "recipes" / family).glob("*.yaml")
    if "# Scenario: as-is" in p.read_text()
)
IDS = [str(p.relative_to(REPO / "recipes")) for p in RECIPES]
# The digits recipe first builds a (1-epoch) zoo model: slow; the others take seconds.
PARAMS = [
    pytest.param(p, id=i, marks=[pytest.mark.slow] if "DigitsDataModule" in p.read_text() else [])
    for p, i in zip(RECIPES, IDS, strict=True)
]
FAST = [
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.limit_val_batches=2",
    "--trainer.limit_test_batches=2",
    "--trainer.limit_predict_batches=2",
    "--trainer.enable_progress_bar=false",
    "--trainer.logger=false",
]


def test_the_as_is_recipes_are_all_here():
    assert IDS == [
        "image/digits_asis_local.yaml",
        "image/imagenet_cats_dogs_asis.yaml",
        "text/sst2_asis_local.yaml",
        "text/sst2_distilbert_finetuned_asis.yaml",
    ]
    for recipe in RECIPES:
        config = yaml.safe_load(recipe.read_text())
        assert "fit" not in config["stages"] and config["model"]["init_args"]["head"] == "pretrained"
        assert "num_classes" not in config["model"]["init_args"]
        assert read_description(recipe)


def image_setup(recipe: Path, tmp_path: Path, image_folder, monkeypatch) -> tuple[list[str], list[str]]:
    """Overrides and the classes the run must speak: a 1-epoch zoo model of test_resnet on digits 0-4,
    or test_resnet's own (random) ImageNet classifier on a tiny cats/dogs folder with val/ and test/."""
    if "DigitsDataModule" in recipe.read_text():
        monkeypatch.setitem(
            registry.ZOO, "test_resnet.digits04", registry.DigitsWeights("test_resnet", (0, 1, 2, 3, 4), 1)
        )
        for name in SEED_ENV_VARS:
            monkeypatch.delenv(name, raising=False)
        args = [
            "--model.init_args.model_name_or_path=test_resnet.digits04",
            f"--data.init_args.root={tmp_path / 'digits'}",
        ]
        return [*args, "--data.init_args.batch_size=16"], ["0", "1", "2", "3", "4"]
    root = image_folder(splits=("val", "test"), classes=("cats", "dogs"), per_class=4)
    args = ["--model.init_args.model_name_or_path=test_resnet", "--model.init_args.pretrained=false"]
    data = [
        f"--data.init_args.{k}" for k in (f"root={root}", "image_size=32", "num_workers=0", "batch_size=4")
    ]
    return [*args, *data], ["cats", "dogs"]


def text_setup(recipe: Path, tmp_path: Path) -> tuple[list[str], list[str]]:
    """A tiny fine-tuned BERT classifier folder whose id2label is the recipe model's (negative/positive,
    or NEGATIVE/POSITIVE where the recipe maps them with class_map), and tiny tsv files."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import AutoModelForSequenceClassification, BertConfig, BertTokenizerFast

    mapped = "class_map" in yaml.safe_load(recipe.read_text())["model"]["init_args"]
    names = ["NEGATIVE", "POSITIVE"] if mapped else ["negative", "positive"]
    folder = tmp_path / "tiny-sst2"
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=16, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    config.id2label, config.label2id = dict(enumerate(names)), {n: i for i, n in enumerate(names)}
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film", "dull", "fun"]
    BertWordPieceTokenizer({w: i for i, w in enumerate(vocab)}).save(str(folder / "tokenizer.json"))
    BertTokenizerFast(tokenizer_file=str(folder / "tokenizer.json")).save_pretrained(folder)
    rows = ["good film\t1", "bad film\t0", "fun film\t1", "dull film\t0"] * 3
    tsv = tmp_path / "dev.tsv"
    tsv.write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    args = [
        f"--model.init_args.model_name_or_path={folder}",
        "--data.init_args.dataset=null",
        *(f"--data.init_args.{split}_file={tsv}" for split in ("train", "test", "predict")),
        "--data.init_args.label_names=[negative,positive]",
        "--data.init_args.eval_batch_size=4",
        "--data.init_args.num_workers=0",
        f"--data.init_args.cache_dir={tmp_path / 'cache'}",
    ]
    return args, ["negative", "positive"]


@pytest.mark.parametrize("recipe", PARAMS)
def test_as_is_recipe_scores_without_training(recipe, tmp_path, image_folder, monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # recipes name paths relative to the repository root
    family = recipe.parent.name
    if family == "image":
        overrides, classes = image_setup(recipe, tmp_path, image_folder, monkeypatch)
    else:
        overrides, classes = text_setup(recipe, tmp_path)
    args = ["--config", str(recipe), *FAST, f"--trainer.default_root_dir={tmp_path / 'run'}", *overrides]
    cli = LightningRecipesCLI(args=args, run=False, recipe_mode=True)
    before = {k: v.clone() for k, v in cli.model.state_dict().items()}
    summary = cli.run_stages()

    assert "No fit stage and no --ckpt_path: the stages use the model as built" in capsys.readouterr().out
    after = cli.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert cli.trainer.global_step == 0 and summary["best_checkpoint"] is None
    assert cli.model.label_names == classes and cli.model.num_classes == len(classes)
    assert 0.0 <= summary["metrics"]["test/acc"] <= 1.0
    if "predict" in yaml.safe_load(recipe.read_text())["stages"]:
        with Path(summary["predictions"]).open() as f:
            rows = list(csv.DictReader(f))
        probs = [f"pred_prob_{c}" for c in classes]
        assert rows and [c for c in rows[0] if c.startswith("pred_prob_")] == probs
        assert {r["pred_label"] for r in rows} <= set(classes)
        assert all(sum(float(r[c]) for c in probs) == pytest.approx(1.0, abs=1e-5) for r in rows)


@pytest.mark.slow
def test_digits_as_is_recipe_as_shipped_scores_the_held_out_digits(tmp_path, monkeypatch, capsys):
    """The real zoo model (built in the test cache) with its own head: far above chance (0.2)."""
    from lightning_recipes.cli import main

    monkeypatch.chdir(tmp_path)
    recipe = REPO / "recipes" / "image" / "digits_asis_local.yaml"
    assert main(["run", str(recipe), "--trainer.enable_progress_bar=false", "--trainer.logger=false"]) == 0
    out = capsys.readouterr().out
    metrics = dict(item.split("=") for item in out.split("Final metrics:")[1].strip().split(", "))
    assert float(metrics["test/acc"]) > 0.95 and float(metrics["val/acc"]) > 0.95
