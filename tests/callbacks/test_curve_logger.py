"""CurveLogger inside a Trainer: files, summary, loggers, DDP padding, several loaders.

The curves and statistics themselves, against scikit-learn: test_curve_metrics.py.
"""

from __future__ import annotations

import csv
import json
import os
import textwrap
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lightning_recipes import DataSpec, connect
from lightning_recipes.callbacks import CurveLogger
from lightning_recipes.callbacks.curve_logger import format_summary
from lightning_recipes.modules._classification import ClassificationModule


class ScoreModel(ClassificationModule):
    """Logits are the inputs: known predictions (the head only gives the optimizer a parameter)."""

    def __init__(self, num_classes: int = 3, task: str = "multiclass") -> None:
        super().__init__(num_classes=num_classes, task=task)
        self.backbone = nn.Identity()
        self.head = nn.Linear(1, 1, bias=False)

    def forward(self, x):
        return x + 0.0 * self.head.weight.sum()

    def logits_and_target(self, batch):
        x, y = batch
        return self(x), y


class NamedData(L.LightningDataModule):
    def __init__(self, x, y, classes, batch_size=8, sampler=None):
        super().__init__()
        self.data, self.classes, self.batch_size, self.sampler = (
            TensorDataset(x, y),
            classes,
            batch_size,
            sampler,
        )

    def accept_input_spec(self, spec):
        pass

    def data_spec(self):  # the handshake gives the model these class names
        return DataSpec(label_names=self.classes)

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=self.batch_size)

    def val_dataloader(self):
        return DataLoader(self.data, batch_size=self.batch_size, sampler=self.sampler)

    test_dataloader = val_dataloader


def connected(model, data):
    """``model`` after the handshake with ``data`` (as the CLI does)."""
    connect(model, data)
    return model


def toy_data(n=37, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=g) * 2
    y = torch.randint(0, c, (n,), generator=g)
    return x, y


def trainer(tmp_path, callbacks, logger=False, **kwargs):
    options = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
        callbacks=callbacks,
    )
    options.update(kwargs)
    return L.Trainer(**options)


