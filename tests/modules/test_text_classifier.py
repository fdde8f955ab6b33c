"""TextClassifier on tiny BERT / DistilBERT models and a tiny WordPiece tokenizer built in tmp_path."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from spawned_ddp import SpawnedDDP

from lightning_recipes import TextClassifier, TextDataModule, connect
from lightning_recipes._hub import PretrainedLoadError
from lightning_recipes.callbacks import PredictionWriter

WORDS = [
    "good",
    "great",
    "fine",
    "fun",
    "love",
    "bad",
    "awful",
    "dull",
    "boring",
    "hate",
    "movie",
    "film",
    "the",
    "a",
    "plot",
    "actors",
    "was",
    "is",
]
POSITIVE = ["good film", "great movie", "the plot was fun", "love the actors", "a fine film", "great fun"]
NEGATIVE = ["bad film", "awful movie", "the plot was dull", "hate the actors", "a boring film", "awful dull"]


def make_tokenizer(folder: Path) -> Path:
    """A lower-casing WordPiece tokenizer over ``WORDS``, saved as a transformers tokenizer folder."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    BertWordPieceTokenizer({w: i for i, w in enumerate(vocab)}, lowercase=True).save(
        str(folder / "tokenizer.json")
    )
    BertTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), model_max_length=64).save_pretrained(
        folder
    )
    return folder


def make_model(folder: Path, kind: str = "bert") -> Path:
    """A 2-layer, 32-wide BERT or DistilBERT with random weights plus the tiny tokenizer, in ``folder``."""
    from transformers import AutoModel, BertConfig, DistilBertConfig

    torch.manual_seed(0)
    if kind == "bert":
        config = BertConfig(
            vocab_size=64,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    else:
        config = DistilBertConfig(
            vocab_size=64, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64
        )
    AutoModel.from_config(config).save_pretrained(folder)
    make_tokenizer(folder)
    return folder


@pytest.fixture
def tiny_bert(tmp_path: Path) -> Path:
    return make_model(tmp_path / "tiny-bert", "bert")


@pytest.fixture
def tiny_distilbert(tmp_path: Path) -> Path:
    return make_model(tmp_path / "tiny-distilbert", "distilbert")


@pytest.fixture
def sentiment_csv(tmp_path: Path) -> Path:
    """train/dev CSVs (``text,label`` with labels ``pos``/``neg``), 24 and 12 rows."""
    for name, repeat in (("train", 2), ("dev", 1)):
        rows = [f"{t},pos" for t in POSITIVE] + [f"{t},neg" for t in NEGATIVE]
        (tmp_path / f"{name}.csv").write_text("text,label\n" + "\n".join(rows * repeat) + "\n")
    return tmp_path


def datamodule(folder: Path, **kwargs) -> TextDataModule:
    options = {"text_column": "text", "batch_size": 8, "cache_dir": str(folder / "cache")}
    return TextDataModule(
        train_file=str(folder / "train.csv"),
        val_file=str(folder / "dev.csv"),
        test_file=str(folder / "dev.csv"),
        **{**options, **kwargs},
    )


def encode(model: TextClassifier, texts: list[str]) -> dict[str, torch.Tensor]:
    return dict(model.tokenizer(texts, padding=True, return_tensors="pt"))


@pytest.mark.parametrize("kind", ["bert", "distilbert"])
@pytest.mark.parametrize(("head", "pooling"), [("new", "cls"), ("new", "mean"), ("pretrained", "cls")])
def test_backbone_head_and_forward(tmp_path: Path, kind: str, head: str, pooling: str) -> None:
    folder = make_model(tmp_path / kind, kind)
    model = TextClassifier(str(folder), num_classes=3, head=head, pooling=pooling)
    assert type(model.backbone).__name__ == ("BertModel" if kind == "bert" else "DistilBertModel")
    logits = model(encode(model, ["good film", "the plot was dull and boring"]))
    assert logits.shape == (2, 3)
    names = {n for n, _ in model.named_parameters()}
    assert all(n.startswith(("backbone.", "head.")) for n in names)
    # Every parameter is used (no pretrained pooler dangling beside a new head), so DDP needs no
    # find_unused_parameters: a loss over the logits gives every parameter a gradient.
    logits.sum().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    if head == "pretrained":
        assert "classifier" in model.head


def test_pretrained_weights_are_loaded(tiny_bert: Path) -> None:
    from transformers import AutoModel

    reference = AutoModel.from_pretrained(tiny_bert)
    model = TextClassifier(str(tiny_bert), num_classes=2)
    fresh = TextClassifier(str(tiny_bert), num_classes=2, pretrained=False)
    key = "embeddings.word_embeddings.weight"
    assert torch.equal(model.backbone.state_dict()[key], reference.state_dict()[key])
    assert not torch.equal(fresh.backbone.state_dict()[key], reference.state_dict()[key])


@pytest.mark.parametrize("kind", ["bert", "distilbert"])
def test_layer_groups_bottom_to_top(tmp_path: Path, kind: str) -> None:
    model = TextClassifier(str(make_model(tmp_path / kind, kind)), num_classes=2)
    groups = model.layer_groups()
    assert len(groups) == 3
    assert groups[0] is model.backbone.embeddings
    layers = model.backbone.encoder.layer if kind == "bert" else model.backbone.transformer.layer
    assert groups[1] is layers[0] and groups[2] is layers[1]


def test_layer_decay_param_groups(tiny_bert: Path) -> None:
    model = TextClassifier(
        str(tiny_bert), num_classes=2, head="pretrained", lr=1e-3, backbone_lr=1e-4, layer_decay=0.5
    )
    groups = {g["name"]: g for g in model.param_groups()}
    assert list(groups) == ["head", "backbone.0", "backbone.1", "backbone.2"]  # embeddings, layer 0, layer 1
    assert groups["head"]["lr"] == 1e-3
    assert groups["backbone.2"]["lr"] == pytest.approx(1e-4)
    assert groups["backbone.1"]["lr"] == pytest.approx(5e-5)
    assert groups["backbone.0"]["lr"] == pytest.approx(2.5e-5)
    blocks = model.layer_groups()
    for i, block in enumerate(blocks[:-1]):  # the same blocks as layer_groups(), bottom to top
        assert [id(p) for p in groups[f"backbone.{i}"]["params"]] == [id(p) for p in block.parameters()]
    # Every backbone parameter is in exactly one group; the pooler (outside the layers) joins the top one.
    grouped = [id(p) for name, g in groups.items() if name != "head" for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.backbone.parameters())
    assert any(p is model.backbone.pooler.dense.weight for p in groups["backbone.2"]["params"])
    # Frozen blocks leave the optimizer.
    for p in model.layer_groups()[0].parameters():
        p.requires_grad_(False)
    names = [g["name"] for g in model.param_groups()]
    assert names == ["head", "backbone.1", "backbone.2"]
    optimizer = model.configure_optimizers()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-3, 5e-5, 1e-4])


