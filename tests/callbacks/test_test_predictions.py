"""PredictionWriter's test table: test_predictions.csv, one row per test input in dataset order, the input
columns kept beside the pred_* columns, consistent with the logged test metrics (also under DDP)."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from lightning_recipes import (
    CausalLM,
    ImageClassifier,
    ImageDataModule,
    TextClassifier,
    TextDataModule,
    connect,
)
from lightning_recipes.callbacks import PredictionWriter
from lightning_recipes.cli import main


def table_accuracy(rows: list[dict]) -> float:
    return sum(r["pred_label"] == r["label"] for r in rows) / len(rows)


def test_images_of_the_test_split_keep_path_label_and_csv_columns(
    image_folder, tiny_trainer_kwargs: dict, tmp_path: Path
) -> None:
    root = image_folder(splits=("train", "test"), per_class=3)
    for split in ("train", "test"):
        files = sorted((root / split).rglob("*.png"), key=lambda p: (p.name, p.parent.name))  # classes mixed
        rows = [f"{p.relative_to(root)},{p.parent.name},cam{i % 2}" for i, p in enumerate(files)]
        (root / f"{split}.csv").write_text("path,label,camera\n" + "\n".join(rows) + "\n")
    dm = ImageDataModule(
        train_file=str(root / "train.csv"), test_file=str(root / "test.csv"), val_fraction=0.0, batch_size=4,
        image_size=32,
    )  # fmt: skip
    model = ImageClassifier("test_resnet", num_classes=3, pretrained=False)
    connect(model, dm)
    writer = PredictionWriter(output_dir=str(tmp_path / "out"))
    trainer = L.Trainer(**{**tiny_trainer_kwargs, "limit_test_batches": 1.0}, callbacks=[writer])
    (logged,) = trainer.test(model, datamodule=dm, verbose=False)

    assert writer.test_path == tmp_path / "out" / "test_predictions.csv" and writer.path is None
    table = list(csv.DictReader(writer.test_path.open()))
    assert list(table[0]) == [
        "index", "path", "label", "camera", "pred_label", "pred_prob_a", "pred_prob_b", "pred_prob_c",
    ]  # fmt: skip
    assert writer.test_num_rows == len(table) == len(dm.test_set) == 9
    assert [r["path"] for r in table] == [str(p) for p, _ in dm.test_set.samples]  # dataset order
    assert [int(r["index"]) for r in table] == list(range(9))
    assert [(str(Path(r["path"]).relative_to(root)), r["label"], r["camera"]) for r in table] == [
        tuple(line.split(",")) for line in (root / "test.csv").read_text().split()[1:]
    ]  # the ground truth and the CSV's columns, as written
    probs = torch.tensor([[float(r[f"pred_prob_{c}"]) for c in "abc"] for r in table])
    assert [r["pred_label"] for r in table] == ["abc"[i] for i in probs.argmax(-1)]
    assert table_accuracy(table) == pytest.approx(logged["test/acc"], abs=1e-6)
    saved = torch.load(writer.test_path.with_suffix(".pt"))
    assert saved["target"].tolist() == ["abc".index(r["label"]) for r in table]
    assert saved["metrics"]["test/acc"] == pytest.approx(logged["test/acc"])
    assert not (tmp_path / "out" / "predictions.csv").exists()  # the predict table is another file


def test_a_text_file_in_length_order_comes_back_in_file_order_with_every_column(
    tiny_bert: Path, sentiment_csv: Path, tiny_trainer_kwargs: dict, tmp_path: Path
) -> None:
    texts = ["good film", "a great fun night out", "awful", "a boring film", "the plot was fun", "hate it"]
    truth = ["pos", "pos", "neg", "neg", "pos", "neg"]
    lines = [f"id{i},{t},{y},web" for i, (t, y) in enumerate(zip(texts, truth, strict=True))]
    (tmp_path / "test.csv").write_text("id,text,label,source\n" + "\n".join(lines) + "\n")
    dm = TextDataModule(
        train_file=str(sentiment_csv / "train.csv"),
        test_file=str(tmp_path / "test.csv"),
        text_column="text",
        batch_size=4,
        group_by_length=True,  # evaluated shortest first: the rows must still come in file order
        cache_dir=str(tmp_path / "cache"),
    )
    model = TextClassifier(str(tiny_bert), num_classes=2)
    connect(model, dm)
    writer = PredictionWriter(output_dir=str(tmp_path / "out"))
    trainer = L.Trainer(**tiny_trainer_kwargs, callbacks=[writer])
    (logged,) = trainer.test(model, datamodule=dm, verbose=False)

    table = list(csv.DictReader(writer.test_path.open()))
    assert list(table[0]) == [
        "index", "id", "text", "label", "source", "pred_label", "pred_prob_neg", "pred_prob_pos",
    ]  # fmt: skip
    assert [(r["index"], r["id"], r["text"], r["label"], r["source"]) for r in table] == [
        (str(i), f"id{i}", t, y, "web") for i, (t, y) in enumerate(zip(texts, truth, strict=True))
    ]
    model.eval()
    with torch.no_grad():  # each row's probabilities are the model's for that row's text
        inputs = dict(model.tokenizer(texts, padding=True, return_tensors="pt"))
        expected = model.probabilities(model.class_logits(model.evaluation_logits(inputs)))
    probs = torch.tensor([[float(r["pred_prob_neg"]), float(r["pred_prob_pos"])] for r in table])
    assert torch.allclose(probs, expected, atol=1e-5)
    assert table_accuracy(table) == pytest.approx(logged["test/acc"], abs=1e-6)


def test_the_samples_a_distributed_sampler_repeats_are_dropped(
    image_folder, tiny_trainer_kwargs: dict, tmp_path: Path
) -> None:
    """One process evaluating rank 1's share of 7 images (1, 3, 5, then 0 again): 3 rows, as the metrics."""
    root = image_folder(splits=("train", "test"), per_class=3)
    for name in ("1.png", "2.png"):
        (root / "test" / "c" / name).unlink()
    dm = ImageDataModule(root=str(root), val_fraction=0.0, batch_size=2, image_size=32)
    model = ImageClassifier("test_resnet", num_classes=3, pretrained=False)
    connect(model, dm)
    dm.setup("test")
    sampler = DistributedSampler(dm.test_set, num_replicas=2, rank=1, shuffle=False)
    writer = PredictionWriter(output_dir=str(tmp_path / "out"))
    trainer = L.Trainer(**{**tiny_trainer_kwargs, "limit_test_batches": 1.0}, callbacks=[writer])
    (logged,) = trainer.test(model, DataLoader(dm.test_set, batch_size=2, sampler=sampler), verbose=False)
    table = list(csv.DictReader(writer.test_path.open()))
    assert [int(r["index"]) for r in table] == [1, 3, 5]
    assert [r["path"] for r in table] == [str(dm.test_set.samples[i][0]) for i in (1, 3, 5)]
    assert table_accuracy(table) == pytest.approx(logged["test/acc"], abs=1e-6)


