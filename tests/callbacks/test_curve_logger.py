"""CurveLogger: curves and statistics against scikit-learn, DDP padding, files, loggers, constant memory."""

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
from sklearn.preprocessing import label_binarize
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lightning_recipes import DataSpec, connect
from lightning_recipes.callbacks import CurveLogger
from lightning_recipes.callbacks.curve_logger import CurveMetrics, downsample, format_summary
from lightning_recipes.modules._classification import ClassificationModule


def grid_probs(rng: np.random.Generator, n: int, c: int, k: int = 16) -> np.ndarray:
    """Rows of probabilities on the grid j/k (k a power of two: exact in float32), summing to 1."""
    return rng.multinomial(k, rng.dirichlet(np.ones(c)), size=n) / k


def noisy_labels(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """Labels correlated with the scores, so the curves are not trivial."""
    return np.array([rng.choice(len(p), p=0.5 * p + 0.5 / len(p)) for p in probs])


# ---- against scikit-learn ------------------------------------------------------------------------


def test_binary_matches_sklearn():
    rng = np.random.default_rng(0)
    n = 101  # odd: does not divide by 2 processes
    p1 = rng.integers(0, 17, n) / 16  # on the threshold grid: binned curves are exact
    y = (rng.random(n) < 0.25 + 0.5 * p1).astype(int)
    probs = np.stack([1 - p1, p1], 1)
    metrics = CurveMetrics("multiclass", 2, thresholds=17, class_names=["neg", "pos"])
    for chunk in np.array_split(np.arange(n), 4):
        metrics.update(torch.tensor(probs[chunk], dtype=torch.float32), torch.tensor(y[chunk]))
    res = metrics.compute()

    assert sorted(res.roc) == ["neg", "pos"]  # binary: each class's own curve (score column, positives)
    assert res.auroc["pos"] == pytest.approx(skm.roc_auc_score(y, p1), abs=1e-6)
    assert res.ap["pos"] == pytest.approx(skm.average_precision_score(y, p1), abs=1e-6)
    assert res.auroc["neg"] == pytest.approx(skm.roc_auc_score(1 - y, 1 - p1), abs=1e-6)
    assert res.ap["neg"] == pytest.approx(skm.average_precision_score(1 - y, 1 - p1), abs=1e-6)
    first = res.summary[0]  # the per-class table has no blank for the first class of a two-class task
    assert first["class"] == "neg" and first["auroc"] == res.auroc["neg"] and first["ap"] == res.ap["neg"]
    fpr, tpr, _ = skm.roc_curve(y, p1, drop_intermediate=False)
    ours = torch.stack(res.roc["pos"][:2], 1).double().numpy()
    exact = np.stack([fpr, tpr], 1)[1:]  # sklearn starts at (0, 0) with threshold inf
    distance = np.abs(exact[:, None, :] - ours[None]).max(-1).min(1)
    assert distance.max() < 1e-6  # every exact ROC point is on the binned curve
    pred = probs.argmax(1)
    np.testing.assert_array_equal(res.confusion.numpy(), skm.confusion_matrix(y, pred))
    precision, recall, f1, support = skm.precision_recall_fscore_support(y, pred, zero_division=0)
    rows = res.summary[:2]
    np.testing.assert_allclose([r["precision"] for r in rows], precision, atol=1e-6)
    np.testing.assert_allclose([r["recall"] for r in rows], recall, atol=1e-6)
    np.testing.assert_allclose([r["f1"] for r in rows], f1, atol=1e-6)
    assert [r["support"] for r in rows] == support.tolist()
    # specificity of class 1 is the recall of class 0
    assert rows[1]["specificity"] == pytest.approx(recall[0], abs=1e-6)


def test_multiclass_matches_sklearn():
    rng = np.random.default_rng(1)
    n, c = 203, 4
    probs = grid_probs(rng, n, c)
    y = noisy_labels(rng, probs)
    metrics = CurveMetrics("multiclass", c, thresholds=17)
    for chunk in np.array_split(np.arange(n), 5):
        metrics.update(torch.tensor(probs[chunk], dtype=torch.float32), torch.tensor(y[chunk]))
    res = metrics.compute()

    onehot = label_binarize(y, classes=range(c))
    per_class_auc = skm.roc_auc_score(onehot, probs, average=None)
    per_class_ap = skm.average_precision_score(onehot, probs, average=None)
    np.testing.assert_allclose([res.auroc[str(i)] for i in range(c)], per_class_auc, atol=1e-6)
    np.testing.assert_allclose([res.ap[str(i)] for i in range(c)], per_class_ap, atol=1e-6)
    assert res.auroc["macro"] == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr"), abs=1e-6)
    assert res.auroc["micro"] == pytest.approx(skm.roc_auc_score(onehot, probs, average="micro"), abs=1e-6)
    assert res.ap["macro"] == pytest.approx(per_class_ap.mean(), abs=1e-6)
    assert res.ap["micro"] == pytest.approx(
        skm.average_precision_score(onehot, probs, average="micro"), abs=1e-6
    )

    pred = probs.argmax(1)  # first maximum, as torch.argmax
    np.testing.assert_array_equal(res.confusion.numpy(), skm.confusion_matrix(y, pred))
    precision, recall, f1, support = skm.precision_recall_fscore_support(y, pred, zero_division=0)
    rows, macro, micro = res.summary[:c], res.summary[c], res.summary[c + 1]
    np.testing.assert_allclose([r["precision"] for r in rows], precision, atol=1e-6)
    np.testing.assert_allclose([r["recall"] for r in rows], recall, atol=1e-6)
    np.testing.assert_allclose([r["f1"] for r in rows], f1, atol=1e-6)
    assert [r["support"] for r in rows] == support.tolist()
    mcm = skm.multilabel_confusion_matrix(y, pred)
    specificity = mcm[:, 0, 0] / (mcm[:, 0, 0] + mcm[:, 0, 1])
    np.testing.assert_allclose([r["specificity"] for r in rows], specificity, atol=1e-6)
    assert macro["class"] == "macro avg" and micro["class"] == "micro avg"
    assert macro["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"), abs=1e-6)
    assert micro["precision"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-6)


