"""What the model got wrong, for :class:`CurveLogger`: the most confidently wrong examples of an evaluation
and the class pairs it confuses most, as fastai's ``plot_top_losses`` and ``most_confused`` show them.

Single-label classification only (``task="multiclass"``, two classes or more): a multi-label prediction has
no one predicted class to be wrong about, and regression no class at all, so neither gets a report.

:class:`Mistakes` keeps, in each process, the ``n`` wrong examples with the highest probability on the
class predicted (constant memory, whatever the size of the evaluation), each with the identity its batch
carried under ``"meta"`` (the image's ``path``, the text under its column name; without one, its
``position`` in the process's evaluation order); :meth:`Mistakes.gather` joins the processes' under DDP.
:func:`most_confused` reads the pairs off the confusion matrix. The writers make ``mistakes.csv``,
``most_confused.csv``, ``mistakes.png`` (a grid of the images, where the inputs are image files) and the
W&B tables.
"""

from __future__ import annotations

import csv
import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

#: The columns of ``mistakes.csv`` after the input's own (an input column of the same name gets ``input_``).
MISTAKE_COLUMNS = ("true_label", "pred_label", "confidence", "true_prob")


@dataclass
class Mistake:
    """One wrong prediction: ``confidence`` is the probability of the class predicted, ``true_prob`` that
    of the true class, ``inputs`` the identity columns of the example."""

    true: int
    predicted: int
    confidence: float
    true_prob: float
    inputs: dict[str, Any]


@dataclass
class MistakesReport:
    """The report of one evaluation: ``examples`` most confident first, ``pairs`` as
    ``(true name, predicted name, count, share of the true class)``, most frequent first."""

    class_names: list[str]
    examples: list[Mistake] = field(default_factory=list)
    pairs: list[tuple[str, str, int, float]] = field(default_factory=list)

    def rows(self) -> list[dict[str, Any]]:
        """``mistakes.csv``'s rows: ``rank``, the input columns, true and predicted label, probabilities."""
        out = []
        for rank, m in enumerate(self.examples, 1):
            taken = (*MISTAKE_COLUMNS, "rank")
            inputs = {(f"input_{k}" if k in taken else k): v for k, v in m.inputs.items()}
            names = self.class_names
            row = {"rank": rank, **inputs, "true_label": names[m.true], "pred_label": names[m.predicted]}
            out.append({**row, "confidence": round(m.confidence, 6), "true_prob": round(m.true_prob, 6)})
        return out


class Mistakes:
    """The ``n`` most confidently wrong examples seen by this process (see the module's docstring).

    Example::

        >>> mistakes = Mistakes(2)
        >>> probs = torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.2, 0.8], [0.6, 0.4]])
        >>> mistakes.update(probs, torch.tensor([1, 0, 0, 0]), {"path": ["a", "b", "c", "d"]})
        >>> [(m.inputs["path"], round(m.confidence, 2), m.true, m.predicted) for m in mistakes.top()]
        [('a', 0.9, 1, 0), ('c', 0.8, 0, 1)]
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.seen = 0
        # min-heap on (confidence, -position): the least confident, and the later of equals, leaves first
        self._heap: list[tuple[float, int, Mistake]] = []

    def update(self, preds: Tensor, target: Tensor, meta: Mapping[str, Sequence[Any]] | None = None) -> None:
        """Add a batch: probabilities ``[B, C]``, class ids ``[B]`` and the per-row identity columns."""
        predicted = preds.argmax(-1)
        wrong = (predicted != target).nonzero().flatten()
        if self.n and len(wrong):
            confidence = preds[wrong, predicted[wrong]].float().cpu().tolist()
            true_prob = preds[wrong, target[wrong]].float().cpu().tolist()
            rows, pred, true = wrong.tolist(), predicted[wrong].tolist(), target[wrong].tolist()
            for j, i in enumerate(rows):
                key = (confidence[j], -(self.seen + i))
                if len(self._heap) == self.n and key <= self._heap[0][:2]:
                    continue
                inputs = {k: _plain(v[i]) for k, v in (meta or {}).items() if _per_row(v, len(target))}
                inputs = inputs or {"position": -key[1]}  # no identity: the position in the evaluation
                mistake = Mistake(true[j], pred[j], confidence[j], true_prob[j], inputs)
                if len(self._heap) < self.n:
                    heapq.heappush(self._heap, (*key, mistake))
                else:
                    heapq.heapreplace(self._heap, (*key, mistake))
        self.seen += len(target)

    def top(self) -> list[Mistake]:
        """This process's mistakes, most confident first (equal ones in evaluation order)."""
        return [m for _, _, m in sorted(self._heap, key=lambda e: (-e[0], -e[1]))]

    def gather(self) -> list[Mistake]:
        """Every process's :meth:`top` joined (a collective call under DDP: every rank makes it), the ``n``
        most confident first; ties in rank order."""
        mine = self.top()
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return mine
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, mine)
        joined = [(rank, i, m) for rank, part in enumerate(parts) for i, m in enumerate(part)]
        return [m for _, _, m in sorted(joined, key=lambda e: (-e[2].confidence, e[0], e[1]))][: self.n]


