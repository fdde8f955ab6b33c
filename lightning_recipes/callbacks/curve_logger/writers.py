"""Writing :class:`CurveResults`: CSV files, PNG figures (matplotlib), W&B charts and the summary table.

matplotlib and wandb are imported inside the functions that use them, so importing this module stays
light. TensorBoard gets the figures of :func:`make_figures` from the callback.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger

from lightning_recipes.callbacks.curve_logger.mistakes import MistakesReport, wandb_tables
from lightning_recipes.callbacks.curve_logger.state import SUMMARY_COLUMNS, CurveResults


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


def log_to_wandb(
    logger: WandbLogger,
    results: CurveResults,
    prefix: str,
    step: int,
    max_points: int,
    mistakes: MistakesReport | None = None,
) -> None:
    """Interactive ROC/PR line charts, the confusion matrix, the summary table and the mistakes report's
    tables (rank zero only)."""
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
    if mistakes is not None:
        payload.update(wandb_tables(mistakes, prefix))
    payload["trainer/global_step"] = step
    logger.experiment.log(payload)
