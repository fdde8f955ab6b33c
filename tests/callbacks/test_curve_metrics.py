"""CurveLogger's curves and statistics (CurveMetrics) against scikit-learn; constant memory; arguments."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from sklearn.preprocessing import label_binarize

from lightning_recipes.callbacks import CurveLogger
from lightning_recipes.callbacks.curve_logger import CurveMetrics, downsample


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
