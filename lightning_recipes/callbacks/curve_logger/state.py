"""Metric state of :class:`CurveLogger`: torchmetrics curve metrics with binned thresholds.

With binned thresholds the memory depends on (thresholds, classes), not on the number of samples.
:func:`binned_counts` fills torchmetrics' own binned state in O(N C log T); :class:`CurveMetrics`
holds the curves, AUROC/AP, the confusion matrix and the per-class statistics, and returns a
:class:`CurveResults` of plain CPU tensors and floats.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics import classification as tmc

STAT_NAMES = ("precision", "recall", "f1", "specificity")
SUMMARY_COLUMNS = ("class", "support", "precision", "recall", "f1", "specificity", "auroc", "ap")


def binned_counts(scores: Tensor, positive: Tensor, thresholds: Tensor) -> Tensor:
    """torchmetrics' binned curve state, ``(T, C, 2, 2)`` = ``[[tn, fp], [fn, tp]]`` per threshold and class.

    A sample counts as predicted positive at threshold ``t`` when ``score >= t`` (as torchmetrics).
    Each score is put in its bin once (``bucketize``) and the bins are summed from the top, so this
    costs O(N C log T) where torchmetrics' own update compares every score with every threshold
    (O(N C T): a second per thousand samples for 10 classes and 200 thresholds on a laptop CPU).

    Example::

        >>> scores, positive = torch.tensor([[0.2], [0.7]]), torch.tensor([[0], [1]])
        >>> binned_counts(scores, positive, thresholds=torch.tensor([0.5, 1.0]))[:, 0]
        tensor([[[1, 0],
                 [0, 1]],
        <BLANKLINE>
                [[1, 0],
                 [1, 0]]])
    """
    n_thresholds, n_classes = len(thresholds), scores.shape[1]
    bins = torch.bucketize(
        scores.contiguous(), thresholds.to(scores.dtype), right=True
    )  # thresholds <= score
    classes = torch.arange(n_classes, device=scores.device) * (n_thresholds + 1)
    flat = ((classes + bins) * 2 + positive.long()).flatten()
    counts = torch.bincount(flat, minlength=n_classes * (n_thresholds + 1) * 2).reshape(n_classes, -1, 2)
    predicted = counts.flip(1).cumsum(1).flip(1)[:, 1:]  # (C, T, [neg, pos]) with score >= threshold t
    total = counts.sum(1, keepdim=True)
    fp, tp = predicted[..., 0], predicted[..., 1]
    tn, fn = total[..., 0] - fp, total[..., 1] - tp
    return torch.stack([torch.stack([tn, fp], -1), torch.stack([fn, tp], -1)], -2).transpose(0, 1)


class _FastBinnedUpdate:
    """Mixin: the torchmetrics curve metric's own state, filled by :func:`binned_counts` when binned."""

    kind: str

    def update(self, preds: Tensor, target: Tensor) -> None:
        thresholds = getattr(self, "thresholds", None)
        if thresholds is None:  # exact mode: torchmetrics keeps the scores
            super().update(preds, target)  # type: ignore[misc]
        elif self.kind == "binary":
            self.confmat += binned_counts(preds.reshape(-1, 1), target.reshape(-1, 1), thresholds)[:, 0]
        elif self.kind == "multiclass":
            onehot = torch.nn.functional.one_hot(target, self.num_classes)  # type: ignore[attr-defined]
            self.confmat += binned_counts(preds, onehot, thresholds)
        else:
            self.confmat += binned_counts(preds, target, thresholds)


def _fast(parent: type, kind: str) -> type:
    return type(f"Binned{parent.__name__}", (_FastBinnedUpdate, parent), {"kind": kind})


_CURVES = {
    kind: {
        name: _fast(getattr(tmc, f"{prefix}{name}"), kind)
        for name in ("ROC", "PrecisionRecallCurve", "AUROC", "AveragePrecision")
    }
    for kind, prefix in (("binary", "Binary"), ("multiclass", "Multiclass"), ("multilabel", "Multilabel"))
}


@dataclass
class CurveResults:
    """Everything one evaluation epoch produced, as plain tensors and floats (CPU).

    ``roc``/``pr`` map a curve name (a class name, ``"micro"``) to ``(x, y, thresholds)``:
    ``(fpr, tpr, thr)`` and ``(recall, precision, thr)``. ``summary`` holds one row per class, then
    ``"macro avg"`` and ``"micro avg"``, keyed by :data:`SUMMARY_COLUMNS`.
    """

    task: str
    class_names: list[str]
    roc: dict[str, tuple[Tensor, Tensor, Tensor]]
    pr: dict[str, tuple[Tensor, Tensor, Tensor]]
    auroc: dict[str, float]
    ap: dict[str, float]
    confusion: Tensor
    summary: list[dict[str, Any]] = field(default_factory=list)


