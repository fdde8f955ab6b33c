"""The torchmetrics a classifier (and the prediction writer) computes for each task."""

from __future__ import annotations

from typing import Any

from torchmetrics import MetricCollection
from torchmetrics.classification import Accuracy, F1Score, MatthewsCorrCoef, Precision, Recall
from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError


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
