"""PredictionWriter: one table per ``predict`` run and one per ``test`` run, each input once with its input
columns, and the metrics where the predicted inputs carry their ground truth."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_recipes.eval_samples import RealSamples, dataset_indices, evaluation_dataloaders
from lightning_recipes.handshake import META_KEY, PREDICTION_CONSTANTS, real_meta

#: Key of a ``predict_step`` output holding each row's ground truth (class ids, 0/1 rows or values), where
#: the inputs carry it: the metrics are computed from it; it is not a column (the input's own label is).
TARGET_KEY = "target"
#: Prefix of the columns holding what the model predicted, so that none collides with an input column.
PRED_PREFIX = "pred_"
#: Prefix of the test table's file name: ``test_predictions.csv`` beside ``predictions.csv``.
TEST_PREFIX = "test_"

#: ``(dataloader index, dataset indices or None, predict_step output on the CPU)`` of one batch; the
#: output is a dict (see :class:`PredictionWriter`) or a tensor of probabilities.
Chunk = tuple[int, list[int] | None, "dict[str, Any] | Tensor"]


class PredictionWriter(BasePredictionWriter):
    """Writes what ``predict`` returns, and what each ``test`` predicted, to the run's directory, one row per
    input, on global rank zero.

    Files (``filename`` is ``predictions`` by default):

    * ``predictions.csv``, or ``predictions.jsonl`` where a cell holds a list (multi-label: the
      predicted names; several regression targets): one row per input in dataset order, with
      ``index`` (the input's position in the predict data: the row of a text file, the image in
      sorted path order), the input columns the batch carried as they are (``path`` of an image and its
      ``label`` or CSV columns; every column of a text file, its ground-truth label included;
      ``prompt``; one named ``index`` becomes ``input_index``), then what the model predicted, each
      under ``pred_``: ``pred_label`` (the class name; ``pred_value`` for regression), one
      ``pred_prob_<class name>`` per class (``pred_continuation`` of a language model).
    * ``predictions.pt``: the ``predict_step`` outputs joined in the same order: ``index``
      (LongTensor), ``probabilities`` (Tensor), ``labels``, ``target`` (where known), ``meta`` (the
      input columns as lists), ``label_names``, ``task`` and ``metrics``.

    Where the outputs carry each input's ground truth (``"target"``: ``ClassificationModule`` returns it
    when the predict data is labelled, e.g. the test split or a ``predict_file`` with the label column),
    the writer computes the test stage's metrics over those rows (``predict/acc``, ``predict/f1``... of
    :func:`~lightning_recipes.modules._metrics.build_metrics`), prints them once and logs them to
    the trainer's loggers; :attr:`metrics` holds them.

    At the end of each ``test`` the writer also writes ``test_predictions.csv`` (``.jsonl``, ``.pt``;
    :data:`TEST_PREFIX` + ``filename``): the same columns, one row per input of the test split in dataset
    order (``index``: its position in the split), from what ``test_step`` returned (``{"preds", "target"}``,
    the probabilities the test metrics were computed from, turned into rows by the module's
    ``prediction_output``) and the input columns the test batches carry (``split_meta``). Its metrics are
    not computed again: the ``.pt`` holds those the module logged (``metrics``: ``{"test/acc": ...}``). A
    module whose ``test_step`` returns no ``preds`` (``CausalLM``: perplexity only) gets no test table.
    Under DDP the samples the ``DistributedSampler`` repeats are dropped (:class:`RealSamples`, as the
    module's metrics drop them) and each rank's rows are placed by the dataset indices its sampler deals
    (:func:`~lightning_recipes.eval_samples.dataset_indices`; a sampler of random order: rows in the
    order evaluated, rank by rank).

    It reads only what each ``predict_step`` returns (see
    :meth:`~lightning_recipes.modules._classification.ClassificationModule.predict_step`): a dict
    with per-row tensors or lists, the batch's identity under ``"meta"``, and ``label_names``/``task``;
    a bare tensor is taken as probabilities. Under DDP every rank's rows are gathered with their
    dataset indices (Lightning's ``batch_indices``); an input predicted twice (a sampler that pads
    the last batch by repeating inputs) is written once, and only rank zero writes.
    ``lightning run`` and ``lightning-recipes predict`` add one to every trainer whose recipe does not
    configure a ``BasePredictionWriter`` itself.

    Args:
        output_dir: where to write; default: the run directory (``trainer.log_dir``, else
            ``default_root_dir``).
        filename: file name without extension.

    After ``predict``, :attr:`path` is the table written (``None`` on other ranks), :attr:`num_rows` its
    number of rows and :attr:`metrics` the metrics (``{}`` without ground truth); after ``test``,
    :attr:`test_path` and :attr:`test_num_rows`.
    """

    def __init__(self, output_dir: str | None = None, filename: str = "predictions") -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.filename = filename
        self.path: Path | None = None
        self.num_rows = 0
        self.metrics: dict[str, float] = {}
        self.test_path: Path | None = None
        self.test_num_rows = 0
        self._chunks: list[Chunk] = []
        self._warned = False
        self._samples = RealSamples()  # the test samples DDP's sampler repeats are dropped
        self._indices: dict[int, list[int] | None] = {}

    @override
    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._chunks, self.path, self.num_rows, self.metrics = [], None, 0, {}

    @override
    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        if not isinstance(prediction, (Mapping, Tensor)):
            self._warn(
                f"predict_step returned a {type(prediction).__name__}, not a dict or tensor: not written"
            )
            return
        if not batch_indices:
            self._warn("the predict DataLoader's batch indices are unknown: rows are written in rank order")
        indices = list(batch_indices) if batch_indices else None
        self._chunks.append((dataloader_idx, indices, _to_cpu(prediction)))

    @override
    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        gathered = self._gathered(trainer)
        if gathered is None:
            return
        folder, constants, rows = gathered
        self.metrics = metrics(constants, rows)
        self.path = write(folder, self.filename, rows, {**constants, "metrics": self.metrics})
        self.num_rows = len(rows)
        rank_zero_info(f"Predictions: {self.num_rows} rows -> {self.path}")
        if self.metrics:
            labelled = sum(isinstance(row.get(TARGET_KEY), Tensor) for row in rows)
            shown = ", ".join(f"predict/{k}={v:.4f}" for k, v in self.metrics.items())
            rank_zero_info(f"Prediction metrics ({labelled} of {self.num_rows} rows labelled): {shown}")
            for logger in trainer.loggers:
                logger.log_metrics({f"predict/{k}": v for k, v in self.metrics.items()}, trainer.global_step)

    @override
    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._chunks, self.test_path, self.test_num_rows = [], None, 0
        loaders = evaluation_dataloaders(trainer, "test")
        self._samples.start_with(loaders)
        self._indices = {idx: dataset_indices(loader) for idx, loader in enumerate(loaders)}

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
        rows_of = getattr(pl_module, "prediction_output", None)  # ClassificationModule's
        preds = outputs.get("preds") if isinstance(outputs, Mapping) else None
        if not callable(rows_of) or not isinstance(preds, Tensor):
            return  # no per-row predictions (a language model's perplexity): no test table
        target = outputs.get(TARGET_KEY)
        first = self._samples.seen.get(dataloader_idx, 0)
        keep = self._samples.keep(len(preds), dataloader_idx)
        if not keep:
            return
        indices = self._indices.get(dataloader_idx)
        if indices is None:
            self._warn("the test DataLoader's order is not fixed: test rows are written in evaluation order")
        output = rows_of(preds[:keep], real_meta(batch, keep), None if target is None else target[:keep])
        chunk_indices = None if indices is None else indices[first : first + keep]
        self._chunks.append((dataloader_idx, chunk_indices, _to_cpu(output)))

    @override
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        gathered = self._gathered(trainer)  # here, not at the epoch's end: the logged metrics are final
        if gathered is None:
            return
        folder, constants, rows = gathered
        logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        self.test_path = write(folder, TEST_PREFIX + self.filename, rows, {**constants, "metrics": logged})
        self.test_num_rows = len(rows)
        rank_zero_info(f"Test predictions: {self.test_num_rows} rows -> {self.test_path}")

    def _gathered(self, trainer: L.Trainer) -> tuple[Path, dict[str, Any], list[dict[str, Any]]] | None:
        """``(folder, constants, rows)`` of every rank's chunks on global rank zero (a collective call under
        DDP: every rank makes it); ``None`` on the other ranks and where nothing was predicted."""
        folder = Path(self.output_dir or trainer.log_dir or trainer.default_root_dir)  # on every rank
        chunks = _gather(self._chunks)
        self._chunks = []
        if not trainer.is_global_zero or not chunks:
            return None
        return folder, *merge(chunks)

    def _warn(self, message: str) -> None:
        if not self._warned:
            rank_zero_warn(f"PredictionWriter: {message}")
            self._warned = True


def _to_cpu(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if isinstance(value, Mapping):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_cpu(v) for v in value]
    return value


def _gather(chunks: list[Chunk]) -> list[Chunk]:
    """Every rank's chunks, rank by rank (on every rank); the chunks themselves outside DDP."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return chunks
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, chunks)
    return [chunk for part in parts for chunk in part]