class CurveMetrics:
    """torchmetrics collections for the curves, AUROC/AP, the confusion matrix and per-class statistics.

    ``multiclass`` with two classes is scored as binary: the curves use the positive-class column
    (``preds[:, 1]``). Multi-class curves are one-vs-rest, plus a ``micro`` curve over the flattened
    one-hot targets; multi-label curves are one per label plus ``micro``. Per-class statistics use the
    arg-max class (multi-class) or a 0.5 threshold (multi-label). States are summed tensors of shape
    ``(thresholds, classes, 2, 2)`` at most when ``thresholds`` is an int or a list (constant memory);
    ``thresholds=None`` keeps every score (exact curves, memory grows with the data).

    Args:
        task: ``"multiclass"`` or ``"multilabel"``.
        num_classes: classes (or labels).
        thresholds: number of evenly spaced thresholds in [0, 1], their list, or ``None`` for exact
            curves; binned curves also get an ``inf`` threshold (see :func:`curve_thresholds`).
        class_names: one name per class; default ``"0"``, ``"1"``, ...

    Example::

        >>> import torch
        >>> metrics = CurveMetrics("multiclass", 3, thresholds=11)
        >>> probs = torch.tensor([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7]])
        >>> metrics.update(probs, torch.tensor([0, 1, 2]))
        >>> results = metrics.compute()
        >>> results.auroc["macro"], results.confusion.diag().tolist()
        (1.0, [1, 1, 1])
    """

    def __init__(
        self,
        task: str,
        num_classes: int,
        thresholds: int | list[float] | None = 200,
        class_names: Sequence[str] | None = None,
    ) -> None:
        if task not in ("multiclass", "multilabel"):
            raise ValueError(f"CurveMetrics supports task 'multiclass' or 'multilabel', got {task!r}")
        if num_classes < (2 if task == "multiclass" else 1):
            raise ValueError(f"num_classes={num_classes} is too small for task={task!r}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names given for num_classes={num_classes}")
        self.task = task
        self.num_classes = num_classes
        self.binary = task == "multiclass" and num_classes == 2
        self.class_names = (
            [str(c) for c in class_names] if class_names else [str(i) for i in range(num_classes)]
        )
        t = curve_thresholds(thresholds)
        c = num_classes
        binary = _CURVES["binary"]
        if self.binary:
            curves: dict[str, Metric] = {
                "roc": binary["ROC"](thresholds=t),
                "pr": binary["PrecisionRecallCurve"](thresholds=t),
                "auroc": binary["AUROC"](thresholds=t),
                "ap": binary["AveragePrecision"](thresholds=t),
            }
        else:
            kind = _CURVES[task]
            curves = {
                "roc": kind["ROC"](c, thresholds=t),
                "pr": kind["PrecisionRecallCurve"](c, thresholds=t),
                "auroc": kind["AUROC"](c, average="none", thresholds=t),
                "ap": kind["AveragePrecision"](c, average="none", thresholds=t),
                "auroc_macro": kind["AUROC"](c, average="macro", thresholds=t),
                "ap_macro": kind["AveragePrecision"](c, average="macro", thresholds=t),
            }
        # Metrics with equal states share one copy (torchmetrics compute groups).
        self.curves = MetricCollection(curves, compute_groups=True)
        # Two classes: the first class's own curves (its score is preds[:, 0], its positives target 0),
        # so the per-class table has AUROC/AP for both.
        self.negative = _binary_curves(t) if self.binary else None
        # Micro averages: one binary problem over the flattened (one-hot) targets.
        self.micro = None if self.binary else _binary_curves(t)
        kind = "Multiclass" if task == "multiclass" else "Multilabel"
        stats: dict[str, Metric] = {"confusion": getattr(tmc, f"{kind}ConfusionMatrix")(c)}
        for name, cls in (
            ("precision", "Precision"),
            ("recall", "Recall"),
            ("f1", "F1Score"),
            ("specificity", "Specificity"),
        ):
            for average in ("none", "macro", "micro"):
                stats[f"{name}_{average}"] = getattr(tmc, f"{kind}{cls}")(c, average=average)
        self.stats = MetricCollection(stats, compute_groups=True)

    def collections(self) -> list[MetricCollection]:
        return [m for m in (self.curves, self.negative, self.micro, self.stats) if m is not None]

    def to(self, device: torch.device | str) -> CurveMetrics:
        for collection in self.collections():
            collection.to(device)
        return self

    def reset(self) -> None:
        for collection in self.collections():
            collection.reset()

    def state_numel(self) -> int:
        """Elements held in the metric states (tensors and list entries): constant in N when binned."""
        total = 0
        for collection in self.collections():
            for metric in collection.values(copy_state=False):
                for value in metric.metric_state.values():
                    values = value if isinstance(value, list) else [value]
                    total += sum(v.numel() for v in values)
        return total

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add a batch: probabilities ``(N, C)`` and class ids ``(N,)`` or multi-hot targets ``(N, L)``."""
        preds = preds.detach().float()
        target = target.detach().long()
        if self.binary:
            self.curves.update(preds[:, 1], target)
            self.negative.update(preds[:, 0], 1 - target)
        else:
            self.curves.update(preds, target)
            onehot = (
                torch.nn.functional.one_hot(target, self.num_classes) if self.task == "multiclass" else target
            )
            self.micro.update(preds.flatten(), onehot.flatten())
        self.stats.update(preds, target)

    def compute(self) -> CurveResults:
        """Sync (under DDP: a collective call, every rank must make it) and compute everything."""
        curves = {k: _to_cpu(v) for k, v in self.curves.compute().items()}
        stats = {k: _to_cpu(v) for k, v in self.stats.compute().items()}
        names = self.class_names
        roc: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
        pr: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
        auroc: dict[str, float] = {}
        ap: dict[str, float] = {}
        if self.binary:
            pos = names[1]
            fpr, tpr, thr = curves["roc"]
            precision, recall, pthr = curves["pr"]
            roc[pos] = (fpr, tpr, thr)
            pr[pos] = (recall, precision, pthr)
            auroc[pos] = auroc["macro"] = auroc["micro"] = float(curves["auroc"])
            ap[pos] = ap["macro"] = ap["micro"] = float(curves["ap"])
            neg = {k: _to_cpu(v) for k, v in self.negative.compute().items()}
            precision, recall, pthr = neg["pr"]
            roc[names[0]] = neg["roc"]
            pr[names[0]] = (recall, precision, pthr)
            auroc[names[0]], ap[names[0]] = float(neg["auroc"]), float(neg["ap"])
        else:
            micro = {k: _to_cpu(v) for k, v in self.micro.compute().items()}
            fpr, tpr, thr = curves["roc"]
            precision, recall, pthr = curves["pr"]
            for i, name in enumerate(names):
                roc[name] = (_row(fpr, i), _row(tpr, i), _row(thr, i))
                pr[name] = (_row(recall, i), _row(precision, i), _row(pthr, i))
                auroc[name] = float(curves["auroc"][i])
                ap[name] = float(curves["ap"][i])
            roc["micro"] = micro["roc"]
            mp, mr, mt = micro["pr"]
            pr["micro"] = (mr, mp, mt)
            auroc["macro"], auroc["micro"] = float(curves["auroc_macro"]), float(micro["auroc"])
            ap["macro"], ap["micro"] = float(curves["ap_macro"]), float(micro["ap"])
        confusion = stats["confusion"]
        # Support: true members of each class (rows of the multi-class matrix; tp + fn per label).
        support = confusion.sum(1) if self.task == "multiclass" else confusion[:, 1, :].sum(-1)
        summary = []
        for i, name in enumerate(names):
            row: dict[str, Any] = {"class": name, "support": int(support[i])}
            row.update({s: float(stats[f"{s}_none"][i]) for s in STAT_NAMES})
            has_curve = name in auroc
            row["auroc"] = auroc[name] if has_curve else math.nan
            row["ap"] = ap[name] if has_curve else math.nan
            summary.append(row)
        for average in ("macro", "micro"):
            row = {"class": f"{average} avg", "support": int(support.sum())}
            row.update({s: float(stats[f"{s}_{average}"]) for s in STAT_NAMES})
            row["auroc"], row["ap"] = auroc[average], ap[average]
            summary.append(row)
        return CurveResults(self.task, list(names), roc, pr, auroc, ap, confusion, summary)


def _binary_curves(thresholds: Tensor | None) -> MetricCollection:
    """ROC, PR curve, AUROC and AP of one binary problem, sharing one state (compute groups)."""
    binary = _CURVES["binary"]
    return MetricCollection(
        {
            "roc": binary["ROC"](thresholds=thresholds),
            "pr": binary["PrecisionRecallCurve"](thresholds=thresholds),
            "auroc": binary["AUROC"](thresholds=thresholds),
            "ap": binary["AveragePrecision"](thresholds=thresholds),
        },
        compute_groups=True,
    )


def curve_thresholds(thresholds: int | list[float] | None) -> Tensor | None:
    """The binned thresholds: ``linspace(0, 1, n)`` (or the sorted list) and ``inf``.

    The ``inf`` threshold (no sample predicted positive) gives the curves the (0, 0) ROC point that
    scikit-learn has: without it a binned ROC starts at the top threshold's false-positive rate and
    its AUROC misses the area before it.

    Example::

        >>> curve_thresholds(5).tolist()
        [0.0, 0.25, 0.5, 0.75, 1.0, inf]
    """
    if thresholds is None:
        return None
    if isinstance(thresholds, int):
        grid = torch.linspace(0, 1, thresholds)
    else:
        if not thresholds or not all(0.0 <= float(v) <= 1.0 for v in thresholds):
            raise ValueError(f"thresholds must be floats in [0, 1], got {thresholds}")
        grid = torch.tensor(sorted({float(v) for v in thresholds}), dtype=torch.float32)
    return torch.cat([grid, torch.tensor([math.inf])])


def _to_cpu(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def _row(value: Tensor | list[Tensor], i: int) -> Tensor:
    """Row ``i`` of a per-class curve: a ``(C, T)`` tensor (binned) or a list of tensors (exact)."""
    return value[i] if isinstance(value, list) or value.dim() > 1 else value
