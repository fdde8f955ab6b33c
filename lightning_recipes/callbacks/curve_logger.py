"""CurveLogger: ROC/PR curves, AUROC/AP, confusion matrix and per-class metrics at the end of eval epochs."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import DistributedSampler
from torchmetrics import Metric, MetricCollection
from torchmetrics import classification as tmc
from typing_extensions import override

Stage = Literal["validate", "test"]
STAT_NAMES = ("precision", "recall", "f1", "specificity")
SUMMARY_COLUMNS = ("class", "support", "precision", "recall", "f1", "specificity", "auroc", "ap")


# --------------------------------------------------------------------------------------------------
# Metric state: torchmetrics with binned thresholds, so memory depends on (thresholds, classes), not N
# --------------------------------------------------------------------------------------------------


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
        # Micro averages: one binary problem over the flattened (one-hot) targets.
        self.micro = (
            None
            if self.binary
            else MetricCollection(
                {
                    "roc": binary["ROC"](thresholds=t),
                    "pr": binary["PrecisionRecallCurve"](thresholds=t),
                    "auroc": binary["AUROC"](thresholds=t),
                    "ap": binary["AveragePrecision"](thresholds=t),
                },
                compute_groups=True,
            )
        )
        stats: dict[str, Metric] = {}
        if task == "multiclass":
            stats["confusion"] = tmc.MulticlassConfusionMatrix(c)
            kinds = {
                "precision": tmc.MulticlassPrecision,
                "recall": tmc.MulticlassRecall,
                "f1": tmc.MulticlassF1Score,
                "specificity": tmc.MulticlassSpecificity,
            }
            for name, cls in kinds.items():
                for average in ("none", "macro", "micro"):
                    stats[f"{name}_{average}"] = cls(c, average=average)
        else:
            stats["confusion"] = tmc.MultilabelConfusionMatrix(c)
            kinds = {
                "precision": tmc.MultilabelPrecision,
                "recall": tmc.MultilabelRecall,
                "f1": tmc.MultilabelF1Score,
                "specificity": tmc.MultilabelSpecificity,
            }
            for name, cls in kinds.items():
                for average in ("none", "macro", "micro"):
                    stats[f"{name}_{average}"] = cls(c, average=average)
        self.stats = MetricCollection(stats, compute_groups=True)

    def collections(self) -> list[MetricCollection]:
        return [m for m in (self.curves, self.micro, self.stats) if m is not None]

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


# --------------------------------------------------------------------------------------------------
# Distributed samplers pad the last rank(s) with samples from the start: drop them
# --------------------------------------------------------------------------------------------------


def real_samples_on_rank(dataloader: Any) -> int | None:
    """How many samples of this rank's share of ``dataloader`` are real (not a DistributedSampler's padding).

    ``DistributedSampler`` (``drop_last=False``) repeats the first indices so that every rank gets
    ``ceil(N / world_size)``; the repeats are the last sample of the ranks ``>= N % world_size``.
    Returns ``None`` when the loader has no distributed sampler (nothing to drop).

    Example::

        >>> from torch.utils.data import DataLoader, DistributedSampler
        >>> data = list(range(7))
        >>> [real_samples_on_rank(DataLoader(data, sampler=DistributedSampler(data, 2, r, shuffle=False)))
        ...  for r in (0, 1)]
        [4, 3]
    """
    sampler = getattr(dataloader, "sampler", None)
    if not isinstance(sampler, DistributedSampler):
        sampler = getattr(getattr(dataloader, "batch_sampler", None), "sampler", None)
    if not isinstance(sampler, DistributedSampler):
        return None
    total = min(len(sampler.dataset), sampler.total_size)  # total_size < N when drop_last truncates
    return len(range(sampler.rank, total, sampler.num_replicas))


# --------------------------------------------------------------------------------------------------
# Writing: CSV, PNG, loggers, the printed table
# --------------------------------------------------------------------------------------------------


def downsample(n: int, k: int) -> list[int]:
    """At most ``k`` (>= 2) indices of ``range(n)``, evenly spaced, keeping both ends.

    Example::

        >>> downsample(10, 4), downsample(3, 10)
        ([0, 3, 6, 9], [0, 1, 2])
    """
    if n <= k:
        return list(range(n))
    k = max(k, 2)
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def write_csvs(results: CurveResults, folder: Path) -> list[Path]:
    """Write ``roc.csv``, ``pr.csv`` (points with thresholds), ``confusion_matrix.csv``, ``metrics.csv``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, curves, cols in (
        ("roc.csv", results.roc, ("fpr", "tpr")),
        ("pr.csv", results.pr, ("recall", "precision")),
    ):
        with open(folder / name, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["curve", "threshold", *cols])
            for curve, (x, y, thr) in curves.items():
                # PR curves have one more point than thresholds (the final recall=0, precision=1 point).
                for j in range(len(x)):
                    t = float(thr[j]) if j < len(thr) else math.nan
                    writer.writerow([curve, f"{t:.6g}", f"{float(x[j]):.6g}", f"{float(y[j]):.6g}"])
        paths.append(folder / name)
    with open(folder / "confusion_matrix.csv", "w", newline="") as f:
        writer = csv.writer(f)
        if results.task == "multiclass":
            writer.writerow(["actual\\predicted", *results.class_names])
            for name, row in zip(results.class_names, results.confusion.tolist(), strict=True):
                writer.writerow([name, *row])
        else:
            writer.writerow(["label", "tn", "fp", "fn", "tp"])
            for name, m in zip(results.class_names, results.confusion.tolist(), strict=True):
                writer.writerow([name, m[0][0], m[0][1], m[1][0], m[1][1]])
    paths.append(folder / "confusion_matrix.csv")
    with open(folder / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        for row in results.summary:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    paths.append(folder / "metrics.csv")
    return paths


def make_figures(results: CurveResults, title: str, max_legend: int = 10) -> dict[str, Any]:
    """Matplotlib figures (no pyplot, Agg canvas): ``roc``, ``pr`` and ``confusion_matrix``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figures = {}
    for key, curves, scores, (xlabel, ylabel), score_name in (
        ("roc", results.roc, results.auroc, ("False positive rate", "True positive rate"), "AUC"),
        ("pr", results.pr, results.ap, ("Recall", "Precision"), "AP"),
    ):
        fig = Figure(figsize=(6, 5), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        per_class = [n for n in curves if n != "micro"]
        for i, name in enumerate(per_class):
            x, y, _ = curves[name]
            label = f"{name} ({score_name}={scores[name]:.3f})" if i < max_legend else None
            style = {} if len(per_class) <= max_legend else {"lw": 0.7, "alpha": 0.6}
            ax.plot(x.numpy(), y.numpy(), label=label, **style)
        if "micro" in curves:
            x, y, _ = curves["micro"]
            ax.plot(
                x.numpy(), y.numpy(), "k--", lw=2, label=f"micro avg ({score_name}={scores['micro']:.3f})"
            )
            ax.plot([], [], " ", label=f"macro avg {score_name}={scores['macro']:.3f}")
        if key == "roc":
            ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls=":")
        if len(per_class) > max_legend:
            ax.plot([], [], " ", label=f"... {len(per_class) - max_legend} more classes")
        ax.set(
            xlabel=xlabel,
            ylabel=ylabel,
            xlim=(-0.01, 1.01),
            ylim=(-0.01, 1.01),
            title=f"{title} {key.upper()}",
        )
        ax.legend(loc="lower right" if key == "roc" else "lower left", fontsize="small")
        figures[key] = fig
    figures["confusion_matrix"] = _confusion_figure(results, title)
    return figures


def _confusion_figure(results: CurveResults, title: str) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if results.task == "multiclass":
        counts = results.confusion.double()
        rows, cols = results.class_names, results.class_names
        xlabel, ylabel = "Predicted", "Actual"
    else:  # one (tn, fp, fn, tp) row per label
        counts = results.confusion.reshape(-1, 4).double()
        rows, cols = results.class_names, ["TN", "FP", "FN", "TP"]
        xlabel, ylabel = "Outcome at threshold 0.5", "Label"
    # Colour: each row normalised (multi-class: the recall of each actual class); text: the counts.
    normalised = counts / counts.sum(1, keepdim=True).clamp(min=1)
    size = min(3 + 0.45 * max(len(cols), len(rows)), 20)
    fig = Figure(figsize=(size + 1, size), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(normalised.numpy(), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="fraction of the row")
    if len(rows) <= 30 and len(cols) <= 30:
        ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
        ax.set_yticks(range(len(rows)), rows)
        for i in range(len(rows)):
            for j in range(len(cols)):
                value = normalised[i, j].item()
                ax.text(
                    j,
                    i,
                    f"{int(counts[i, j])}",
                    ha="center",
                    va="center",
                    fontsize="small",
                    color="white" if value > 0.5 else "black",
                )
    summary = f" (macro AUC={results.auroc['macro']:.3f}, AP={results.ap['macro']:.3f})"
    ax.set(xlabel=xlabel, ylabel=ylabel, title=f"{title} confusion matrix{summary}")
    fig.tight_layout()
    return fig


def format_summary(results: CurveResults, title: str = "") -> str:
    """The per-class and averaged metrics as a fixed-width text table."""
    width = max([len("class")] + [len(str(r["class"])) for r in results.summary]) + 2
    header = f"{'class':<{width}}{'support':>9}" + "".join(f"{c:>13}" for c in SUMMARY_COLUMNS[2:])
    lines = [title, header, "-" * len(header)] if title else [header, "-" * len(header)]
    for i, row in enumerate(results.summary):
        if i == len(results.class_names):
            lines.append("-" * len(header))
        values = "".join(
            f"{'':>13}" if math.isnan(row[c]) else f"{row[c]:>13.4f}" for c in SUMMARY_COLUMNS[2:]
        )
        lines.append(f"{row['class']:<{width}}{row['support']:>9}{values}")
    return "\n".join(lines)


def _json_safe(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def log_to_wandb(logger: WandbLogger, results: CurveResults, prefix: str, step: int, max_points: int) -> None:
    """Interactive ROC/PR line charts, the confusion matrix and the summary table (rank zero only)."""
    import wandb

    per_curve = max(2, max_points // max(1, len(results.roc)))
    payload: dict[str, Any] = {}
    for key, curves, (xname, yname), title in (
        ("roc_curve", results.roc, ("fpr", "tpr"), "ROC"),
        ("pr_curve", results.pr, ("recall", "precision"), "Precision-recall"),
    ):
        data = []
        for name, (x, y, thr) in curves.items():
            for j in downsample(len(x), per_curve):
                t = float(thr[j]) if j < len(thr) else math.nan
                data.append([name, float(x[j]), float(y[j]), t if math.isfinite(t) else None])
        table = wandb.Table(columns=["class", xname, yname, "threshold"], data=data)
        payload[f"{prefix}/{key}"] = wandb.plot_table(
            "wandb/area-under-curve/v0",
            table,
            {"x": xname, "y": yname, "class": "class"},
            {"title": f"{prefix} {title}", "x-axis-title": xname, "y-axis-title": yname},
        )
    if results.task == "multiclass":
        names = results.class_names
        data = [
            [a, p, int(results.confusion[i, j])] for i, a in enumerate(names) for j, p in enumerate(names)
        ]
        payload[f"{prefix}/confusion_matrix"] = wandb.plot_table(
            "wandb/confusion_matrix/v1",
            wandb.Table(columns=["Actual", "Predicted", "nPredictions"], data=data),
            {"Actual": "Actual", "Predicted": "Predicted", "nPredictions": "nPredictions"},
            {"title": f"{prefix} confusion matrix"},
        )
    else:
        data = [
            [n, *[int(v) for v in m.flatten()]]
            for n, m in zip(results.class_names, results.confusion, strict=True)
        ]
        payload[f"{prefix}/confusion_matrix"] = wandb.Table(
            columns=["label", "tn", "fp", "fn", "tp"], data=data
        )
    payload[f"{prefix}/class_metrics"] = wandb.Table(
        columns=list(SUMMARY_COLUMNS),
        data=[[_json_safe(row[c]) for c in SUMMARY_COLUMNS] for row in results.summary],
    )
    payload["trainer/global_step"] = step
    logger.experiment.log(payload)


# --------------------------------------------------------------------------------------------------
# The callback
# --------------------------------------------------------------------------------------------------


class CurveLogger(Callback):
    """ROC and precision-recall curves, AUROC/AP, confusion matrix and per-class metrics for classifiers.

    At the end of each validation and test epoch the callback computes, with torchmetrics, the
    curves (binary; multi-class one-vs-rest with micro and macro averages; multi-label), the
    confusion matrix and per-class precision/recall/F1/specificity, then writes

    * ``<run dir>/curves/<stage>_epoch<NNN>/``: ``roc.png``, ``pr.png``, ``confusion_matrix.png`` (the
      AUC/AP in the legends) and ``roc.csv``, ``pr.csv`` (curve points with their thresholds),
      ``confusion_matrix.csv``, ``metrics.csv`` (per class, macro and micro averages);
    * to Weights & Biases: interactive ROC/PR charts (at most ``max_points`` points, every class kept),
      the confusion matrix and the metrics table; to TensorBoard: the three figures;
    * ``{stage}/auroc`` and ``{stage}/ap`` (macro averages) through ``pl_module.log``, so a
      ``ModelCheckpoint`` can monitor them;
    * at the end of the test stage, the metrics table printed on rank zero.

    The module's ``validation_step``/``test_step`` must return ``{"preds", "target"}`` with ``preds``
    probabilities (as :class:`~lightning_recipes.modules._classification.ClassificationModule` does) and
    the module must have ``task`` and ``num_classes``; regression modules are skipped. Class names come
    from ``trainer.datamodule.classes`` (or ``.label_names``). Under DDP the samples a
    ``DistributedSampler`` repeats to even out the ranks are dropped, so the results equal those of one
    process. The curve folder is ``dirpath``, else ``curves/`` in the TensorBoard/CSV logger's
    ``log_dir``, beside ``ModelCheckpoint``'s ``checkpoints/`` for other loggers (W&B:
    ``<save_dir>/<project>/<run id>/curves``), else in ``trainer.default_root_dir``.

    Args:
        thresholds: number of evenly spaced thresholds in [0, 1] (constant memory; plus ``inf``, see
            :func:`curve_thresholds`); a list of thresholds; or
            ``None`` for exact curves (keeps every score: memory grows with the data set).
        stages: which of ``"validate"`` and ``"test"`` to score.
        every_n_epochs: score validation every n epochs (test is always scored).
        dirpath: folder for the curve files (default: the run dir above).
        save_png: write the PNG plots.
        save_csv: write the CSV files.
        max_points: points per chart sent to W&B, shared among the curves (each keeps at least 2).
        print_summary: print the metrics table at the end of the test stage (rank zero).

    Example::

        >>> import lightning as L, tempfile, torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from lightning_recipes import ImageClassifier
        >>> root = tempfile.mkdtemp()
        >>> trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
        ...     default_root_dir=root, callbacks=[CurveLogger(thresholds=21, stages=["validate"])])
        >>> model = ImageClassifier("test_resnet", num_classes=3, pretrained=False)
        >>> images, labels = torch.randn(9, 3, 32, 32), torch.tensor([0, 1, 2] * 3)
        >>> loader = DataLoader(TensorDataset(images, labels), batch_size=4)
        >>> _ = trainer.validate(model, loader, verbose=False)
        >>> folder = Path(root) / "curves" / "val_epoch000"
        >>> sorted(p.name for p in folder.iterdir())  # doctest: +NORMALIZE_WHITESPACE
        ['confusion_matrix.csv', 'confusion_matrix.png', 'metrics.csv', 'pr.csv', 'pr.png',
         'roc.csv', 'roc.png']
    """

    def __init__(
        self,
        thresholds: int | list[float] | None = 200,
        stages: list[Stage] = ["validate", "test"],  # noqa: B006 (a YAML default; never mutated)
        every_n_epochs: int = 1,
        dirpath: str | None = None,
        save_png: bool = True,
        save_csv: bool = True,
        max_points: int = 2000,
        print_summary: bool = True,
    ) -> None:
        unknown = set(stages) - {"validate", "test"}
        if unknown:
            raise ValueError(f"CurveLogger stages must be 'validate' and/or 'test', got {sorted(unknown)}")
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        if isinstance(thresholds, int) and thresholds < 2:
            raise ValueError(
                f"thresholds must be >= 2 (or a list, or None for exact curves), got {thresholds}"
            )
        if max_points < 2:
            raise ValueError(f"max_points must be >= 2, got {max_points}")
        self.thresholds = thresholds
        self.stages = list(stages)
        self.every_n_epochs = every_n_epochs
        self.dirpath = dirpath
        self.save_png = save_png
        self.save_csv = save_csv
        self.max_points = max_points
        self.print_summary = print_summary
        self.root: Path | None = None
        self.last_results: dict[str, CurveResults] = {}
        self._metrics: dict[int, CurveMetrics] = {}
        self._seen: dict[int, int] = {}
        self._real: dict[int, int | None] = {}
        self._active = False
        self._warned = False

    # ---- setup ------------------------------------------------------------------------------------

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        logger = trainer.loggers[0] if trainer.loggers else None
        if self.dirpath is not None:
            self.root = Path(self.dirpath)
        elif isinstance(logger, (TensorBoardLogger, CSVLogger)):
            self.root = Path(trainer.log_dir) / "curves"  # every rank: log_dir broadcasts
        elif logger is not None and logger.save_dir is not None:
            # beside ModelCheckpoint's default folder: <save_dir>/<name>/<version>/{checkpoints,curves}
            version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
            root = Path(logger.save_dir) / str(logger.name) / version / "curves"
            self.root = Path(trainer.strategy.broadcast(str(root)))
        else:
            self.root = Path(trainer.default_root_dir) / "curves"

    def _supported(self, pl_module: L.LightningModule) -> bool:
        task = getattr(pl_module, "task", None)
        if task in ("multiclass", "multilabel") and getattr(pl_module, "num_classes", None):
            return True
        if task != "regression" and not self._warned:
            rank_zero_warn(
                f"CurveLogger: {type(pl_module).__name__} has no `task`/`num_classes`; curves skipped."
            )
            self._warned = True
        return False

    def _class_names(self, trainer: L.Trainer, num_classes: int) -> list[str]:
        dm = trainer.datamodule
        for attr in ("classes", "label_names"):
            names = getattr(dm, attr, None) if dm is not None else None
            if names is not None and len(names) == num_classes:
                return [str(n) for n in names]
        return [str(i) for i in range(num_classes)]

    def _dataloaders(self, trainer: L.Trainer, stage: str) -> list[Any]:
        try:  # the loop running now (trainer.val_dataloaders prefers fit's loader even under validate())
            return list(trainer._evaluation_loop._combined_loader.flattened)
        except (AttributeError, RuntimeError):
            loaders = trainer.test_dataloaders if stage == "test" else trainer.val_dataloaders
            return list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]

    def _start(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._active = (
            stage in self.stages
            and not trainer.sanity_checking
            and self._supported(pl_module)
            and (
                stage == "test"
                or trainer.current_epoch % self.every_n_epochs == 0
                or trainer.state.fn == "validate"
            )
        )
        if not self._active:
            return
        names = self._class_names(trainer, pl_module.num_classes)
        loaders = self._dataloaders(trainer, stage)
        self._metrics, self._seen, self._real = {}, {}, {}
        for idx, loader in enumerate(loaders):
            self._metrics[idx] = CurveMetrics(
                pl_module.task, pl_module.num_classes, self.thresholds, names
            ).to(pl_module.device)
            self._seen[idx] = 0
            self._real[idx] = real_samples_on_rank(loader)

    def _update(self, outputs: Any, dataloader_idx: int) -> None:
        if not self._active:
            return
        if not isinstance(outputs, dict) or "preds" not in outputs or "target" not in outputs:
            if not self._warned:
                rank_zero_warn(
                    'CurveLogger needs validation_step/test_step to return {"preds", "target"}; skipped.'
                )
                self._warned = True
            self._active = False
            return
        preds, target = outputs["preds"], outputs["target"]
        real = self._real.get(dataloader_idx)
        keep = len(target) if real is None else max(0, min(len(target), real - self._seen[dataloader_idx]))
        self._seen[dataloader_idx] += len(target)
        if keep:
            self._metrics[dataloader_idx].update(preds[:keep], target[:keep])

    def _end(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self._active:
            return
        self._active = False
        short = "val" if stage == "validate" else "test"
        for idx, metrics in self._metrics.items():
            prefix = short if len(self._metrics) == 1 else f"{short}_dl{idx}"
            results = metrics.compute()  # every rank: syncs the states
            self.last_results[prefix] = results
            pl_module.log(f"{prefix}/auroc", results.auroc["macro"], sync_dist=False)
            pl_module.log(f"{prefix}/ap", results.ap["macro"], sync_dist=False)
            if trainer.is_global_zero:
                self._write(trainer, results, prefix)
                if stage == "test" and self.print_summary:
                    print(
                        format_summary(
                            results, f"Per-class metrics ({prefix}, epoch {trainer.current_epoch})"
                        )
                    )
        self._metrics = {}

    def _write(self, trainer: L.Trainer, results: CurveResults, prefix: str) -> None:
        folder = (
            self.root or Path(trainer.default_root_dir) / "curves"
        ) / f"{prefix}_epoch{trainer.current_epoch:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        if self.save_csv:
            write_csvs(results, folder)
        figures = make_figures(results, prefix) if self.save_png or _has(trainer, TensorBoardLogger) else {}
        if self.save_png:
            for name, fig in figures.items():
                fig.savefig(folder / f"{name}.png")
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for name, fig in figures.items():
                    logger.experiment.add_figure(f"{prefix}/{name}", fig, trainer.global_step, close=False)
            elif isinstance(logger, WandbLogger):
                # the step Lightning logs epoch metrics at, so curves share the x-axis with val/acc
                step = getattr(getattr(trainer.fit_loop, "epoch_loop", None), "_batches_that_stepped", None)
                log_to_wandb(
                    logger, results, prefix, trainer.global_step if step is None else step, self.max_points
                )

    # ---- hooks ------------------------------------------------------------------------------------

    @override
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(trainer, pl_module, "validate")

    @override
    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._update(outputs, dataloader_idx)

    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._end(trainer, pl_module, "validate")

    @override
    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(trainer, pl_module, "test")

    @override
    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._update(outputs, dataloader_idx)

    @override
    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._end(trainer, pl_module, "test")


def _has(trainer: L.Trainer, kind: type) -> bool:
    return any(isinstance(logger, kind) for logger in trainer.loggers)
