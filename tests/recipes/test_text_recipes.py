"""The recipes in recipes/text/ run through the CLI with a tiny local BERT and a tiny SST-2-style tsv."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from lightning_recipes import TextClassifier
from lightning_recipes.cli import main

REPO = Path(__file__).resolve().parents[2]
# As-is recipes (no training) run with a tiny fine-tuned classifier in tests/recipes/test_asis_recipes.py;
# distill recipes (their teacher: a fine-tuned classifier with its own head) as shipped, with a tiny
# fine-tuned stand-in, in tests/recipes/test_shipped_recipes.py. The rest run here on a tiny base BERT.
RECIPES = sorted(
    p
    for p in (REPO / "recipes" / "text").glob("*.yaml")
    if not any(f"# Scenario: {s}" in p.read_text() for s in ("as-is", "distill"))
)
WORDS = ["good", "great", "fun", "bad", "awful", "dull", "film", "movie", "the", "plot", "was"]
FAST = [
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
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


#: The scratch recipes' encoder, shrunk: built from this config with random weights.
TINY_CONFIG = {
    "model_type": "bert",
    "vocab_size": 100,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}


def is_scratch(recipe: Path) -> bool:
    return yaml.safe_load(recipe.read_text())["model"]["init_args"].get("model_name_or_path", "") is None


def overrides(model_dir: Path, data_dir: Path, scratch: bool = False) -> list[str]:
    """The recipe on the tiny tsv files: with the tiny BERT folder, or (``scratch``) a tiny config and a
    WordPiece tokenizer trained on the tsv."""
    model = (
        [
            f"--model.init_args.config={json.dumps(TINY_CONFIG)}",
            "--data.init_args.wordpiece_vocab_size=100",
            f"--data.init_args.tokenizer_dir={data_dir / 'wordpiece'}",
        ]
        if scratch
        else [f"--model.init_args.model_name_or_path={model_dir}"]
    )
    return [
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",  # the recipes' LearningRateMonitor needs one
        f"--trainer.logger.init_args.save_dir={data_dir / 'logs'}",
        *model,
        "--data.init_args.dataset=null",
        f"--data.init_args.train_file={data_dir / 'train.tsv'}",
        f"--data.init_args.val_file={data_dir / 'dev.tsv'}",
        f"--data.init_args.test_file={data_dir / 'dev.tsv'}",
        "--data.init_args.train_size=null",
        "--data.init_args.label_names=[negative,positive]",
        "--data.init_args.batch_size=4",
        "--data.init_args.num_workers=0",
        f"--data.init_args.cache_dir={data_dir / 'cache'}",
    ]


def test_text_recipes_exist() -> None:
    names = {p.name for p in RECIPES}
    assert {
        "sst2_bert_base.yaml",
        "sst2_distilbert.yaml",
        "sst2_minilm_local.yaml",
        "sst2_minilm_add_layers_local.yaml",
        "sst2_bert_base_add_layers.yaml",
        "sst2_bert_scratch_local.yaml",
    } <= names


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
        *overrides(model_dir, data_dir, scratch=is_scratch(recipe)),
    ]
    code = main(args)
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    assert "test/acc=" in out.out and "Best checkpoint:" in out.out
    assert list(tmp_path.rglob("*.png")), "the recipes' CurveLogger writes ROC/PR/confusion plots"
    best = out.out.split("Best checkpoint:")[1].split()[0]
    assert Path(best).is_file()
    model = TextClassifier.load_from_checkpoint(best)
    assert model.label_names == ["negative", "positive"]
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
        predicted = ["pred_label", "pred_prob_negative", "pred_prob_positive"]
        assert list(rows[0]) == ["index", "sentence", *predicted]
        assert [r["sentence"] for r in rows] == texts
        assert [int(r["index"]) for r in rows] == [0, 1, 2]
        assert [r["pred_label"] for r in rows] == [e["label"] for e in expected]
        for row, want in zip(rows, expected, strict=True):
            probs = {name: float(row[f"pred_prob_{name}"]) for name in ("negative", "positive")}
            assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
            assert probs == pytest.approx(want["probabilities"], abs=1e-5)
        saved = torch.load(path.with_suffix(".pt"))
        assert saved["probabilities"].shape == (3, 2) and saved["meta"]["sentence"] == texts
        assert saved["label_names"] == ["negative", "positive"]


def read_metrics(logs: Path) -> list[dict[str, str]]:
    (path,) = logs.glob("*/version_*/metrics.csv")  # the CSVLogger's (the CurveLogger writes others)
    return list(csv.DictReader(path.open()))


def test_add_layers_recipe_trains_the_head_alone_then_unfreezes_with_decayed_lrs(
    tiny_bert_and_tsv, tmp_path: Path, capsys, monkeypatch
) -> None:
    """The add-layers moment: epoch 0 trains the new head on a frozen encoder; at each milestone one more
    layer group (top first) becomes trainable, at head LR x backbone_lr_ratio x layer_decay**depth."""
    model_dir, data_dir = tiny_bert_and_tsv
    recipe = REPO / "recipes" / "text" / "sst2_minilm_add_layers_local.yaml"
    unfreeze = yaml.safe_load(recipe.read_text())["trainer"]["callbacks"][0]["init_args"]
    model_args = yaml.safe_load(recipe.read_text())["model"]["init_args"]
    head_lr = model_args["lr"]
    trainable: list[list[bool]] = []  # per epoch: is each layer group (bottom to top) trainable

    def record(self: TextClassifier) -> None:  # the module's hook runs after the callbacks'
        trainable.append([all(p.requires_grad for p in g.parameters()) for g in self.layer_groups()])

    monkeypatch.setattr(TextClassifier, "on_train_epoch_start", record, raising=False)
    epochs = unfreeze["milestones"][-1] + 1
    args = [*FAST, f"--trainer.max_epochs={epochs}", f"--trainer.default_root_dir={tmp_path / 'run'}"]
    args += [f"--trainer.limit_{split}_batches=1" for split in ("train", "val", "test")]
    assert main(["run", str(recipe), *args, *overrides(model_dir, data_dir)]) == 0, capsys.readouterr().err
    # tiny BERT: 3 groups (embeddings, layer 0, layer 1); milestones [1, 2, 3]
    assert trainable == [[False, False, False], [False, False, True], [False, True, True], [True, True, True]]
    # LearningRateMonitor(logging_interval=epoch): one row per epoch, at its first step; the n-th distinct
    # step is epoch n (the step values themselves differ between Lightning releases)
    rows = [
        r
        for r in read_metrics(data_dir / "logs")
        if any(k.startswith("lr-AdamW/") and v for k, v in r.items())
    ]
    epoch_of = {step: i for i, step in enumerate(sorted({int(r["step"]) for r in rows}))}
    lrs = {}
    for row in rows:
        for key, value in row.items():
            if key.startswith("lr-AdamW/") and value:
                lrs.setdefault(key.removeprefix("lr-AdamW/"), {})[epoch_of[int(row["step"])]] = float(value)
    top = head_lr * unfreeze["backbone_lr_ratio"]
    decay = model_args["layer_decay"]
    assert lrs["head"] == pytest.approx({e: head_lr for e in range(epochs)})
    assert lrs["backbone.2"] == pytest.approx({1: top, 2: top, 3: top})
    assert lrs["backbone.1"] == pytest.approx({2: top * decay, 3: top * decay})
    assert lrs["backbone.0"] == pytest.approx({3: top * decay**2})


def test_scratch_recipe_starts_from_random_weights_and_a_wordpiece_trained_on_the_data(
    tiny_bert_and_tsv, tmp_path: Path, capsys, monkeypatch
) -> None:
    """The scratch moment: no pretrained file is read, the weights are BERT's random initialisation, and
    the tokenizer's vocabulary is learnt from the training sentences (and travels in the checkpoint)."""
    from transformers import PreTrainedModel

    _, data_dir = tiny_bert_and_tsv

    def refuse(*args, **kwargs):
        raise AssertionError(f"a scratch recipe loaded pretrained files: {args} {kwargs}")

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(refuse))
    start: dict[str, torch.Tensor] = {}

    def record(self: TextClassifier) -> None:
        start.update({k: v.detach().clone() for k, v in self.backbone.state_dict().items()})

    monkeypatch.setattr(TextClassifier, "on_train_start", record, raising=False)
    recipe = REPO / "recipes" / "text" / "sst2_bert_scratch_local.yaml"
    args = ["run", str(recipe), *FAST, f"--trainer.default_root_dir={tmp_path / 'run'}"]
    assert main([*args, *overrides(None, data_dir, scratch=True)]) == 0, capsys.readouterr().err
    best = capsys.readouterr().out.split("Best checkpoint:")[1].split()[0]
    # BertModel's initialisation: N(0, 0.02) matrices, LayerNorm weight 1 and bias 0
    embeddings = start["embeddings.word_embeddings.weight"]
    assert embeddings.shape == (TINY_CONFIG["vocab_size"], TINY_CONFIG["hidden_size"])
    assert embeddings[1:].std().item() == pytest.approx(0.02, rel=0.15)
    assert torch.equal(start["embeddings.LayerNorm.weight"], torch.ones(TINY_CONFIG["hidden_size"]))
    assert not start["encoder.layer.0.attention.self.query.bias"].any()

    saved = TextClassifier.load_from_checkpoint(best)
    vocab = saved.tokenizer.get_vocab()
    words = {"good", "film", "bad", "movie", "great", "fun", "the", "plot", "was", "dull"}  # the tsv's words
    assert words <= set(vocab) and "awful" not in vocab  # in WORDS, not in the sentences
    assert len(vocab) < TINY_CONFIG["vocab_size"]  # nothing but the data's words, pieces and specials
    assert (data_dir / "wordpiece" / "tokenizer.json").is_file()
    assert saved.tokenizer.convert_ids_to_tokens(saved.tokenizer("Good film")["input_ids"]) == [
        "[CLS]",
        "good",
        "film",
        "[SEP]",
    ]
    # the checkpoint brings back the tokenizer the data module trains: predicting from it is allowed
    logs = tmp_path / "predict"
    predict = ["predict", "--config", str(recipe), *FAST, *overrides(None, data_dir, scratch=True)]
    predict += [f"--ckpt_path={best}", f"--trainer.logger.init_args.save_dir={logs}"]
    assert main(predict) == 0, capsys.readouterr().err[-3000:]
    (path,) = logs.rglob("predictions.csv")
    texts = ["good film", "bad movie", "great fun", "the plot was dull"] * 4  # dev.tsv, the test split
    predicted = [r["pred_label"] for r in csv.DictReader(path.open())]
    assert predicted == [p["label"] for p in saved.predict_texts(texts)]