def test_multilabel_matches_sklearn():
    rng = np.random.default_rng(2)
    n, labels = 151, 3
    probs = rng.integers(0, 17, (n, labels)) / 16
    y = (rng.random((n, labels)) < 0.2 + 0.6 * probs).astype(int)
    metrics = CurveMetrics("multilabel", labels, thresholds=17, class_names=["cat", "dog", "owl"])
    for chunk in np.array_split(np.arange(n), 3):
        metrics.update(torch.tensor(probs[chunk], dtype=torch.float32), torch.tensor(y[chunk]))
    res = metrics.compute()

    np.testing.assert_allclose(
        [res.auroc[k] for k in ("cat", "dog", "owl")], skm.roc_auc_score(y, probs, average=None), atol=1e-6
    )
    np.testing.assert_allclose(
        [res.ap[k] for k in ("cat", "dog", "owl")],
        skm.average_precision_score(y, probs, average=None),
        atol=1e-6,
    )
    assert res.auroc["micro"] == pytest.approx(skm.roc_auc_score(y, probs, average="micro"), abs=1e-6)
    assert res.auroc["macro"] == pytest.approx(skm.roc_auc_score(y, probs, average="macro"), abs=1e-6)
    assert res.ap["micro"] == pytest.approx(skm.average_precision_score(y, probs, average="micro"), abs=1e-6)
    pred = (probs > 0.5).astype(int)  # torchmetrics' multi-label threshold is strict
    np.testing.assert_array_equal(res.confusion.numpy(), skm.multilabel_confusion_matrix(y, pred))
    precision, recall, f1, support = skm.precision_recall_fscore_support(y, pred, zero_division=0)
    rows = res.summary[:labels]
    np.testing.assert_allclose([r["precision"] for r in rows], precision, atol=1e-6)
    np.testing.assert_allclose([r["recall"] for r in rows], recall, atol=1e-6)
    np.testing.assert_allclose([r["f1"] for r in rows], f1, atol=1e-6)
    assert [r["support"] for r in rows] == support.tolist()
    assert res.summary[labels + 1]["f1"] == pytest.approx(skm.f1_score(y, pred, average="micro"), abs=1e-6)