def test_trainer_files_summary_and_sklearn(tmp_path, capsys):
    x, y = toy_data()
    dm = NamedData(x, y, ["ant", "bee", "cow"])
    curves = CurveLogger(thresholds=None)
    t = trainer(tmp_path, [curves])
    t.fit(connected(ScoreModel(), dm), dm)
    t.test(connected(ScoreModel(), dm), dm)

    probs = x.softmax(-1).numpy()
    for stage in ("val", "test"):
        res = curves.last_results[stage]
        assert res.class_names == ["ant", "bee", "cow"]
        assert res.auroc["macro"] == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr"), abs=1e-5)
        assert int(res.confusion.sum()) == len(y)
    assert t.callback_metrics["test/auroc"].item() == pytest.approx(
        curves.last_results["test"].auroc["macro"]
    )

    folder = tmp_path / "curves" / "val_epoch000"
    names = {p.name for p in folder.iterdir()}
    assert {"roc.png", "pr.png", "confusion_matrix.png", "roc.csv", "pr.csv", "metrics.csv"} <= names
    from PIL import Image

    for png in ("roc.png", "pr.png", "confusion_matrix.png"):
        with Image.open(folder / png) as im:
            assert im.size[0] > 100 and im.size[1] > 100
    with open(folder / "roc.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["curve"] for r in rows} == {"ant", "bee", "cow", "micro"}
    ant = [(float(r["fpr"]), float(r["tpr"])) for r in rows if r["curve"] == "ant"]
    fpr, tpr, _ = skm.roc_curve(y == 0, probs[:, 0], drop_intermediate=False)
    np.testing.assert_allclose(np.array(ant)[-1], [fpr[-1], tpr[-1]])
    assert np.trapezoid([t for _, t in ant], [f for f, _ in ant]) == pytest.approx(
        skm.roc_auc_score(y == 0, probs[:, 0]), abs=1e-5
    )
    with open(folder / "metrics.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["class"] for r in table] == ["ant", "bee", "cow", "macro avg", "micro avg"]
    assert float(table[0]["recall"]) == pytest.approx(
        skm.recall_score(y, probs.argmax(1), average=None)[0], abs=1e-5
    )
    with open(folder / "confusion_matrix.csv") as f:
        matrix = [list(map(int, r[1:])) for r in list(csv.reader(f))[1:]]
    np.testing.assert_array_equal(matrix, skm.confusion_matrix(y, probs.argmax(1)))

    printed = capsys.readouterr().out
    assert "Per-class metrics (test" in printed and "macro avg" in printed and "cow" in printed
    assert format_summary(curves.last_results["test"]) in printed


def test_tensorboard_figures(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    x, y = toy_data(n=20)
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    dm = NamedData(x, y, ["a", "b", "c"])
    trainer(tmp_path, [CurveLogger(thresholds=11)], logger=logger, limit_train_batches=1).fit(
        connected(ScoreModel(), dm), dm
    )
    assert (Path(logger.log_dir) / "curves" / "val_epoch000" / "roc.png").is_file()  # run dir = log_dir
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert {"val/roc", "val/pr", "val/confusion_matrix"} <= set(events.Tags()["images"])


def test_multilabel_and_regression_modules(tmp_path):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(25, 4, generator=g), (torch.rand(25, 4, generator=g) > 0.5).long()
    curves = CurveLogger(thresholds=21, save_png=False)
    dm = NamedData(x, y.float(), ["w", "x", "y", "z"])
    trainer(tmp_path, [curves], limit_train_batches=1).fit(connected(ScoreModel(4, "multilabel"), dm), dm)
    res = curves.last_results["val"]
    assert res.confusion.shape == (4, 2, 2) and int(res.confusion.sum()) == 25 * 4
    assert {r["class"] for r in res.summary} >= {"w", "z", "macro avg"}
    assert not list((tmp_path / "curves" / "val_epoch000").glob("*.png"))

    reg = CurveLogger()
    trainer(tmp_path / "reg", [reg], limit_train_batches=1).fit(
        ScoreModel(1, "regression"), NamedData(x[:, :1], torch.randn(25), None)
    )
    assert reg.last_results == {}


def test_distributed_padding_is_dropped(tmp_path):
    """Two ranks' worth of a DistributedSampler, scored separately, add up to the single-process counts."""
    x, y = toy_data(n=37)  # 37 = 2 x 18 + 1: rank 1 gets one padded duplicate of sample 0
    single = CurveLogger(thresholds=21, save_png=False, save_csv=False)
    trainer(tmp_path, [single]).validate(ScoreModel(), NamedData(x, y, None), verbose=False)
    totals = torch.zeros(3, 3, dtype=torch.long)
    for rank in (0, 1):
        sampler = DistributedSampler(TensorDataset(x, y), num_replicas=2, rank=rank, shuffle=False)
        assert len(sampler) == 19
        part = CurveLogger(thresholds=21, save_png=False, save_csv=False)
        dm = NamedData(x, y, None, batch_size=5, sampler=sampler)
        trainer(tmp_path, [part], use_distributed_sampler=False).validate(ScoreModel(), dm, verbose=False)
        totals += part.last_results["val"].confusion
    torch.testing.assert_close(totals, single.last_results["val"].confusion)


DDP_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import lightning as L
    import torch
    sys.path.insert(0, {tests!r})
    from test_curve_logger import CurveLogger, NamedData, ScoreModel, connect, toy_data

    devices = int(sys.argv[1])
    x, y = toy_data(n=37, c=4)
    curves = CurveLogger(thresholds=33, dirpath=sys.argv[2], save_png=False)
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                        max_epochs=1, limit_train_batches=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[curves])
    dm = NamedData(x, y, ["a", "b", "c", "d"], batch_size=4)
    model = ScoreModel(4)
    connect(model, dm)
    trainer.fit(model, dm)
    res = curves.last_results["val"]
    module = {{k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}}
    rows = curves.last_mistakes["val"].rows()
    mistakes = [[r["true_label"], r["pred_label"], r["confidence"]] for r in rows]
    out = {{"rank": trainer.global_rank, "auroc": res.auroc, "ap": res.ap,
            "confusion": res.confusion.tolist(), "summary": res.summary, "module": module,
            "mistakes": mistakes}}
    with open(sys.argv[2] + f"/result_rank{{trainer.global_rank}}.json", "w") as f:
        json.dump(out, f)
    """
)


@pytest.mark.slow
def test_ddp_two_processes_equal_one(tmp_path, run_script):
    source = DDP_SCRIPT.format(tests=str(Path(__file__).parent))
    results = {}
    for devices in (1, 2):
        out = tmp_path / f"dev{devices}"
        out.mkdir()
        run_script(source, devices, out, env={"MASTER_PORT": str(29500 + os.getpid() % 1000)})
        results[devices] = [json.loads(p.read_text()) for p in sorted(out.glob("result_rank*.json"))]
    assert len(results[2]) == 2
    one = results[1][0]
    for rank_result in results[2]:  # every rank computes the synced result
        assert rank_result["confusion"] == one["confusion"]
        assert rank_result["auroc"] == pytest.approx(one["auroc"], abs=1e-6)
        assert rank_result["ap"] == pytest.approx(one["ap"], abs=1e-6)
        assert rank_result["summary"] == one["summary"]
        assert rank_result["mistakes"] == one["mistakes"]  # gathered from both ranks, repeats left out
        # the module's own metrics leave out the sample DDP's sampler repeats too (37 = 19 + 18)
        for key in ("val/acc", "val/f1", "val/precision", "val/recall", "val/mcc"):
            assert rank_result["module"][key] == pytest.approx(one["module"][key], abs=1e-6), key
    assert sum(map(sum, one["confusion"])) == 37
    assert len(one["mistakes"]) == 20 and sorted(one["mistakes"], key=lambda m: -m[2]) == one["mistakes"]
    # files written once, by rank zero, and equal to the single-process ones
    assert (tmp_path / "dev2" / "val_epoch000" / "roc.csv").read_text() == (
        tmp_path / "dev1" / "val_epoch000" / "roc.csv"
    ).read_text()


def test_two_val_loaders_and_every_n_epochs(tmp_path):
    x, y = toy_data(n=12)

    class TwoLoaders(NamedData):
        def val_dataloader(self):
            return [
                DataLoader(self.data, batch_size=5),
                DataLoader(TensorDataset(x[:7], y[:7]), batch_size=5),
            ]

    class Model(ScoreModel):
        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            return super().validation_step(batch, batch_idx)

    curves = CurveLogger(thresholds=11, every_n_epochs=2, save_png=False)
    trainer(tmp_path, [curves], max_epochs=3, limit_train_batches=1).fit(Model(), TwoLoaders(x, y, None))
    assert int(curves.last_results["val_dl0"].confusion.sum()) == 12
    assert int(curves.last_results["val_dl1"].confusion.sum()) == 7
    folders = sorted(p.name for p in (tmp_path / "curves").iterdir())
    assert folders == ["val_dl0_epoch000", "val_dl0_epoch002", "val_dl1_epoch000", "val_dl1_epoch002"]


def test_default_scores_about_ten_validations_per_run_and_the_last():
    from types import SimpleNamespace

    def scored(curves: CurveLogger, max_epochs: int | None) -> list[int]:
        epochs = range(max_epochs if max_epochs and max_epochs > 0 else 12)
        return [
            e for e in epochs if curves.scores_epoch(SimpleNamespace(current_epoch=e, max_epochs=max_epochs))
        ]

    assert scored(CurveLogger(), 8) == list(range(8))  # short runs: every epoch
    assert scored(CurveLogger(), 30) == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 29]  # 11 folders, not 30
    assert scored(CurveLogger(), 25) == [0, 3, 6, 9, 12, 15, 18, 21, 24]  # the last is on the period
    assert scored(CurveLogger(), -1) == list(range(12))  # no known end: every epoch
    assert scored(CurveLogger(every_n_epochs=4), 30) == [0, 4, 8, 12, 16, 20, 24, 28]  # as asked
    with pytest.raises(ValueError, match="every_n_epochs must be >= 1"):
        CurveLogger(every_n_epochs=0)
