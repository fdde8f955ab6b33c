"""TextClassifier trained on toy sentiment data: fit, reload, predict, tasks, DDP, a real MiniLM (slow)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from spawned_ddp import SpawnedDDP
from tiny_text_models import WORDS, datamodule

from lightning_recipes import TextClassifier, TextDataModule, connect
from lightning_recipes.callbacks import PredictionWriter


def test_fit_reload_from_checkpoint_alone_and_predict_texts(
    tiny_bert: Path, sentiment_csv: Path, tiny_trainer_kwargs: dict, tmp_path: Path
) -> None:
    L.seed_everything(0)
    model = TextClassifier(str(tiny_bert), num_classes=2, lr=1e-3)
    trainer = L.Trainer(**tiny_trainer_kwargs)
    dm = datamodule(sentiment_csv)
    connect(model, dm)
    assert model.label_names == ["neg", "pos"]  # adopted from the datamodule by the handshake
    trainer.fit(model, datamodule=dm)
    assert {"train/loss", "val/loss", "val/acc", "val/f1", "val/mcc"} <= set(trainer.callback_metrics)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    before = model.predict_texts(["good film", "awful dull movie"])

    shutil.rmtree(tiny_bert)  # the reload must need neither the model folder nor the network
    reloaded = TextClassifier.load_from_checkpoint(path)
    after = reloaded.predict_texts(["good film", "awful dull movie"])
    assert reloaded.label_names == ["neg", "pos"]
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
    assert model.label_names == (names or ["LABEL_0"])  # regression: no class names, one output
    result = model.predict_texts(["good film"])[0]
    if task == "multilabel":
        assert set(result["probabilities"]) == set(names) and isinstance(result["label"], list)
    else:
        assert isinstance(result["value"], float)


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
    assert [r["pred_label"] for r in table] == [e["label"] for e in expected]
    for row, want in zip(table, expected, strict=True):
        assert {n: float(row[f"pred_prob_{n}"]) for n in ("neg", "pos")} == pytest.approx(
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
