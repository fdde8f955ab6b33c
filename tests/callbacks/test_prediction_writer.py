"""PredictionWriter: one table per predict run, each input once (also under DDP), identities and names."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lightning_recipes import ImageClassifier, ImageDataModule, TextClassifier, TextDataModule, connect
from lightning_recipes.callbacks import PredictionWriter
from lightning_recipes.callbacks.prediction_writer import merge, metrics, write


def output(indices: list[int], names=("neg", "pos")) -> dict:
    """A ClassificationModule-style predict_step output whose probabilities encode the index."""
    probs = torch.tensor([[i / 10, 1 - i / 10] for i in indices])
    return {
        "probabilities": probs,
        "labels": [names[int(p.argmax())] for p in probs],
        "label_names": list(names),
        "task": "multiclass",
        "meta": {"text": [f"text {i}" for i in indices]},
    }


def test_merge_keeps_each_input_once_in_index_order_and_write_makes_one_csv(tmp_path: Path) -> None:
    # two ranks, strided as a DistributedSampler deals them; rank 1 repeats input 0 to fill its last batch
    chunks = [
        (0, [0, 2], output([0, 2])),
        (0, [4], output([4])),
        (0, [1, 3], output([1, 3])),
        (0, [0], output([0])),
    ]
    constants, rows = merge(chunks)
    assert constants == {"label_names": ["neg", "pos"], "task": "multiclass"}
    assert [row["index"] for row in rows] == [0, 1, 2, 3, 4]
    path = write(tmp_path, "predictions", rows, constants)
    assert path == tmp_path / "predictions.csv"
    table = list(csv.DictReader(path.open()))
    assert list(table[0]) == ["index", "text", "pred_label", "pred_prob_neg", "pred_prob_pos"]
    assert [r["text"] for r in table] == [f"text {i}" for i in range(5)]
    assert [float(r["pred_prob_neg"]) for r in table] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert {r["pred_label"] for r in table} == {"pos"}
    saved = torch.load(tmp_path / "predictions.pt")
    assert saved["index"].tolist() == [0, 1, 2, 3, 4] and saved["probabilities"].shape == (5, 2)
    assert saved["meta"]["text"][4] == "text 4" and saved["label_names"] == ["neg", "pos"]


def test_multilabel_lists_go_to_jsonl_and_a_bare_tensor_is_probabilities(tmp_path: Path) -> None:
    multi = {
        "probabilities": torch.tensor([[0.9, 0.8], [0.1, 0.2]]),
        "labels": [["a", "b"], []],
        "label_names": ["a", "b"],
        "task": "multilabel",
        "meta": {"path": ["x.png", "y.png"]},
    }
    (tmp_path / "predictions.csv").write_text("stale")
    path = write(tmp_path, "predictions", *reversed(merge([(0, [0, 1], multi)])))
    assert path.name == "predictions.jsonl" and not (tmp_path / "predictions.csv").exists()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0] == {"index": 0, "path": "x.png", "pred_label": ["a", "b"],
                        "pred_prob_a": pytest.approx(0.9), "pred_prob_b": pytest.approx(0.8)}  # fmt: skip
    assert lines[1]["pred_label"] == []

    constants, rows = merge([(0, [1], torch.tensor([[0.25, 0.75]])), (0, [0], torch.tensor([[0.5, 0.5]]))])
    table = list(csv.DictReader(write(tmp_path / "bare", "p", rows, constants).open()))
    assert table == [
        {"index": "0", "pred_prob_0": "0.5", "pred_prob_1": "0.5"},
        {"index": "1", "pred_prob_0": "0.25", "pred_prob_1": "0.75"},
    ]


def test_regression_writes_values_not_probabilities(tmp_path: Path) -> None:
    values = torch.tensor([4.5, 1.0])
    regression = {
        "probabilities": values,
        "labels": values.tolist(),
        "label_names": None,
        "task": "regression",
    }
    table = list(
        csv.DictReader(write(tmp_path, "predictions", *reversed(merge([(0, [0, 1], regression)]))).open())
    )
    assert table == [{"index": "0", "pred_value": "4.5"}, {"index": "1", "pred_value": "1.0"}]


def test_input_columns_stay_beside_the_pred_columns_and_labelled_rows_are_scored(tmp_path: Path) -> None:
    probs = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3], [0.2, 0.8]])
    out = {
        "probabilities": probs,
        "labels": ["neg", "pos", "neg", "pos"],
        "label_names": ["neg", "pos"],
        "task": "multiclass",
        "target": torch.tensor([0, 0, 1, 1]),
        "meta": {
            "index": ["r0", "r1", "r2", "r3"],
            "text": list("abcd"),
            "label": ["neg", "neg", "pos", "pos"],
        },
    }
    constants, rows = merge([(0, [0, 1, 2, 3], out)])
    table = list(csv.DictReader(write(tmp_path, "predictions", rows, constants).open()))
    assert list(table[0]) == [
        "index",
        "input_index",
        "text",
        "label",
        "pred_label",
        "pred_prob_neg",
        "pred_prob_pos",
    ]
    assert [r["label"] for r in table] == ["neg", "neg", "pos", "pos"]  # the ground truth, kept
    assert [r["input_index"] for r in table] == ["r0", "r1", "r2", "r3"]  # the input's own "index"
    # predicted [neg, pos, neg, pos] for [neg, neg, pos, pos]: one right per class
    assert metrics(constants, rows) == pytest.approx(
        {"acc": 0.5, "f1": 0.5, "precision": 0.5, "recall": 0.5, "mcc": 0.0}
    )
    assert metrics(constants, [{k: v for k, v in r.items() if k != "target"} for r in rows]) == {}
    assert torch.load(tmp_path / "predictions.pt")["target"].tolist() == [0, 0, 1, 1]


def test_a_labelled_text_file_keeps_every_column_and_prints_the_test_metrics(
    tiny_bert: Path, sentiment_csv: Path, tiny_trainer_kwargs: dict, tmp_path: Path, caplog
) -> None:
    from sklearn import metrics as skm

    texts = ["good film", "great fun", "awful movie", "a boring film", "the plot was fun", "hate the actors"]
    truth = ["pos", "pos", "neg", "neg", "pos", "neg"]
    lines = [f"id{i},{t},{y},web" for i, (t, y) in enumerate(zip(texts, truth, strict=True))]
    (tmp_path / "labelled.csv").write_text("id,text,label,source\n" + "\n".join(lines) + "\n")
    (tmp_path / "unknown.csv").write_text("text,label\n" + "\n".join(f"{t},maybe" for t in texts) + "\n")
    model = TextClassifier(str(tiny_bert), num_classes=2)
    writer = PredictionWriter(output_dir=str(tmp_path / "out"))
    trainer = L.Trainer(**tiny_trainer_kwargs, callbacks=[writer])

    def predict(file: str) -> list[dict]:
        dm = TextDataModule(
            train_file=str(sentiment_csv / "train.csv"),
            predict_file=str(tmp_path / file),
            text_column="text",
            batch_size=4,
            cache_dir=str(tmp_path / "cache"),
        )
        connect(model, dm)
        trainer.predict(model, datamodule=dm, return_predictions=False)
        return list(csv.DictReader(writer.path.open()))

    table = predict("labelled.csv")
    assert list(table[0]) == [
        "index",
        "id",
        "text",
        "label",
        "source",
        "pred_label",
        "pred_prob_neg",
        "pred_prob_pos",
    ]
    assert [(r["id"], r["text"], r["label"], r["source"]) for r in table] == [
        (f"id{i}", t, y, "web") for i, (t, y) in enumerate(zip(texts, truth, strict=True))
    ]
    probs = torch.tensor([[float(r["pred_prob_neg"]), float(r["pred_prob_pos"])] for r in table])
    predicted = [r["pred_label"] for r in table]
    assert predicted == [["neg", "pos"][i] for i in probs.argmax(-1)]
    expected = {
        "acc": skm.accuracy_score(truth, predicted),
        "f1": skm.f1_score(truth, predicted, average="macro", zero_division=0),
        "precision": skm.precision_score(truth, predicted, average="macro", zero_division=0),
        "recall": skm.recall_score(truth, predicted, average="macro", zero_division=0),
        "mcc": skm.matthews_corrcoef(truth, predicted),
    }
    assert writer.metrics == pytest.approx(expected, abs=1e-6)
    shown = ", ".join(f"predict/{k}={v:.4f}" for k, v in writer.metrics.items())
    assert caplog.messages.count(f"Prediction metrics (6 of 6 rows labelled): {shown}") == 1

    caplog.clear()
    table = predict("unknown.csv")  # a label the model does not know: kept as written, not scored
    assert [r["label"] for r in table] == ["maybe"] * 6 and "pred_label" in table[0]
    assert writer.metrics == {} and not any("Prediction metrics" in m for m in caplog.messages)


def test_the_test_split_of_images_is_predicted_with_its_label_and_csv_columns(
    image_folder, tiny_trainer_kwargs: dict, tmp_path: Path
) -> None:
    root = image_folder(splits=("train", "test"), per_class=2)
    for split in ("train", "test"):
        rows = [
            f"{p.relative_to(root)},{p.parent.name},cam{i % 2}"
            for i, p in enumerate(sorted((root / split).rglob("*.png")))
        ]
        (root / f"{split}.csv").write_text("path,label,camera\n" + "\n".join(rows) + "\n")
    model = ImageClassifier("test_resnet", num_classes=3, pretrained=False)
    writer = PredictionWriter(output_dir=str(tmp_path / "out"))
    for source in (
        {"train_file": str(root / "train.csv"), "test_file": str(root / "test.csv")},
        {"root": str(root)},
    ):
        dm = ImageDataModule(**source, val_fraction=0.0, batch_size=4, image_size=32)
        connect(model, dm)
        L.Trainer(**tiny_trainer_kwargs, callbacks=[writer]).predict(
            model, datamodule=dm, return_predictions=False
        )
        table = list(csv.DictReader(writer.path.open()))
        camera = ["camera"] if "test_file" in source else []
        assert list(table[0]) == [
            "index",
            "path",
            "label",
            *camera,
            "pred_label",
            "pred_prob_a",
            "pred_prob_b",
            "pred_prob_c",
        ]
        assert [(Path(r["path"]).parent.name, r["label"]) for r in table] == [(c, c) for c in "aabbcc"]
        assert all(r["camera"] == f"cam{i % 2}" for i, r in enumerate(table)) if camera else True
        hits = [r["pred_label"] == r["label"] for r in table]
        assert writer.metrics["acc"] == pytest.approx(sum(hits) / 6)


class Echo(L.LightningModule):
    """predict_step returns the batch's values as probabilities, and the batch's identity."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)

    def predict_step(self, batch, batch_idx):
        return {"probabilities": batch["x"], "meta": batch["meta"]}