def test_without_decay_two_groups(tiny_bert: Path) -> None:
    model = TextClassifier(str(tiny_bert), num_classes=2, lr=1e-3, backbone_lr=1e-5)
    assert [(g["name"], g["lr"]) for g in model.param_groups()] == [("head", 1e-3), ("backbone", 1e-5)]


def test_invalid_arguments(tiny_bert: Path) -> None:
    with pytest.raises(ValueError, match="pooling='max'"):
        TextClassifier(str(tiny_bert), pooling="max")
    with pytest.raises(ValueError, match="layer_decay must be in"):
        TextClassifier(str(tiny_bert), layer_decay=1.5)
    with pytest.raises(ValueError, match="label_names has 3 names"):
        TextClassifier(str(tiny_bert), num_classes=2, label_names=["a", "b", "c"])


def test_unreachable_hub_id_names_it() -> None:
    with pytest.raises(PretrainedLoadError, match="no-such-org/no-such-model") as info:
        TextClassifier("no-such-org/no-such-model", num_classes=2)
    assert "local" in str(info.value)


def test_gradient_checkpointing_same_loss_and_grads(tiny_bert: Path) -> None:
    inputs = None
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = TextClassifier(
            str(tiny_bert), num_classes=2, dropout=0.0, gradient_checkpointing=checkpointing
        )
        model.train()
        model.backbone.config.hidden_dropout_prob = 0.0
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        inputs = inputs or encode(model, ["good film", "awful dull movie"])
        loss = model.loss(model(inputs), torch.tensor([1, 0]))
        loss.backward()
        results.append((loss.item(), model.backbone.embeddings.word_embeddings.weight.grad.clone()))
    layer = model.backbone.encoder.layer[0]
    assert layer.gradient_checkpointing
    assert results[0][0] == pytest.approx(results[1][0], abs=1e-6)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-6)