def _rows_of(output: dict[str, Any], size: int) -> list[dict[str, Any]]:
    """Split one batch output into ``size`` row dicts (``meta`` columns under ``"meta"``)."""
    meta = output.get(META_KEY) or {}
    fields = {k: v for k, v in output.items() if k not in PREDICTION_CONSTANTS and k != META_KEY}

    def per_row(value: Any) -> bool:
        if isinstance(value, Tensor):
            return value.ndim > 0 and value.shape[0] == size
        return isinstance(value, (list, tuple)) and len(value) == size

    fields = {k: v for k, v in fields.items() if per_row(v)}
    meta = {k: v for k, v in meta.items() if per_row(v)}
    rows = []
    for i in range(size):
        row = {k: v[i].clone() if isinstance(v, Tensor) else v[i] for k, v in fields.items()}
        row[META_KEY] = {k: v[i].clone() if isinstance(v, Tensor) else v[i] for k, v in meta.items()}
        rows.append(row)
    return rows


def _batch_size(output: dict[str, Any]) -> int:
    for key, value in [*output.items(), *(output.get(META_KEY) or {}).items()]:
        if key in PREDICTION_CONSTANTS or key == META_KEY:
            continue
        if isinstance(value, Tensor) and value.ndim > 0:
            return value.shape[0]
        if isinstance(value, (list, tuple)):
            return len(value)
    return 0


