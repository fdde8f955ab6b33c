"""Label columns to class ids: names from a ``ClassLabel``, a given list or the values seen in training."""

from __future__ import annotations

from typing import Any


class LabelEncoder:
    """Maps the label values of a ``datasets.Dataset`` column to class ids (or floats, or multi-hot rows).

    Names come from ``names`` (in id order; string or integer values map to them), else from the
    column's ``ClassLabel`` feature, else from the sorted distinct values of the training split.

    Args:
        column: the label column.
        task: ``multiclass``, ``multilabel`` or ``regression``.
        names: class names in id order.
        separator: separator of several labels in one string cell (multi-label).

    Example::

        >>> from datasets import Dataset
        >>> train = Dataset.from_dict({"label": ["pos", "neg", "pos"]})
        >>> enc = LabelEncoder("label", "multiclass").fit(train)
        >>> enc.names, enc.encode(["neg", "pos"])
        (['neg', 'pos'], [0, 1])
    """

    def __init__(
        self, column: str, task: str, names: list[str] | None = None, separator: str | None = None
    ) -> None:
        self.column = column
        self.task = task
        self.names: list[str] | None = list(names) if names else None
        self.separator = separator
        self.ids: dict[Any, int] = {}

    def fit(self, train: Any) -> LabelEncoder:
        """Set :attr:`names` (and the value -> id map) from the training split."""
        if self.task == "regression":
            return self
        feature = train.features[self.column]
        declared = getattr(feature, "names", None) or getattr(
            getattr(feature, "feature", None), "names", None
        )
        if self.names is None and declared:
            self.names = list(declared)
        if self.names is None:
            values = self.values(train)
            if all(isinstance(v, int) for v in values):
                self.names = [str(v) for v in sorted(values)]
                self.ids = {v: i for i, v in enumerate(sorted(values))}
                return self
            self.names = sorted(str(v) for v in values)
        ids: dict[Any, int] = {n: i for i, n in enumerate(self.names)}
        if declared and list(declared) == self.names:
            ids.update({i: i for i in range(len(declared))})
        elif declared or all(isinstance(v, int) for v in self.values(train)):
            ids.update({i: i for i in range(len(self.names))})  # integer ids index the names
        self.ids = ids
        return self

    def values(self, ds: Any) -> set[Any]:
        """The distinct label values of ``ds`` (each label of a multi-label cell)."""
        values: set[Any] = set()
        if self.task != "multilabel":
            values.update(ds.unique(self.column))
            return values
        for value in ds[self.column]:
            values.update(value.split(self.separator) if isinstance(value, str) else value)
        return values

    def check(self, split: str, ds: Any) -> None:
        """Raise a ``ValueError`` naming label values of ``ds`` that are not known classes."""
        if self.task == "regression":
            return
        unknown = sorted(str(v) for v in self.values(ds) if v not in self.ids)
        if unknown:
            hint = (
                " (-1 marks hidden test labels, as in GLUE: test on the validation split)"
                if "-1" in unknown
                else ""
            )
            raise ValueError(
                f"Unknown label value(s) {unknown[:10]} in the {split} data (column "
                f"{self.column!r}); known labels: {self.names}{hint}"
            )

    def encode(self, values: list[Any]) -> list[Any]:
        """Class ids (multiclass), multi-hot float rows (multilabel) or floats (regression)."""
        if self.task == "regression":
            return [float(v) for v in values]
        if self.task == "multiclass":
            return [self.ids[v] for v in values]
        out = []
        for value in values:
            hot = [0.0] * len(self.names)
            for label in value.split(self.separator) if isinstance(value, str) else value:
                hot[self.ids[label]] = 1.0
            out.append(hot)
        return out

    def key(self) -> list[str]:
        """What the encoding depends on, for cache keys."""
        return sorted(map(str, self.ids.items()))