def test_fit_reload_from_checkpoint_alone_and_predict_texts(
    tiny_bert: Path, sentiment_csv: Path, tiny_trainer_kwargs: dict, tmp_path: Path
) -> None:
    L.seed_everything(0)
    model = TextClassifier(str(tiny_bert), num_classes=2, lr=1e-3)
    trainer = L.Trainer(**tiny_trainer_kwargs)
    dm = datamodule(sentiment_csv)
    connect(model, dm)
    assert model.labels == ["neg", "pos"]  # adopted from the datamodule by the handshake
    trainer.fit(model, datamodule=dm)
    assert {"train/loss", "val/loss", "val/acc", "val/f1", "val/mcc"} <= set(trainer.callback_metrics)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    before = model.predict_texts(["good film", "awful dull movie"])

    shutil.rmtree(tiny_bert)  # the reload must need neither the model folder nor the network
    reloaded = TextClassifier.load_from_checkpoint(path)
    after = reloaded.predict_texts(["good film", "awful dull movie"])
    assert reloaded.labels == ["neg", "pos"]
    assert [r["label"] for r in after] == [r["label"] for r in before]
    for a, b in zip(after, before, strict=True):
        assert set(a["probabilities"]) == {"neg", "pos"}
        assert a["probabilities"]["pos"] == pytest.approx(b["probabilities"]["pos"], abs=1e-5)
        assert sum(a["probabilities"].values()) == pytest.approx(1.0)


def test_learns_toy_sentiment(tiny_bert: Path, sentiment_csv: Path, tiny_trainer_kwargs: dict) -> None:
    L.seed_everything(0)
    model = TextClassifier(str(tiny_bert), num_classes=2, lr=3e-3, pooling="mean")
    kwargs = {**tiny_trainer_kwargs, "max_epochs": 15, "limit_train_batches": None, "limit_val_batches": None}
    trainer = L.Trainer(**kwargs)
    dm = datamodule(sentiment_csv)
    connect(model, dm)
    trainer.fit(model, datamodule=dm)
    assert trainer.callback_metrics["val/acc"] >= 0.9
    labels = [r["label"] for r in model.predict_texts(["great fun movie", "awful boring plot"])]
    assert labels == ["pos", "neg"]


def test_num_classes_mismatch_is_reported(
    tiny_bert: Path, sentiment_csv: Path, tiny_trainer_kwargs: dict
) -> None:
    model = TextClassifier(str(tiny_bert), num_classes=3)
    with pytest.raises(ValueError, match=r"2 classes \['neg', 'pos'\].*num_classes=3"):
        connect(model, datamodule(sentiment_csv))


def test_predict_file_returns_label_names(
    tiny_bert: Path, sentiment_csv: Path, tiny_trainer_kwargs: dict, tmp_path: Path
) -> None:
    (tmp_path / "texts.txt").write_text("good film\nawful movie\nthe plot\n")
    model = TextClassifier(str(tiny_bert), num_classes=2, label_names=["neg", "pos"])
    dm = datamodule(sentiment_csv, predict_file=str(tmp_path / "texts.txt"))
    connect(model, dm)
    out = L.Trainer(**tiny_trainer_kwargs).predict(model, datamodule=dm)
    assert sum(len(b["labels"]) for b in out) == 3
    assert all(label in ("neg", "pos") for b in out for label in b["labels"])
    probs = torch.cat([b["probabilities"] for b in out])
    assert probs.shape == (3, 2) and torch.allclose(probs.sum(-1), torch.ones(3))
    expected = [r["label"] for r in model.predict_texts(["good film", "awful movie", "the plot"])]
    assert [label for b in out for label in b["labels"]] == expected