def test_exact_and_binned_curves_on_continuous_scores():
    rng = np.random.default_rng(3)
    n, c = 301, 3
    probs = rng.dirichlet(np.ones(c), size=n)
    y = noisy_labels(rng, probs)
    exact, binned = (
        CurveMetrics("multiclass", c, thresholds=None),
        CurveMetrics("multiclass", c, thresholds=200),
    )
    for m in (exact, binned):
        m.update(torch.tensor(probs, dtype=torch.float32), torch.tensor(y))
    want = skm.roc_auc_score(y, probs, multi_class="ovr")
    assert exact.compute().auroc["macro"] == pytest.approx(want, abs=1e-5)
    assert binned.compute().auroc["macro"] == pytest.approx(want, abs=5e-3)  # 200 bins: close, not equal


def test_memory_is_constant_with_binned_thresholds():
    def numel_after(n: int, thresholds: int | None) -> int:
        metrics = CurveMetrics("multiclass", 5, thresholds=thresholds)
        generator = torch.Generator().manual_seed(0)
        for _ in range(n // 100):
            metrics.update(torch.rand(100, 5, generator=generator).softmax(-1), torch.randint(0, 5, (100,)))
        return metrics.state_numel()

    assert numel_after(100, 50) == numel_after(5000, 50)
    assert numel_after(5000, None) > numel_after(100, None)  # the exact mode keeps every score


@pytest.mark.parametrize("kind", ["binary", "multiclass", "multilabel"])
def test_fast_binned_update_equals_torchmetrics(kind):
    from torchmetrics import classification as tmc

    from lightning_recipes.callbacks.curve_logger.state import _CURVES, curve_thresholds

    g = torch.Generator().manual_seed(0)
    thresholds = curve_thresholds(11)
    preds = (torch.rand(97, 4, generator=g) * 10).round() / 10  # many scores exactly on a threshold
    if kind == "binary":
        args, preds, target = (), preds[:, 0], torch.randint(0, 2, (97,), generator=g)
    elif kind == "multiclass":
        args, preds, target = (4,), preds.softmax(-1), torch.randint(0, 4, (97,), generator=g)
    else:
        args, target = (4,), torch.randint(0, 2, (97, 4), generator=g)
    reference = getattr(tmc, f"{kind.capitalize()}PrecisionRecallCurve")(*args, thresholds=thresholds)
    fast = _CURVES[kind]["PrecisionRecallCurve"](*args, thresholds=thresholds)
    for metric in (reference, fast):
        metric.update(preds[:50], target[:50])
        metric.update(preds[50:], target[50:])
    torch.testing.assert_close(fast.confmat, reference.confmat, rtol=0, atol=0)


def test_downsample_and_arguments():
    assert downsample(1000, 5) == [0, 250, 500, 749, 999]
    assert downsample(2, 5) == [0, 1]
    with pytest.raises(ValueError, match="stages"):
        CurveLogger(stages=["train"])
    with pytest.raises(ValueError, match="thresholds"):
        CurveLogger(thresholds=1)
    with pytest.raises(ValueError, match="regression"):
        CurveMetrics("regression", 1)
    with pytest.raises(ValueError, match="class names"):
        CurveMetrics("multiclass", 3, class_names=["a", "b"])


# ---- inside a Trainer ----------------------------------------------------------------------------


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
    out = {{"rank": trainer.global_rank, "auroc": res.auroc, "ap": res.ap,
            "confusion": res.confusion.tolist(), "summary": res.summary, "module": module}}
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
        # the module's own metrics leave out the sample DDP's sampler repeats too (37 = 19 + 18)
        for key in ("val/acc", "val/f1", "val/precision", "val/recall", "val/mcc"):
            assert rank_result["module"][key] == pytest.approx(one["module"][key], abs=1e-6), key
    assert sum(map(sum, one["confusion"])) == 37
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