def test_a_language_models_test_writes_no_table(tiny_trainer_kwargs: dict, tmp_path: Path) -> None:
    torch.manual_seed(0)
    lm = CausalLM(config={"n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 16, "vocab_size": 50})
    batches = DataLoader([{"input_ids": torch.randint(0, 50, (2, 8))}] * 2, batch_size=None)
    writer = PredictionWriter(output_dir=str(tmp_path / "out"))
    (logged,) = L.Trainer(**tiny_trainer_kwargs, callbacks=[writer]).test(lm, batches, verbose=False)
    assert "test/ppl" in logged and writer.test_path is None and not list(tmp_path.rglob("test_predictions*"))


def test_lightning_run_names_the_test_table_in_its_summary(tiny_recipe: Path, capsys) -> None:
    assert main(["run", str(tiny_recipe), "--trainer.max_epochs=1"]) == 0  # stages: fit, then test
    out = capsys.readouterr().out
    summary = [line.split(":", 1) for line in out.splitlines() if " rows -> " not in line]
    lines = {key: value.strip() for key, value in (s for s in summary if len(s) == 2)}
    path, run_dir = Path(lines["Test predictions"]), Path(lines["Run directory"])
    assert path == run_dir / "test_predictions.csv" and "Predictions:" not in out  # no predict stage
    table = list(csv.DictReader(path.open()))
    assert len(table) == 12 and list(table[0])[:3] == ["index", "path", "label"]
    final = out.split("Final metrics:")[1].split("\n")[0]
    acc = float(final.split("test/acc=")[1].split(",")[0])
    assert table_accuracy(table) == pytest.approx(acc, abs=1e-4)


DDP_SCRIPT = """
import sys
from pathlib import Path

import lightning as L

from lightning_recipes import ImageClassifier, ImageDataModule, connect
from lightning_recipes.callbacks import PredictionWriter

if __name__ == "__main__":
    root, out = map(Path, sys.argv[1:3])
    L.seed_everything(0)
    model = ImageClassifier("test_resnet", num_classes=3, pretrained=False)
    data = ImageDataModule(root=str(root), val_fraction=0.0, batch_size=2, image_size=32)
    connect(model, data)
    writer = PredictionWriter(output_dir=str(out))
    options = {"logger": False, "enable_progress_bar": False, "callbacks": [writer]}
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", **options)
    (logged,) = trainer.test(model, datamodule=data, verbose=False)
    print(f"rank={trainer.global_rank} path={writer.test_path} acc={logged['test/acc']!r}", flush=True)
"""


@pytest.mark.slow
def test_ddp_on_two_processes_writes_each_test_input_once_in_order(
    run_script, image_folder, tmp_path
) -> None:
    root = image_folder(splits=("train", "test"), per_class=3)
    for name in ("1.png", "2.png"):  # 7 test images: rank 0 gets 0, 2, 4, 6 and rank 1 1, 3, 5 and 0 again
        (root / "test" / "c" / name).unlink()
    proc = run_script(DDP_SCRIPT, root, tmp_path / "out", env={"PYTHONWARNINGS": "ignore"})
    printed = proc.stdout + proc.stderr
    table_path = tmp_path / "out" / "test_predictions.csv"
    assert printed.count("Test predictions: 7 rows -> ") == 1, printed[-3000:]
    assert f"rank=0 path={table_path}" in printed and "rank=1 path=None" in printed
    table = list(csv.DictReader(table_path.open()))
    paths = [str(p) for c in "abc" for p in sorted((root / "test" / c).glob("*.png"))]
    assert [r["path"] for r in table] == paths and [int(r["index"]) for r in table] == list(range(7))
    acc = float(printed.split("rank=0 path=")[1].split("acc=")[1].split()[0])
    assert table_accuracy(table) == pytest.approx(acc, abs=1e-6)
