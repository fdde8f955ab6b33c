"""The recipes in recipes/text/ run through the CLI with a tiny local BERT and a tiny SST-2-style tsv."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lightning_recipes import TextClassifier
from lightning_recipes.cli import main

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes" / "text").glob("*.yaml"))
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
    import torch
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


def test_cli_predict_on_a_text_file(tiny_bert_and_tsv, tmp_path: Path, capsys) -> None:
    model_dir, data_dir = tiny_bert_and_tsv
    (tmp_path / "texts.txt").write_text("good film\nawful plot\n")
    recipe = REPO / "recipes" / "text" / "sst2_minilm_local.yaml"
    args = [
        "predict",
        "--config",
        str(recipe),
        *FAST,
        f"--trainer.default_root_dir={tmp_path / 'run'}",
        *overrides(model_dir, data_dir),
        f"--data.init_args.predict_file={tmp_path / 'texts.txt'}",
    ]
    assert main(args) == 0, capsys.readouterr().err[-3000:]
