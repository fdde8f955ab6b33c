"""CurveLogger's mistakes report (the most confidently wrong examples, the most confused pairs) and the epoch
its folders and headers are named by (the tested checkpoint's)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_recipes import DataSpec, ImageClassifier, ImageDataModule, TextClassifier, connect
from lightning_recipes.callbacks import CurveLogger
from lightning_recipes.modules._classification import ClassificationModule

# (true class, logits): the wrong ones put L on one other class, so their confidence e^L / (e^L + 2) orders
# them by L; rows 4 and 9 tie (L = 2) in different batches of 4, and the earlier one is reported.
CASES = [
    (0, [5, 0, 0]),
    (0, [0, 4, 0]),  # wrong, L=4
    (0, [0, 0, 1]),  # wrong, L=1
    (1, [0, 3, 0]),
    (1, [2, 0, 0]),  # wrong, L=2
    (1, [0, 0, 6]),  # wrong, L=6
    (2, [0, 0, 2]),
    (2, [0, 5, 0]),  # wrong, L=5
    (2, [0, 3, 0]),  # wrong, L=3
    (0, [0, 2, 0]),  # wrong, L=2
]


class ScoreModel(ClassificationModule):
    """Logits are the inputs (the head only gives the optimizer a parameter)."""

    def __init__(self, num_classes: int = 3, task: str = "multiclass") -> None:
        super().__init__(num_classes=num_classes, task=task)
        self.backbone = nn.Identity()
        self.head = nn.Linear(1, 1, bias=False)

    def forward(self, x):
        return x + 0.0 * self.head.weight.sum()

    def logits_and_target(self, batch):
        return self(batch[0]), batch[1]


class Files(Dataset):
    """``(logits, target, {"path": file})`` items, as ImageDataModule's evaluation batches carry paths."""

    def __init__(self, x, y, paths):
        self.x, self.y, self.paths = x, y, paths

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i], {"path": self.paths[i]}


class FileData(L.LightningDataModule):
    def __init__(self, x, y, paths, classes, batch_size=4):
        super().__init__()
        self.data, self.classes, self.batch_size = Files(x, y, paths), classes, batch_size

    def accept_input_spec(self, spec):
        pass

    def data_spec(self):
        return DataSpec(label_names=self.classes)

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=self.batch_size)

    val_dataloader = test_dataloader = train_dataloader


def trainer(tmp_path, callbacks, **kwargs):
    options = dict(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
        callbacks=callbacks,
    )
    return L.Trainer(**{**options, **kwargs})


def png_files(folder: Path, n: int) -> list[str]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (24, 24), (20 * i, 100, 200)).save(folder / f"{i}.png")
    return [str(folder / f"{i}.png") for i in range(n)]