@pytest.mark.parametrize("task", ["multilabel", "regression"])
def test_multilabel_and_regression_metrics(
    tiny_bert: Path, tmp_path: Path, task: str, tiny_trainer_kwargs: dict
) -> None:
    if task == "multilabel":
        rows = ["good film,pos|film", "awful movie,neg", "great fun,pos", "dull film,neg|film"]
        names, expected = ["film", "neg", "pos"], {"val/acc", "val/f1", "val/mcc"}
    else:
        rows = ["good film,4.5", "awful movie,1.0", "great fun,5.0", "dull film,1.5"]
        names, expected = None, {"val/rmse", "val/mae"}
    (tmp_path / "train.csv").write_text("text,label\n" + "\n".join(rows * 2) + "\n")
    (tmp_path / "dev.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    dm = datamodule(tmp_path, task=task, label_separator="|" if task == "multilabel" else None, batch_size=4)
    model = TextClassifier(
        str(tiny_bert), num_classes=3 if task == "multilabel" else 1, task=task, huber_delta=1.0
    )
    trainer = L.Trainer(**tiny_trainer_kwargs)
    connect(model, dm)
    trainer.fit(model, datamodule=dm)
    assert expected <= set(trainer.callback_metrics)
    assert model.labels == names
    result = model.predict_texts(["good film"])[0]
    if task == "multilabel":
        assert set(result["probabilities"]) == set(names) and isinstance(result["label"], list)
    else:
        assert isinstance(result["value"], float)


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("distilbert", {"head": "pretrained"}),
        ("bert", {"head": "pretrained"}),
        ("bert", {"hidden_dim": 32, "activation": "tanh"}),
        ("distilbert", {"hidden_dim": 32, "activation": "relu"}),
    ],
)
def test_save_pretrained_reads_in_transformers(tmp_path: Path, kind: str, options: dict) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = make_model(tmp_path / kind, kind)
    model = TextClassifier(str(folder), num_classes=3, label_names=["neg", "neu", "pos"], **options).eval()
    torch.nn.init.normal_(
        model.head[-1].weight if "hidden_dim" in options else model.head["classifier"].weight
    )
    out = model.save_pretrained(tmp_path / "export")
    hf = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert hf.config.id2label == {0: "neg", 1: "neu", 2: "pos"} and hf.config.label2id["pos"] == 2
    inputs = dict(tokenizer(["good film", "the plot was dull"], padding=True, return_tensors="pt"))
    with torch.no_grad():
        assert torch.allclose(hf(**inputs).logits, model(inputs), atol=1e-5)


def test_save_pretrained_rejects_inexpressible_head(tiny_bert: Path, tmp_path: Path) -> None:
    model = TextClassifier(str(tiny_bert), num_classes=2, pooling="mean")
    with pytest.raises(ValueError, match="head='pretrained'"):
        model.save_pretrained(tmp_path / "export")


@pytest.mark.slow
def test_minilm_finetunes_on_sst2_slice(shared_dir: Path, tmp_path: Path) -> None:
    """The real pretrained MiniLM, 2,000 SST-2 sentences, 1 epoch: dev accuracy far above chance (0.5)."""
    L.seed_everything(42)
    dm = TextDataModule(
        train_file=str(shared_dir / "data/sst2/train.tsv"),
        val_file=str(shared_dir / "data/sst2/dev.tsv"),
        text_column="sentence",
        label_names=["negative", "positive"],
        train_size=2000,
        batch_size=32,
        eval_batch_size=128,
        group_by_length=True,
        cache_dir=str(tmp_path / "cache"),
    )
    # The new head learns at 1e-3, the pretrained encoder at 5e-5; both decay linearly to 0 over 63 steps.
    model = TextClassifier(
        str(shared_dir / "models/all-MiniLM-L6-v2"),
        num_classes=2,
        pooling="mean",
        lr=1e-3,
        backbone_lr=5e-5,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.0, total_iters=63),
        scheduler_interval="step",  # the schedule above counts optimizer steps
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    connect(model, dm)
    trainer.fit(model, datamodule=dm)
    assert trainer.callback_metrics["val/acc"] > 0.75
    assert [r["label"] for r in model.predict_texts(["a gorgeous, moving film", "dull and lifeless"])] == [
        "positive",
        "negative",
    ]


class _SeenRows(L.Callback):
    """Records each rank's training rows (token ids without padding); rank 0 writes all ranks' to a file."""

    def __init__(self, path: Path) -> None:
        self.path, self.rows = path, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        ids, mask = batch["input_ids"], batch["attention_mask"].bool()
        self.rows += [ids[i][mask[i]].tolist() for i in range(len(ids))]

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        import json

        import torch.distributed as dist

        gathered: list = [None] * trainer.world_size
        dist.all_gather_object(gathered, self.rows)
        if trainer.is_global_zero:
            self.path.write_text(json.dumps(gathered))


