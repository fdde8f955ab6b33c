"""The recipes in recipes/text/ run through the CLI with a tiny local BERT and a tiny SST-2-style tsv."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml

from lightning_recipes import TextClassifier
from lightning_recipes.cli import main

REPO = Path(__file__).resolve().parents[1]
# As-is recipes (no training) run with a tiny fine-tuned classifier in tests/test_asis_recipes.py.
RECIPES = sorted(
    p for p in (REPO / "recipes" / "text").glob("*.yaml") if "# Scenario: as-is" not in p.read_text()
)
WORDS = ["good", "great", "fun", "bad", "awful", "dull", "film", "movie", "the", "plot", "was"]
FAST = [
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.precision=32-true",
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=2",
    "--trainer.limit_test_batches=2",
    "--trainer.enable_progress_bar=false",
]


@pytest.fixture
def tiny_bert_and_tsv(tmp_path: Path) -> tuple[Path, Path]:
    """A 2-layer BERT + WordPiece tokenizer folder and ``sentence<TAB>label`` train/dev files."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import AutoModel, BertConfig, BertTokenizerFast

    model_dir = tmp_path / "tiny-bert"
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=32,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    AutoModel.from_config(config).save_pretrained(model_dir)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    BertWordPieceTokenizer({w: i for i, w in enumerate(vocab)}).save(str(model_dir / "tokenizer.json"))
    BertTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json")).save_pretrained(model_dir)
    rows = ["good film\t1", "bad movie\t0", "great fun\t1", "the plot was dull\t0"] * 4
    for name in ("train", "dev"):
        (tmp_path / f"{name}.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    return model_dir, tmp_path


def overrides(model_dir: Path, data_dir: Path) -> list[str]:
    return [
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",  # the recipes' LearningRateMonitor needs one
        f"--trainer.logger.init_args.save_dir={data_dir / 'logs'}",
        f"--model.init_args.model_name_or_path={model_dir}",
        "--data.init_args.dataset=null",
        f"--data.init_args.train_file={data_dir / 'train.tsv'}",
        f"--data.init_args.val_file={data_dir / 'dev.tsv'}",
        f"--data.init_args.test_file={data_dir / 'dev.tsv'}",
        "--data.init_args.train_size=null",
        "--data.init_args.labels=[negative,positive]",
        "--data.init_args.batch_size=4",
        "--data.init_args.num_workers=0",
        f"--data.init_args.cache_dir={data_dir / 'cache'}",
    ]


def test_text_recipes_exist() -> None:
    names = {p.name for p in RECIPES}
    assert {"sst2_bert_base.yaml", "sst2_distilbert.yaml", "sst2_minilm_local.yaml"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_text_recipe_runs_and_checkpoint_reloads(
    recipe: Path, tiny_bert_and_tsv, tmp_path: Path, capsys
) -> None:
    model_dir, data_dir = tiny_bert_and_tsv
    config = yaml.safe_load(recipe.read_text())
    assert config["model"]["class_path"] == "lightning_recipes.TextClassifier"
    run_dir = tmp_path / "run"
    args = [
        "run",
        str(recipe),
        *FAST,
        f"--trainer.default_root_dir={run_dir}",
        *overrides(model_dir, data_dir),
    ]
    code = main(args)
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    assert "test/acc=" in out.out and "Best checkpoint:" in out.out
    assert list(tmp_path.rglob("*.png")), "the recipes' CurveLogger writes ROC/PR/confusion plots"
    best = out.out.split("Best checkpoint:")[1].split()[0]
    assert Path(best).is_file()
    model = TextClassifier.load_from_checkpoint(best)
    assert model.labels == ["negative", "positive"]
    assert model.head_kind == config["model"]["init_args"].get("head", "new")
    prediction = model.predict_texts(["good film"])[0]
    assert prediction["label"] in ("negative", "positive")
    assert sum(prediction["probabilities"].values()) == pytest.approx(1.0)


def test_cli_predictions_of_a_text_file_name_texts_labels_and_probabilities(
    tiny_bert_and_tsv, tmp_path: Path, capsys
) -> None:
    """`lightning-recipes predict --config ... --ckpt_path` and `lightning run --stages=[predict]` write
    predictions.csv: the texts in file order, the data's class names, predict_texts' probabilities."""
    model_dir, data_dir = tiny_bert_and_tsv
    texts = ["good film", "the plot was dull", "great fun, bad movie"]  # a comma: a quoted CSV cell
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n")
    recipe = REPO / "recipes" / "text" / "sst2_minilm_local.yaml"
    common = [*FAST, *overrides(model_dir, data_dir)]
    fit = ["run", str(recipe), "--stages=[fit]", f"--trainer.default_root_dir={tmp_path / 'fit'}"]
    assert main([*fit, *common]) == 0, capsys.readouterr().err[-3000:]
    best = capsys.readouterr().out.split("Best checkpoint:")[1].split()[0]
    expected = TextClassifier.load_from_checkpoint(best).predict_texts(texts)

    predict = [f"--ckpt_path={best}", f"--data.init_args.predict_file={tmp_path / 'texts.txt'}"]
    commands = {
        "predict": ["predict", "--config", str(recipe), *common, *predict],
        "run": ["run", str(recipe), "--stages=[predict]", *common, *predict],
    }
    for name, args in commands.items():
        logs = tmp_path / f"logs_{name}"
        args = [*args, f"--trainer.logger.init_args.save_dir={logs}", f"--trainer.default_root_dir={logs}"]
        assert main(args) == 0, capsys.readouterr().err[-3000:]
        (path,) = logs.rglob("predictions.csv")
        if name == "run":
            assert f"Predictions:     {path}" in capsys.readouterr().out  # in the run's summary
        rows = list(csv.DictReader(path.open()))
        assert list(rows[0]) == ["index", "sentence", "label", "prob_negative", "prob_positive"]
        assert [r["sentence"] for r in rows] == texts
        assert [int(r["index"]) for r in rows] == [0, 1, 2]
        assert [r["label"] for r in rows] == [e["label"] for e in expected]
        for row, want in zip(rows, expected, strict=True):
            probs = {name: float(row[f"prob_{name}"]) for name in ("negative", "positive")}
            assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
            assert probs == pytest.approx(want["probabilities"], abs=1e-5)
        saved = torch.load(path.with_suffix(".pt"))
        assert saved["probabilities"].shape == (3, 2) and saved["meta"]["sentence"] == texts
        assert saved["label_names"] == ["negative", "positive"]