def test_writer_on_a_trainer_writes_rows_in_input_order(tmp_path: Path, caplog) -> None:
    items = [{"x": torch.tensor([float(i)]), "meta": {"name": f"item{i}"}} for i in range(5)]
    writer = PredictionWriter(output_dir=str(tmp_path / "out"))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, callbacks=[writer])
    trainer.predict(Echo(), DataLoader(items, batch_size=2), return_predictions=False)
    assert writer.path == tmp_path / "out" / "predictions.csv" and writer.num_rows == 5
    table = list(csv.DictReader(writer.path.open()))
    assert [(r["index"], r["name"], r["pred_prob_0"]) for r in table[:2]] == [
        ("0", "item0", "0.0"),
        ("1", "item1", "1.0"),
    ]
    assert f"Predictions: 5 rows -> {writer.path}" in caplog.messages


DDP_SCRIPT = """
import sys
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader, DistributedSampler

from lightning_recipes import ImageClassifier, ImageDataModule, connect
from lightning_recipes.callbacks import PredictionWriter

if __name__ == "__main__":
    root, predict_root, out = map(Path, sys.argv[1:4])
    L.seed_everything(0)
    model = ImageClassifier("test_resnet", num_classes=3, pretrained=False)
    data = ImageDataModule(
        root=str(root), predict_root=str(predict_root), val_fraction=0.0, batch_size=2, image_size=32
    )
    connect(model, data)
    writer = PredictionWriter(output_dir=str(out / "lightning_sampler"))
    options = {"logger": False, "enable_progress_bar": False, "callbacks": [writer]}
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", **options)
    trainer.predict(model, datamodule=data, return_predictions=False)
    print(f"rank={trainer.global_rank} path={writer.path}", flush=True)

    # A sampler that pads: 7 inputs on 2 ranks, so rank 1 repeats input 0 in its last batch.
    sampler = DistributedSampler(data.predict_set, num_replicas=2, rank=trainer.global_rank, shuffle=False)
    writer.output_dir = str(out / "padding_sampler")
    loader = DataLoader(data.predict_set, batch_size=2, sampler=sampler)
    trainer.predict(model, loader, return_predictions=False)
    print(f"rank={trainer.global_rank} indices={list(sampler)} path={writer.path}", flush=True)
"""