@pytest.mark.slow
def test_ddp_two_cpu_ranks_split_length_grouped_batches(tiny_bert: Path, tmp_path: Path) -> None:
    """DDP (gloo, 2 CPU processes): the ranks draw the same length-grouped order (seeded, not the global
    RNG), which Lightning's distributed sampler shards: together they see every row once, no overlap."""
    import json

    n = len(WORDS)
    texts = [f"{WORDS[i % n]} {WORDS[i // n]}" + " the" * (i % 5) for i in range(32)]  # 32 distinct rows
    rows = [f"{t},{'pos' if i % 2 else 'neg'}" for i, t in enumerate(texts)]
    for name in ("train", "dev"):
        (tmp_path / f"{name}.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    dm = datamodule(tmp_path, batch_size=4, group_by_length=True)
    model = TextClassifier(str(tiny_bert), num_classes=2, lr=1e-3)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=SpawnedDDP(),
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[_SeenRows(tmp_path / "seen.json")],
        default_root_dir=str(tmp_path),
    )
    connect(model, dm)
    trainer.fit(model, datamodule=dm)
    assert "val/acc" in trainer.callback_metrics
    rank0, rank1 = json.loads((tmp_path / "seen.json").read_text())
    assert len(rank0) == len(rank1) == 16
    expected = datamodule(tmp_path, tokenizer=str(tiny_bert))  # the spawned ranks set up their own copies
    expected.setup("fit")
    assert sorted(map(tuple, rank0 + rank1)) == sorted(map(tuple, expected.train_set["input_ids"]))


def test_prediction_rows_carry_text_pairs_and_the_test_split_is_predicted_without_a_file(
    tiny_bert: Path, sentiment_csv: Path, tiny_trainer_kwargs: dict, tmp_path: Path
) -> None:
    pairs = [("good film", "great movie"), ("awful movie", "a boring film"), ("the plot", "was fun")]
    rows = "\n".join(f"{a},{b}" for a, b in pairs)
    (tmp_path / "pairs.csv").write_text(f"text,second\n{rows}\n")
    for name in ("train", "dev"):  # the same sentences as pairs
        lines = (sentiment_csv / f"{name}.csv").read_text().splitlines()
        (tmp_path / f"{name}_pairs.csv").write_text(
            "text,second,label\n" + "\n".join(f"{t},{t},{y}" for t, y in (r.split(",") for r in lines[1:]))
        )
    dm = TextDataModule(
        train_file=str(tmp_path / "train_pairs.csv"),
        test_file=str(tmp_path / "dev_pairs.csv"),
        predict_file=str(tmp_path / "pairs.csv"),
        text_column="text",
        text_pair_column="second",
        batch_size=2,
        cache_dir=str(tmp_path / "cache"),
    )
    model = TextClassifier(str(tiny_bert), num_classes=2)
    connect(model, dm)
    writer = PredictionWriter(output_dir=str(tmp_path / "out"))
    L.Trainer(**tiny_trainer_kwargs, callbacks=[writer]).predict(
        model, datamodule=dm, return_predictions=False
    )
    table = list(csv.DictReader(writer.path.open()))
    assert [(r["text"], r["second"]) for r in table] == pairs
    expected = model.predict_texts(pairs)
    assert [r["label"] for r in table] == [e["label"] for e in expected]
    for row, want in zip(table, expected, strict=True):
        assert {n: float(row[f"prob_{n}"]) for n in ("neg", "pos")} == pytest.approx(
            want["probabilities"], abs=1e-5
        )

    # Without predict_file, the test split is predicted, its texts in the rows.
    dm = TextDataModule(**{**dict(dm.hparams), "predict_file": None})
    connect(model, dm)
    L.Trainer(**tiny_trainer_kwargs, callbacks=[writer]).predict(
        model, datamodule=dm, return_predictions=False
    )
    table = list(csv.DictReader(writer.path.open()))
    test_texts = [line.split(",")[0] for line in (tmp_path / "dev_pairs.csv").read_text().splitlines()[1:]]
    assert [r["text"] for r in table] == test_texts and len(table) == 12