def most_confused(confusion: Tensor, class_names: Sequence[str], n: int) -> list[tuple[str, str, int, float]]:
    """The ``n`` off-diagonal cells of a ``[true, predicted]`` confusion matrix with the highest counts (> 0),
    as ``(true name, predicted name, count, count / true class's support)``; equal counts in matrix order.

    Example::

        >>> most_confused(torch.tensor([[5, 3, 0], [1, 4, 0], [0, 3, 2]]), ["a", "b", "c"], 2)
        [('a', 'b', 3, 0.375), ('c', 'b', 3, 0.6)]
    """
    counts = confusion.clone().long()
    counts.fill_diagonal_(0)
    support = confusion.sum(1).clamp(min=1)
    cells = [(int(counts[i, j]), i, j) for i, j in counts.nonzero().tolist()]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [(class_names[i], class_names[j], c, c / int(support[i])) for c, i, j in cells[:n]]


def write_mistakes(report: MistakesReport, folder: Path) -> list[Path]:
    """Write ``mistakes.csv`` (:meth:`MistakesReport.rows`) and ``most_confused.csv``."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = report.rows()
    columns = list(dict.fromkeys(k for row in rows for k in row)) or ["rank", *MISTAKE_COLUMNS]
    with open(folder / "mistakes.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    with open(folder / "most_confused.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["true_label", "pred_label", "count", "share"])
        writer.writerows([t, p, c, f"{s:.6g}"] for t, p, c, s in report.pairs)
    return [folder / "mistakes.csv", folder / "most_confused.csv"]


def image_paths(report: MistakesReport) -> list[Path] | None:
    """The image files of the examples, where every example has a ``path`` that is a file; else ``None``."""
    paths = [m.inputs.get("path") for m in report.examples]
    if not paths or not all(isinstance(p, str) and Path(p).is_file() for p in paths):
        return None
    return [Path(p) for p in paths]


def mistakes_figure(report: MistakesReport, title: str, columns: int = 5, thumbnail: int = 160) -> Any:
    """A grid of the examples' images, titled true label, predicted label and confidence (fastai's
    ``plot_top_losses``); ``None`` unless every example is an image file (:func:`image_paths`)."""
    paths = image_paths(report)
    if paths is None:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = min(columns, len(paths))
    rows = math.ceil(len(paths) / columns)
    fig = Figure(figsize=(2.4 * columns, 2.7 * rows + 0.4), dpi=100)
    FigureCanvasAgg(fig)
    fig.suptitle(f"{title}: most confident mistakes (true / predicted, confidence)")
    for k, (path, m) in enumerate(zip(paths, report.examples, strict=True)):
        ax = fig.add_subplot(rows, columns, k + 1)
        ax.imshow(_thumbnail(path, thumbnail))
        ax.set_axis_off()
        names = report.class_names
        label = f"{names[m.true]} / {names[m.predicted]}\n{m.confidence:.2f}"
        ax.set_title(label, fontsize="small", color="C3")
    fig.tight_layout()
    return fig


def wandb_tables(report: MistakesReport, prefix: str, thumbnail: int = 128) -> dict[str, Any]:
    """``{prefix}/mistakes`` (with the images, as thumbnails, where the inputs are image files) and
    ``{prefix}/most_confused`` as ``wandb.Table`` entries of a ``log`` payload (W&B keeps each table, and
    its images, in a ``run_table`` artifact of the run)."""
    import wandb

    rows = report.rows()
    columns = list(dict.fromkeys(k for row in rows for k in row)) or ["rank", *MISTAKE_COLUMNS]
    data = [[row.get(c) for c in columns] for row in rows]
    paths = image_paths(report)
    if paths is not None:
        columns = ["image", *columns]
        data = [[wandb.Image(_thumbnail(p, thumbnail)), *row] for p, row in zip(paths, data, strict=True)]
    return {
        f"{prefix}/mistakes": wandb.Table(columns=columns, data=data),
        f"{prefix}/most_confused": wandb.Table(
            columns=["true_label", "pred_label", "count", "share"], data=[list(p) for p in report.pairs]
        ),
    }


def _thumbnail(path: Path, size: int) -> Any:
    from PIL import Image

    with Image.open(path) as img:
        image = img.convert("RGB")
    image.thumbnail((size, size))
    return image


def _per_row(value: Any, size: int) -> bool:
    if isinstance(value, Tensor):
        return value.ndim > 0 and value.shape[0] == size
    return isinstance(value, (list, tuple)) and len(value) == size


def _plain(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.item() if value.ndim == 0 else value.tolist()
    return value