@pytest.mark.slow
def test_ddp_on_two_processes_writes_each_input_once_in_order_on_rank_zero(
    run_script, image_folder, tmp_path: Path
) -> None:
    root = image_folder(splits=("train",), per_class=2, size=16)
    predict_root = image_folder(splits=("",), classes=("p", "q"), per_class=4, root=tmp_path / "unlabelled")
    (predict_root / "q" / "3.png").unlink()  # 7 images: an odd number, so ranks get 4 and 3
    paths = [str(p) for p in sorted(predict_root.rglob("*.png"))]
    assert len(paths) == 7
    proc = run_script(DDP_SCRIPT, root, predict_root, tmp_path / "out", env={"PYTHONWARNINGS": "ignore"})
    printed = proc.stdout + proc.stderr
    assert printed.count("Predictions: 7 rows -> ") == 2, printed[-3000:]  # once per predict: rank zero
    for name in ("lightning_sampler", "padding_sampler"):
        table = tmp_path / "out" / name / "predictions.csv"
        assert f"path={table}" in printed  # rank zero's writer wrote it; rank one's wrote nothing
        rows = list(csv.DictReader(table.open()))
        assert [r["path"] for r in rows] == paths  # each input once, in input order
        assert [int(r["index"]) for r in rows] == list(range(7))
        assert all(r["pred_label"] in ("a", "b", "c") for r in rows)
        assert all(abs(sum(float(r[f"pred_prob_{c}"]) for c in "abc") - 1) < 1e-5 for r in rows)
        saved = torch.load(table.with_suffix(".pt"))
        assert saved["probabilities"].shape == (7, 3) and saved["meta"]["path"] == paths
    assert "rank=0 path=" in printed and "rank=1 path=None" in printed
    assert "rank=1 indices=[1, 3, 5, 0] path=None" in printed  # input 0 was predicted twice