def shipped(tmp_path: Path) -> list[str]:
    """Run a recipe as shipped (real ../shared weights and data), a few batches, logs in tmp_path."""
    return [
        *FAST,
        "--trainer.limit_val_batches=1",
        "--trainer.limit_test_batches=1",
        f"--trainer.default_root_dir={tmp_path / 'run'}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
        f"--data.init_args.cache_dir={tmp_path / 'cache'}",
    ]


@pytest.mark.slow
def test_add_layers_recipe_as_shipped_unfreezes_minilm_top_down(
    shared_dir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(REPO)  # the recipe's ../shared paths are relative to the repository root
    recipe = REPO / "recipes" / "text" / "sst2_minilm_add_layers_local.yaml"
    trainable: list[int] = []  # per epoch: how many of MiniLM's 7 layer groups are trainable

    def record(self: TextClassifier) -> None:
        trainable.append(sum(all(p.requires_grad for p in g.parameters()) for g in self.layer_groups()))

    monkeypatch.setattr(TextClassifier, "on_train_epoch_start", record, raising=False)
    args = ["run", str(recipe), *shipped(tmp_path), "--trainer.max_epochs=4"]
    assert main(args) == 0, capsys.readouterr().err[-3000:]
    assert trainable == [0, 1, 2, 7]  # milestones [1, 2, 3]: the last one unfreezes all
    lrs = {}  # each group's LR as last logged (the groups keep theirs: no scheduler)
    for row in read_metrics(tmp_path / "logs"):
        lrs.update(
            {k.removeprefix("lr-AdamW/"): float(v) for k, v in row.items() if k.startswith("lr-") and v}
        )
    assert lrs == pytest.approx({"head": 1e-3, **{f"backbone.{i}": 5e-5 * 0.8 ** (6 - i) for i in range(7)}})


@pytest.mark.slow
def test_scratch_recipe_as_shipped_learns_its_wordpiece_from_sst2(
    shared_dir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(REPO)
    recipe = REPO / "recipes" / "text" / "sst2_bert_scratch_local.yaml"
    tokenizer_dir = tmp_path / "tokenizer"
    args = ["run", str(recipe), *shipped(tmp_path), f"--data.init_args.tokenizer_dir={tokenizer_dir}"]
    assert main(args) == 0, capsys.readouterr().err[-3000:]
    best = capsys.readouterr().out.split("Best checkpoint:")[1].split()[0]
    model = TextClassifier.load_from_checkpoint(best)
    tokenizer = model.tokenizer
    assert (tokenizer_dir / "tokenizer.json").is_file()
    assert 2000 < len(tokenizer) <= 8000  # 2,000 sentences: every word seen twice, and pieces
    assert {"movie", "film", "funny", "boring"} <= set(tokenizer.get_vocab())
    dev = [line.split("\t")[0] for line in (shared_dir / "data/sst2/dev.tsv").read_text().splitlines()[1:]]
    ids = [i for text in dev for i in tokenizer(text, add_special_tokens=False)["input_ids"]]
    assert ids.count(tokenizer.unk_token_id) / len(ids) < 0.01  # pieces cover the unseen dev sentences
    assert model.backbone.config.num_hidden_layers == 4 and model.backbone.config.hidden_size == 256