def test_the_most_confident_mistakes_and_confused_pairs_in_order(tmp_path, capsys):
    y = torch.tensor([t for t, _ in CASES])
    x = torch.tensor([logits for _, logits in CASES], dtype=torch.float)
    paths = png_files(tmp_path / "inputs", len(CASES))
    dm = FileData(x, y, paths, ["ant", "bee", "cow"])
    curves = CurveLogger(thresholds=11, mistakes=5)
    model = ScoreModel()
    connect(model, dm)
    trainer(tmp_path, [curves]).validate(model, dm, verbose=False)

    folder = tmp_path / "curves" / "val_epoch000"
    rows = list(csv.DictReader((folder / "mistakes.csv").open()))
    assert list(rows[0]) == ["rank", "path", "true_label", "pred_label", "confidence", "true_prob"]
    order = [5, 7, 1, 8, 4]  # L = 6, 5, 4, 3, 2 (row 9, also L = 2, comes later)
    assert [r["path"] for r in rows] == [paths[i] for i in order]
    names = ["ant", "bee", "cow"]
    assert [(r["true_label"], r["pred_label"]) for r in rows] == [
        (names[CASES[i][0]], names[x[i].argmax()]) for i in order
    ]
    for row, i in zip(rows, order, strict=True):
        level = max(CASES[i][1])
        assert float(row["confidence"]) == pytest.approx(math.exp(level) / (math.exp(level) + 2), abs=1e-6)
        assert float(row["true_prob"]) == pytest.approx(1 / (math.exp(level) + 2), abs=1e-6)
    assert [int(r["rank"]) for r in rows] == [1, 2, 3, 4, 5]

    # true -> predicted counts: ant->bee 2 (rows 1, 9), cow->bee 2, ant->cow 1, bee->ant 1, bee->cow 1
    pairs = list(csv.reader((folder / "most_confused.csv").open()))
    assert pairs[0] == ["true_label", "pred_label", "count", "share"]
    assert [(t, p, int(c)) for t, p, c, _ in pairs[1:]] == [
        ("ant", "bee", 2),
        ("cow", "bee", 2),
        ("ant", "cow", 1),
        ("bee", "ant", 1),
        ("bee", "cow", 1),
    ]
    assert [float(share) for *_, share in pairs[1:]] == pytest.approx([2 / 4, 2 / 3, 1 / 4, 1 / 3, 1 / 3])
    confusion = curves.last_results["val"].confusion
    assert int(confusion[0, 1]) == 2 and int(confusion[2, 1]) == 2
    from PIL import Image

    with Image.open(folder / "mistakes.png") as grid:  # 5 images in one row of the grid
        assert grid.size[0] > 5 * 100 and grid.size[1] > 100

    trainer(tmp_path, [curves]).test(model, dm, verbose=False)
    printed = capsys.readouterr().out
    assert "Per-class metrics (test, epoch 0)" in printed
    assert (
        "Most confused (test, epoch 0; true -> predicted: count): ant -> bee: 2, cow -> bee: 2, ant -> cow: 1"
        in (printed)
    )
    assert (tmp_path / "curves" / "test_epoch000" / "mistakes.csv").read_text() == (
        folder / "mistakes.csv"
    ).read_text()


def test_no_report_for_multilabel_regression_or_mistakes_0(tmp_path):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(10, 3, generator=g), (torch.rand(10, 3, generator=g) > 0.5).float()
    paths = png_files(tmp_path / "inputs", 10)
    multilabel = CurveLogger(thresholds=11)
    trainer(tmp_path / "ml", [multilabel]).validate(ScoreModel(3, "multilabel"), FileData(x, y, paths, None))
    assert multilabel.last_results and multilabel.last_mistakes == {}
    assert not list((tmp_path / "ml").rglob("mistakes*")) and not list(
        (tmp_path / "ml").rglob("most_confused*")
    )

    off = CurveLogger(thresholds=11, mistakes=0)
    trainer(tmp_path / "off", [off]).validate(ScoreModel(), FileData(x, y.argmax(-1), paths, None))
    assert off.last_results and off.last_mistakes == {} and not list((tmp_path / "off").rglob("mistakes*"))
    with pytest.raises(ValueError, match="mistakes must be >= 0"):
        CurveLogger(mistakes=-1)