def merge(chunks: list[Chunk]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(constants, rows)``: each input once (first seen), in (dataloader, dataset index) order.

    A row is a ``predict_step`` row (``{"probabilities": Tensor, "labels": ..., "meta": {...}}``) plus
    ``"index"`` (and ``"dataloader"``). Rows without dataset indices keep their order and are numbered.

    Example::

        >>> import torch
        >>> out = lambda i: {"probabilities": torch.rand(1, 2), "meta": {"text": [f"t{i}"]}}
        >>> chunks = [(0, [0], out(0)), (0, [2], out(2)), (0, [1], out(1)), (0, [0], out(0))]  # 0 twice
        >>> _, rows = merge(chunks)
        >>> [(r["index"], r["meta"]["text"]) for r in rows]
        [(0, 't0'), (1, 't1'), (2, 't2')]
    """
    constants: dict[str, Any] = {}
    keyed: dict[tuple[int, int], dict[str, Any]] = {}
    unkeyed: list[dict[str, Any]] = []
    for dataloader_idx, indices, output in chunks:
        if isinstance(output, Tensor):
            output = {"probabilities": output}
        for key in PREDICTION_CONSTANTS:
            if output.get(key) is not None:
                constants.setdefault(key, output[key])
        rows = _rows_of(output, len(indices) if indices is not None else _batch_size(output))
        for position, row in enumerate(rows):
            row["dataloader"] = dataloader_idx
            if indices is None:
                unkeyed.append(row)
            else:
                row["index"] = int(indices[position])
                keyed.setdefault((dataloader_idx, row["index"]), row)
    rows = [keyed[key] for key in sorted(keyed)]
    for number, row in enumerate(unkeyed, start=len(rows)):
        row["index"] = number
    return constants, rows + unkeyed


def metrics(constants: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, float]:
    """The test stage's metrics (:func:`~lightning_recipes.modules._metrics.build_metrics`) over
    the rows with a ground truth (``"target"``); ``{}`` where none has one or the task is unknown.

    Example::

        >>> import torch
        >>> rows = [{"probabilities": torch.tensor(p), "target": torch.tensor(t)}
        ...         for p, t in (([0.9, 0.1], 0), ([0.2, 0.8], 0), ([0.3, 0.7], 1))]
        >>> round(metrics({"task": "multiclass", "label_names": ["a", "b"]}, rows)["acc"], 4)
        0.6667
    """
    from lightning_recipes.modules._metrics import build_metrics

    task, names = constants.get("task"), constants.get("label_names")
    labelled = [row for row in rows if isinstance(row.get(TARGET_KEY), Tensor)]
    if not labelled or task not in ("multiclass", "multilabel", "regression"):
        return {}
    probs = torch.stack([row["probabilities"] for row in labelled]).float()
    target = torch.stack([row[TARGET_KEY] for row in labelled])
    if task != "regression" and (not names or probs.shape[-1] != len(names)):
        return {}
    collection = build_metrics(task, 1 if task == "regression" else len(names))
    collection.update(probs, target.int() if task == "multilabel" else target)
    return {name: float(value) for name, value in collection.compute().items()}


def _cell(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.item() if value.ndim == 0 else value.tolist()
    return value


def table(constants: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The file's rows: ``index``, the input columns, then ``pred_label``/``pred_value`` and
    ``pred_prob_<name>`` per class (every output of the model under ``pred_``)."""
    names, task = constants.get("label_names"), constants.get("task")
    several = len({row["dataloader"] for row in rows}) > 1
    out = []
    for row in rows:
        cells: dict[str, Any] = {"dataloader": row["dataloader"]} if several else {}
        cells["index"] = row["index"]
        predicted: dict[str, Any] = {}
        for key, value in sorted(row.items(), key=lambda item: item[0] != "labels"):  # the label first
            if key in ("index", "dataloader", META_KEY, TARGET_KEY):
                continue
            if key == "labels":
                predicted[PRED_PREFIX + ("value" if task == "regression" else "label")] = _cell(value)
            elif key == "probabilities" and task != "regression":
                probs = _cell(value)
                if isinstance(probs, list):
                    columns = names if names and len(names) == len(probs) else range(len(probs))
                    pairs = zip(columns, probs, strict=True)
                    predicted.update({f"{PRED_PREFIX}prob_{n}": p for n, p in pairs})
                else:
                    predicted[f"{PRED_PREFIX}probability"] = probs
            elif key != "probabilities" or "labels" not in row:
                predicted[PRED_PREFIX + key] = _cell(value)
        for key, value in row[META_KEY].items():
            cells[f"input_{key}" if key in predicted or key in cells else key] = _cell(value)
        out.append({**cells, **predicted})
    return out


def _joined(values: list[Any]) -> Any:
    if values and all(isinstance(v, Tensor) for v in values) and len({v.shape for v in values}) == 1:
        return torch.stack(values)
    return values


def write(folder: Path, filename: str, rows: list[dict[str, Any]], constants: dict[str, Any]) -> Path:
    """Write ``filename.csv`` (``.jsonl`` where a cell holds a list) and ``filename.pt``; return the table."""
    folder.mkdir(parents=True, exist_ok=True)
    records = table(constants, rows)
    columns = list(dict.fromkeys(key for record in records for key in record))
    nested = any(isinstance(v, (list, dict)) for record in records for v in record.values())
    path = folder / f"{filename}.{'jsonl' if nested else 'csv'}"
    (folder / f"{filename}.{'csv' if nested else 'jsonl'}").unlink(missing_ok=True)  # one table per run
    with path.open("w", newline="", encoding="utf-8") as f:
        if nested:
            f.writelines(json.dumps(record, ensure_ascii=False, default=str) + "\n" for record in records)
        else:
            writer = csv.DictWriter(f, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(records)

    keys = list(dict.fromkeys(k for row in rows for k in row if k not in ("index", "dataloader", META_KEY)))
    tensors: dict[str, Any] = {"index": torch.tensor([row["index"] for row in rows], dtype=torch.long)}
    if len({row["dataloader"] for row in rows}) > 1:
        tensors["dataloader"] = torch.tensor([row["dataloader"] for row in rows], dtype=torch.long)
    tensors.update({key: _joined([row.get(key) for row in rows]) for key in keys})
    meta_keys = dict.fromkeys(k for row in rows for k in row[META_KEY])
    tensors[META_KEY] = {key: [row[META_KEY].get(key) for row in rows] for key in meta_keys}
    tensors.update(constants)
    torch.save(tensors, folder / f"{filename}.pt")
    return path
