"""PredictionWriter: one table per predict run, each input once (also under DDP), identities and names."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lightning_recipes.callbacks import PredictionWriter
from lightning_recipes.callbacks.prediction_writer import merge, write


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
    assert list(table[0]) == ["index", "text", "label", "prob_neg", "prob_pos"]
    assert [r["text"] for r in table] == [f"text {i}" for i in range(5)]
    assert [float(r["prob_neg"]) for r in table] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert {r["label"] for r in table} == {"pos"}
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
    assert lines[0] == {"index": 0, "path": "x.png", "label": ["a", "b"], "prob_a": pytest.approx(0.9),
                        "prob_b": pytest.approx(0.8)}  # fmt: skip
    assert lines[1]["label"] == []

    constants, rows = merge([(0, [1], torch.tensor([[0.25, 0.75]])), (0, [0], torch.tensor([[0.5, 0.5]]))])
    table = list(csv.DictReader(write(tmp_path / "bare", "p", rows, constants).open()))
    assert table == [
        {"index": "0", "prob_0": "0.5", "prob_1": "0.5"},
        {"index": "1", "prob_0": "0.25", "prob_1": "0.75"},
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
    assert table == [{"index": "0", "value": "4.5"}, {"index": "1", "value": "1.0"}]


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
    assert [(r["index"], r["name"], r["prob_0"]) for r in table[:2]] == [
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
        assert all(r["label"] in ("a", "b", "c") for r in rows)
        assert all(abs(sum(float(r[f"prob_{c}"]) for c in "abc") - 1) < 1e-5 for r in rows)
        saved = torch.load(table.with_suffix(".pt"))
        assert saved["probabilities"].shape == (7, 3) and saved["meta"]["path"] == paths
    assert "rank=0 path=" in printed and "rank=1 path=None" in printed
    assert "rank=1 indices=[1, 3, 5, 0] path=None" in printed  # input 0 was predicted twice