def test_images_and_texts_of_real_data_modules_are_named_in_the_report(
    image_folder, tiny_bert, sentiment_csv, tmp_path
):
    """What the model really predicts for each file or text, computed here by hand, is what is reported."""
    from tiny_text_models import datamodule

    root = image_folder(splits=("train", "val"), per_class=3)
    images = ImageDataModule(root=str(root), batch_size=4, image_size=32)
    texts = datamodule(sentiment_csv, batch_size=5)
    for name, model, dm in (
        ("images", ImageClassifier("test_resnet", num_classes=3, pretrained=False), images),
        ("texts", TextClassifier(str(tiny_bert), num_classes=2), texts),
    ):
        connect(model, dm)
        curves = CurveLogger(thresholds=11, mistakes=4)
        trainer(tmp_path / name, [curves]).validate(model, dm, verbose=False)
        column = "path" if name == "images" else "text"
        by_input, labels = {}, model.label_names
        model.eval()
        with torch.no_grad():  # every validation example, with its identity
            for batch in dm.val_dataloader():
                probs = model.probabilities(model.logits_and_target(batch)[0])
                target = batch[1] if name == "images" else batch["labels"]
                meta = batch[2] if name == "images" else batch["meta"]
                for key, p, t in zip(meta[column], probs, target, strict=True):
                    by_input[key] = (labels[int(t)], labels[int(p.argmax())], float(p.max()))
        wrong = sorted((v[2], k) for k, v in by_input.items() if v[0] != v[1])[::-1][:4]
        folder = tmp_path / name / "curves" / "val_epoch000"
        rows = list(csv.DictReader((folder / "mistakes.csv").open()))
        assert len(rows) == len(wrong) > 0
        assert [float(r["confidence"]) for r in rows] == pytest.approx([c for c, _ in wrong], abs=1e-5)
        for row in rows:
            assert (row["true_label"], row["pred_label"]) == by_input[row[column]][:2]
            assert float(row["confidence"]) == pytest.approx(by_input[row[column]][2], abs=1e-5)
        assert (folder / "mistakes.png").is_file() == (name == "images")


class Peaked(ScoreModel):
    """A model whose logged ``val/score`` peaks at epoch 1 of 3, so the best checkpoint is not the last."""

    def __init__(self):
        super().__init__()
        self.save_hyperparameters()

    def on_validation_epoch_end(self):
        self.log("val/score", -abs(self.current_epoch - 1.0))


def test_folders_and_headers_name_the_epoch_of_the_weights_tested(tmp_path, capsys):
    y = torch.tensor([t for t, _ in CASES])
    x = torch.tensor([logits for _, logits in CASES], dtype=torch.float)
    dm = FileData(x, y, png_files(tmp_path / "inputs", len(CASES)), ["ant", "bee", "cow"])
    best = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", filename="best-{epoch:02d}", monitor="val/score", mode="max"
    )
    model = Peaked()
    connect(model, dm)
    t = trainer(
        tmp_path, [best, CurveLogger(thresholds=11, save_png=False)], max_epochs=3, enable_checkpointing=True
    )
    t.fit(model, dm)
    assert Path(best.best_model_path).name == "best-epoch=01.ckpt" and t.current_epoch == 3
    curves = tmp_path / "curves"

    t.test(model, dm, verbose=False)  # the weights in memory: the last epoch trained
    assert "Per-class metrics (test, epoch 2)" in capsys.readouterr().out
    t.test(model, dm, ckpt_path="best", verbose=False)
    assert "Per-class metrics (test, epoch 1)" in capsys.readouterr().out
    assert model.checkpoint_epoch == 1
    t.validate(model, dm, ckpt_path=best.best_model_path, verbose=False)
    assert sorted(p.name for p in curves.iterdir()) == [
        "test_epoch001",
        "test_epoch002",
        "val_epoch000",
        "val_epoch001",
        "val_epoch002",
    ]

    reloaded = Peaked.load_from_checkpoint(best.best_model_path)  # a fresh trainer, the checkpoint's epoch
    trainer(tmp_path / "reloaded", [CurveLogger(thresholds=11, save_png=False)]).test(
        reloaded, dm, verbose=False
    )
    assert "Per-class metrics (test, epoch 1)" in capsys.readouterr().out
    assert [p.name for p in (tmp_path / "reloaded" / "curves").iterdir()] == ["test_epoch001"]
    refit = trainer(tmp_path / "refit", [], max_epochs=3)
    refit.fit(reloaded, dm, ckpt_path=best.best_model_path)  # training moves on from the checkpoint
    assert reloaded.checkpoint_epoch is None
