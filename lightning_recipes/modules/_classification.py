"""Loss, metrics and train/val/test/predict steps shared by the image and text classifiers."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.classification import Accuracy, F1Score, MatthewsCorrCoef, Precision, Recall
from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError

from lightning_recipes.eval_samples import RealSamples
from lightning_recipes.handshake import META_KEY, DataSpec, split_meta
from lightning_recipes.modules._base import TransferModule

Task = Literal["multiclass", "multilabel", "regression"]
TASKS = ("multiclass", "multilabel", "regression")
#: Checkpoint key holding the class names in id order.
LABEL_NAMES_KEY = "lightning_recipes_label_names"


def build_metrics(task: str, num_classes: int) -> MetricCollection:
    """torchmetrics for ``task``: accuracy/F1/precision/recall/MCC (macro) or RMSE/MAE."""
    if task == "regression":
        return MetricCollection({"rmse": MeanSquaredError(squared=False), "mae": MeanAbsoluteError()})
    kwargs: dict[str, Any] = (
        {"task": "multilabel", "num_labels": num_classes}
        if task == "multilabel"
        else {"task": "multiclass", "num_classes": num_classes}
    )
    return MetricCollection(
        {
            "acc": Accuracy(**kwargs, average="micro"),
            "f1": F1Score(**kwargs, average="macro"),
            "precision": Precision(**kwargs, average="macro"),
            "recall": Recall(**kwargs, average="macro"),
            "mcc": MatthewsCorrCoef(**kwargs),
        }
    )


class ClassificationModule(TransferModule):
    """A :class:`TransferModule` that maps a batch to logits and trains them for one task.

    Subclasses implement :meth:`logits_and_target` (and ``forward``). The module logs
    ``{stage}/loss`` and the metrics of :func:`build_metrics` as ``{stage}/acc``, ``{stage}/f1``, ...;
    ``validation_step``/``test_step`` return ``{"preds", "target"}`` (probabilities and labels) for
    callbacks such as :class:`~lightning_recipes.callbacks.CurveLogger`; ``predict_step`` returns
    probabilities, label names and the inputs' identity for the
    :class:`~lightning_recipes.callbacks.PredictionWriter`.

    Class names (``label_names``) are given, or adopted from the data module by the handshake
    (:meth:`accept_data_spec`), which also checks that the data has ``num_classes`` classes; they are
    saved with the model, so predictions and curves use them.

    Args:
        num_classes: number of classes (labels for multi-label, targets for regression); the handshake
            checks it against the data.
        task: ``multiclass`` (softmax + cross-entropy), ``multilabel`` (sigmoid + BCE) or
            ``regression`` (MSE, or Huber with ``huber_delta``).
        label_names: class names in id order; default: the data module's, through the handshake.
        label_smoothing: cross-entropy label smoothing (multiclass).
        class_weights: per-class loss weights (multiclass) or positive weights (multilabel).
        huber_delta: use the Huber loss with this delta for regression instead of MSE.
        **kwargs: the :class:`~lightning_recipes.TransferModule` options (``lr``, ``backbone_lr``,
            ``optimizer``, ``lr_scheduler``, ``scheduler_interval``, ``scheduler_monitor``,
            ``agc_clip_factor``).
    """

    def __init__(
        self,
        num_classes: int = 2,
        task: Task = "multiclass",
        label_names: list[str] | None = None,
        label_smoothing: float = 0.0,
        class_weights: list[float] | None = None,
        huber_delta: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if label_names is not None and len(label_names) != num_classes:
            raise ValueError(
                f"label_names has {len(label_names)} names {label_names} but num_classes={num_classes}"
            )
        if task not in TASKS:
            raise ValueError(f"task={task!r} is not one of {TASKS}")
        if num_classes < 1 or (task == "multiclass" and num_classes < 2):
            raise ValueError(f"num_classes={num_classes} is too small for task={task!r}")
        if class_weights is not None and len(class_weights) != num_classes:
            raise ValueError(f"class_weights has {len(class_weights)} entries but num_classes={num_classes}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.task = task
        self.num_classes = num_classes
        self.labels = list(label_names) if label_names is not None else None
        self.label_smoothing = label_smoothing
        self.huber_delta = huber_delta
        weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float)
        self.register_buffer("class_weights", weights, persistent=False)
        self.train_metrics = build_metrics(task, num_classes).clone(prefix="train/")
        self.val_metrics = build_metrics(task, num_classes).clone(prefix="val/")
        self.test_metrics = build_metrics(task, num_classes).clone(prefix="test/")
        self._eval_samples = RealSamples()

    @property
    def label_names(self) -> list[str]:
        """Class names in id order (``LABEL_<i>`` where none are known)."""
        return self.labels or [f"LABEL_{i}" for i in range(self.num_classes)]

    def accept_data_spec(self, spec: DataSpec) -> None:
        """Check that the data has ``num_classes`` classes and adopt its class names."""
        super().accept_data_spec(spec)
        names = spec.label_names
        if names is None or self.task == "regression":
            return
        if len(names) != self.num_classes:
            raise ValueError(
                f"The data has {len(names)} classes {list(names)[:20]} but the model was built with "
                f"num_classes={self.num_classes}: set model num_classes: {len(names)} "
                "(model.init_args.num_classes in a recipe)"
            )
        if self.labels is None:
            self.labels = list(names)
        elif list(names) != self.labels:
            raise ValueError(f"The data's class names {list(names)} differ from the model's {self.labels}")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Class names adopted from the data travel with the weights, and come back on load.
        super().on_save_checkpoint(checkpoint)
        checkpoint[LABEL_NAMES_KEY] = self.labels

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.labels = checkpoint.get(LABEL_NAMES_KEY, self.labels)

    def logits_and_target(self, batch: Any) -> tuple[Tensor, Tensor]:
        """Return ``(logits, target)`` for a batch; implemented by subclasses."""
        raise NotImplementedError(f"{type(self).__name__} must implement logits_and_target(batch)")

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.task == "multiclass":
            return F.cross_entropy(
                logits, target, weight=self.class_weights, label_smoothing=self.label_smoothing
            )
        if self.task == "multilabel":
            return F.binary_cross_entropy_with_logits(logits, target.float(), pos_weight=self.class_weights)
        logits = logits.squeeze(-1) if target.dim() == 1 else logits
        if self.huber_delta is not None:
            return F.huber_loss(logits, target.float(), delta=self.huber_delta)
        return F.mse_loss(logits, target.float())

    def probabilities(self, logits: Tensor) -> Tensor:
        """Softmax (multiclass), sigmoid (multilabel) or the raw outputs (regression)."""
        if self.task == "multiclass":
            return logits.softmax(-1)
        if self.task == "multilabel":
            return logits.sigmoid()
        return logits.squeeze(-1) if logits.shape[-1] == 1 else logits

    def _step(
        self, batch: Any, stage: str, metrics: MetricCollection, dataloader_idx: int = 0
    ) -> dict[str, Any]:
        logits, target = self.logits_and_target(batch)
        loss = self.loss(logits, target)
        preds = self.probabilities(logits.detach().float())
        n = target.shape[0]
        # Under DDP, Lightning's evaluation sampler repeats samples at the end of a rank's share so the
        # ranks are even: they are left out of the loss and metrics, which then equal one process's.
        keep = n if stage == "train" else self._eval_samples.keep(n, dataloader_idx)
        if keep:
            metrics.update(preds[:keep], (target.int() if self.task == "multilabel" else target)[:keep])
        logged = loss if keep in (0, n) else self.loss(logits[:keep], target[:keep])
        self.log(f"{stage}/loss", logged, prog_bar=True, batch_size=keep, sync_dist=stage != "train")
        self.log_dict(metrics, prog_bar=stage != "train", batch_size=keep, on_epoch=True, on_step=False)
        return {"loss": loss, "preds": preds, "target": target}

    def on_validation_epoch_start(self) -> None:
        self._eval_samples.start(self.trainer, "validate")

    def on_test_epoch_start(self) -> None:
        self._eval_samples.start(self.trainer, "test")

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "train", self.train_metrics)["loss"]

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        return self._step(batch, "val", self.val_metrics, dataloader_idx)

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        return self._step(batch, "test", self.test_metrics, dataloader_idx)

    def decode(self, probs: Tensor) -> list[dict[str, Any]]:
        """Turn a batch of :meth:`probabilities` into ``{"label", "probabilities"}`` dicts (``{"value"}``
        for regression; ``label`` is the list of names above 0.5 for multi-label)."""
        if self.task == "regression":
            return [{"value": v} for v in probs.tolist()]
        names = self.label_names
        out = []
        for row in probs.tolist():
            scores = dict(zip(names, row, strict=True))
            if self.task == "multilabel":
                label: Any = [n for n, p in scores.items() if p > 0.5]
            else:
                label = names[max(range(len(row)), key=row.__getitem__)]
            out.append({"label": label, "probabilities": scores})
        return out

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """What :class:`~lightning_recipes.callbacks.PredictionWriter` writes, for one batch.

        ``{"probabilities": Tensor, "labels": [...], "label_names": [...], "task": str, "meta": {...}}``:
        probabilities (multiclass/multilabel; the predicted values for regression), each row's label
        (a class name; the list of names above 0.5 for multi-label; the value for regression), the
        class names in id order, the task, and the batch's identity columns (file path, text...) as
        the data module gave them (:func:`~lightning_recipes.handshake.split_meta`).
        """
        inputs, meta = split_meta(batch)
        probs = self.probabilities(self(inputs).float())
        return {
            "probabilities": probs,
            "labels": [d.get("label", d.get("value")) for d in self.decode(probs)],
            "label_names": None if self.task == "regression" else self.label_names,
            "task": self.task,
            META_KEY: meta,
        }
