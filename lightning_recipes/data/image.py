"""ImageDataModule: class-subfolder image folders or ``path,label`` CSV files, with timm transforms."""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from lightning_recipes.data._image_files import IMG_EXTENSIONS, content_hash, csv_samples, folder_samples
from lightning_recipes.data._loader import split_loader
from lightning_recipes.data._splits import ORDER, Rows, check_groups, check_options, plan, split_positions
from lightning_recipes.handshake import DataSpec, InputSpec

#: Identity column of predicted images.
META_PATH = "path"

Sample = tuple[Path, Any]


class ImageDataset(Dataset):
    """``(image, target)`` pairs read from disk; an unreadable file raises an error that names it.

    With ``with_path`` (evaluation and prediction), items are ``(image, target, {"path": "<file>"})``,
    plus each sample's ``columns`` (its ground-truth ``label``, a CSV's other columns) in that dict: the
    input's identity travels with the batch (``meta``, see :func:`~lightning_recipes.handshake.split_meta`)
    to the prediction writer and the mistakes report.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable | None = None,
        mode: str = "RGB",
        with_path: bool = False,
        columns: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.mode = mode
        self.with_path = with_path
        self.columns = list(columns) if columns is not None else None

    def __len__(self) -> int:
        return len(self.samples)

    def fingerprint(self) -> str:
        """sha256 of the files (path, size, mtime), targets, PIL mode and transform: what decides the
        items, for caches keyed by the data (the frozen-backbone feature cache)."""
        h = hashlib.sha256(f"{self.mode};{self.transform!r};{self.with_path}".encode())
        for path, target in self.samples:
            stat = Path(path).stat()
            target = target.tolist() if isinstance(target, torch.Tensor) else target
            h.update(f"{path};{stat.st_size};{stat.st_mtime_ns};{target}\n".encode())
        return h.hexdigest()[:32]

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        path, target = self.samples[index]
        try:
            with Image.open(path) as img:
                image = img.convert(self.mode)
        except (OSError, UnidentifiedImageError) as exc:
            raise ValueError(f"Cannot read image {path}: {exc}. Remove or replace the file.") from exc
        image = self.transform(image) if self.transform else image
        if not self.with_path:
            return image, target
        return image, target, {META_PATH: str(path), **(self.columns[index] if self.columns else {})}


class ImageDataModule(L.LightningDataModule):
    """Images from class subfolders or CSVs, transformed the way the backbone expects.

    Layouts (pick one):

    * ``root`` with ``train/<class>/*.jpg`` and optionally ``val/`` and ``test/`` beside it;
    * ``root`` with ``<class>/*.jpg`` only: split by a seeded, stratified ``val_fraction``/``test_fraction``
      (also used for ``val``/``test`` when those folders are missing);
    * ``root`` with ``val/<class>/`` and/or ``test/<class>/`` and no ``train/``: evaluation only (a model
      used as-is), the classes read from those folders;
    * ``train_file`` (and optionally ``val_file``, ``test_file``): CSV files with columns ``path,label``;
      a path is absolute or relative to the CSV's folder. With ``label_separator`` (e.g. ``"|"``) labels
      are multi-hot (multi-label task). With ``split_column``, one CSV says each row's split.

    Exact copies (files with the same bytes) are found at setup, reported in one line and kept on one side
    of the automatic split, as the rows of a ``group_column`` group are (see :mod:`._splits`).

    Transforms come from timm (``create_transform``): input size, interpolation, mean and std follow
    ``data_config``, or the model's ``data_config`` handed over by the handshake
    (:func:`~lightning_recipes.connect`: ``ImageClassifier`` gives its backbone's), or timm's ImageNet
    defaults (with a warning). The class names and the task go the other way (:meth:`data_spec`):
    ``multilabel`` with ``label_separator``, else ``multiclass``.
    ``train_transform`` passes augmentation options to timm for training (``hflip``, ``scale``,
    ``auto_augment``, ``re_prob``...); ``augment=False`` trains on eval transforms.

    Args:
        root: image folder (see layouts above).
        train_file, val_file, test_file: ``path,label`` CSV files.
        predict_root: folder of images (any depth, sorted by path) for ``predict``; default: the test
            split. Validation, test and predict batches are ``(images, targets, {"path": [...]})``;
            predicting the test split, the dict also holds its ``label`` and a CSV's other columns.
        label_names: class names in id order; default: sorted names found in the training data.
        label_separator: separator of several labels in a CSV cell, for multi-label data.
        val_fraction, test_fraction, seed: the stratified split used when ``val``/``test`` are absent; with
            groups or copies, a share of them, each kept on one side.
        split_column: column of ``train_file`` holding each row's split (``train``, ``val``/``validation``/
            ``valid``/``dev``, ``test``; any case), instead of ``val_file``/``test_file``.
        group_column: column of the CSVs naming each row's group (a patient, a source photo): a group
            stays on one side of the automatic split; given splits that share a group are an error.
        duplicates: ``keep`` (default) or ``drop`` exact copies but the first (order train, val, test).
        batch_size, num_workers: DataLoader settings.
        data_config: explicit timm data config (``input_size``, ``mean``, ``std``...).
        image_size: override of the input resolution (square).
        augment, train_transform: training augmentation.
        mode: PIL mode the images are converted to (``RGB`` or ``L`` for one channel).

    Example::

        >>> import tempfile, numpy as np
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> for c in ("cat", "dog"):
        ...     (root / c).mkdir()
        ...     for i in range(10):
        ...         Image.fromarray(np.full((8, 8, 3), i * 20, np.uint8)).save(root / c / f"{i}.png")
        >>> dm = ImageDataModule(root=str(root), val_fraction=0.2, batch_size=4, num_workers=0, image_size=16)
        >>> dm.setup("fit")
        >>> dm.label_names, len(dm.train_set), len(dm.val_set)
        (['cat', 'dog'], 16, 4)
        >>> next(iter(dm.train_dataloader()))[0].shape
        torch.Size([4, 3, 16, 16])
    """

    def __init__(
        self,
        root: str | None = None,
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        predict_root: str | None = None,
        label_names: list[str] | None = None,
        label_separator: str | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.0,
        seed: int = 42,
        batch_size: int = 32,
        num_workers: int = 0,
        data_config: dict[str, Any] | None = None,
        image_size: int | None = None,
        augment: bool = True,
        train_transform: dict[str, Any] | None = None,
        mode: str = "RGB",
        split_column: str | None = None,
        group_column: str | None = None,
        duplicates: Literal["keep", "drop"] = "keep",
    ) -> None:
        super().__init__()
        if (root is None) == (train_file is None):
            raise ValueError("Give exactly one of root (an image folder) or train_file (a path,label CSV)")
        check_options(split_column, duplicates, val_file, test_file)
        if root is not None and (split_column or group_column):
            raise ValueError(
                f"split_column={split_column!r} / group_column={group_column!r} name columns of train_file "
                "(a path,label CSV); with root, the splits are its train/val/test folders"
            )
        if not (
            0.0 <= val_fraction < 1.0 and 0.0 <= test_fraction < 1.0 and val_fraction + test_fraction < 1.0
        ):
            raise ValueError(
                f"val_fraction={val_fraction} and test_fraction={test_fraction} must sum below 1"
            )
        # Lightning's record of the call (the code reads the attributes below), less label_names: the model
        # has that option too, Lightning requires the two records to agree where they share a key, and the
        # names reach the model through the handshake and are saved with it.
        self.save_hyperparameters(ignore=["label_names"])
        self.root, self.predict_root = root, predict_root
        self.files = {"train": train_file, "val": val_file, "test": test_file}
        self.label_separator = label_separator
        self.val_fraction, self.test_fraction, self.seed = val_fraction, test_fraction, seed
        self.batch_size, self.num_workers = batch_size, num_workers
        self.data_config, self.image_size, self.mode = data_config, image_size, mode
        self.augment, self.train_transform = augment, train_transform
        self.split_column, self.group_column, self.duplicates = split_column, group_column, duplicates
        #: class names in id order; ``None`` until given or read (``data_spec``/``setup``)
        self.label_names = list(label_names) if label_names else None
        self.model_data_config: dict[str, Any] | None = None  # from the handshake
        self.train_set = self.val_set = self.test_set = self.predict_set = None
        self._split_rows: dict[str, list[tuple[Path, list[str]]] | None] | None = None

    @property
    def multilabel(self) -> bool:
        return self.label_separator is not None

    @property
    def task(self) -> str:
        """``multilabel`` with ``label_separator`` (several labels per image), else ``multiclass``."""
        return "multilabel" if self.multilabel else "multiclass"

    @property
    def num_classes(self) -> int | None:
        """The number of classes; ``None`` until known (given, or read by ``data_spec``/``setup``)."""
        return None if self.label_names is None else len(self.label_names)

    # -- the handshake ---------------------------------------------------------------------------
    def accept_input_spec(self, spec: InputSpec) -> None:
        """Take the model's data config (used where ``data_config`` is not given)."""
        self.model_data_config = spec.data_config

    def data_spec(self) -> DataSpec:
        """The class names (``label_names``, else the sorted names in the training data), the task and the
        transform's data config."""
        self._rows()
        config = dict(self.resolved_data_config())
        return DataSpec(label_names=list(self.label_names), task=self.task, image_config=config)

    # -- samples ---------------------------------------------------------------------------------
    def _encode(self, labels: list[str], source: Path) -> Any:
        unknown = [label for label in labels if label not in self.label_names]
        if unknown:
            raise ValueError(f"Unknown label(s) {unknown} in {source}; known classes: {self.label_names}")
        ids = [self.label_names.index(label) for label in labels]
        if not self.multilabel:
            return ids[0]
        target = torch.zeros(len(self.label_names))
        target[ids] = 1.0
        return target

    def _labelled(self, split: str) -> tuple[list[tuple[Path, list[str]]] | None, dict[str, list[str]]]:
        """``(path, [labels])`` of one split as given on disk (``None`` where the split is absent), and the
        CSV's split and group columns."""
        if self.root is None:
            path, options = self.files[split], {"split_column": self.split_column}
            options["group_column"] = self.group_column
            return (None, {}) if path is None else csv_samples(Path(path), self.label_separator, options)
        root = Path(self.root)
        if not root.is_dir():
            raise FileNotFoundError(f"Image root {root} does not exist")
        folder = root / split
        if split == "train" and not folder.is_dir():
            if (root / "val").is_dir() or (root / "test").is_dir():
                return None, {}  # evaluation only: val/ and/or test/, no training images
            folder = root  # a single folder of class subfolders
        elif not folder.is_dir():
            return None, {}
        return [(p, [name]) for name, paths in folder_samples(folder).items() for p in paths], {}

    def _rows(self) -> dict[str, list[tuple[Path, list[str]]] | None]:
        """The rows of each split (read, checked and split once: see :mod:`._splits`); sets ``label_names``
        when they were not given."""
        if self._split_rows is None:
            read = {split: self._labelled(split) for split in ORDER}
            source = {split: str(self.files[split] or Path(self.root or "", split)) for split in ORDER}
            picks: dict[str, list[int] | None] = dict.fromkeys(ORDER)  # rows of train_file, by split_column
            if self.split_column:
                samples, columns = read["train"]
                picks = split_positions(columns[self.split_column], source["train"], self.split_column)
                read = {
                    s: ([samples[i] for i in p] or None, {c: [v[i] for i in p] for c, v in columns.items()})
                    for s, p in picks.items()
                }
                source = dict.fromkeys(ORDER, source["train"])
            rows = {split: samples for split, (samples, _) in read.items()}
            keys = {
                s: Rows(
                    [content_hash(path) for path, _ in samples],
                    groups=read[s][1].get(self.group_column),
                    strata=[labels[0] for _, labels in samples],
                    source=source[s],
                    positions=picks[s],
                )
                if samples
                else None
                for s, samples in rows.items()
            }
            if self.group_column:
                check_groups(keys, self.group_column)
            carve = [
                (split, fraction / (1.0 - (self.test_fraction if split == "val" else 0.0)))
                for split, fraction in (("test", self.test_fraction), ("val", self.val_fraction))
                if rows[split] is None and fraction > 0 and rows["train"] is not None
            ]
            picked = plan(keys, carve, self.seed, self.duplicates, "images")
            rows = {s: p and ([rows[p[0]][i] for i in p[1]] or None) for s, p in picked.items()}
            if self.label_names is None:
                labelled = rows["train"] or (rows["val"] or []) + (rows["test"] or [])
                self.label_names = sorted({label for _, labels in labelled for label in labels})
            self._split_rows = rows
        return self._split_rows

    # -- transforms ------------------------------------------------------------------------------
    def resolved_data_config(self) -> dict[str, Any]:
        """The timm data config: explicit, else the model's (handshake), else timm's ImageNet defaults."""
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        config = self.data_config or self.model_data_config
        if config is None:
            config = {"input_size": (3, 224, 224), "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD}
            if not self.image_size:
                rank_zero_warn(
                    f"{type(self).__name__}: no data_config and no model connected: using timm's ImageNet "
                    "defaults (224 px). Give data_config=model.data_config or call "
                    "lightning_recipes.connect(model, datamodule) (the CLI does this)."
                )
        config = dict(config)
        if self.image_size:
            config["input_size"] = (config.get("input_size", (3,))[0], self.image_size, self.image_size)
            config["crop_pct"] = 1.0
        return config

    def transforms(self, training: bool) -> Callable:
        from timm.data import create_transform

        config = self.resolved_data_config()
        kwargs = {
            k: config[k]
            for k in ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
            if k in config
        }
        if self.mode == "L":
            kwargs["mean"], kwargs["std"] = kwargs.get("mean", (0.5,))[:1], kwargs.get("std", (0.5,))[:1]
        if training and self.augment:
            return create_transform(**kwargs, is_training=True, **(self.train_transform or {}))
        return create_transform(**kwargs, is_training=False)

    # -- LightningDataModule -----------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        rows = self._rows()
        mode = self.mode
        datasets = {}
        for split, split_rows in rows.items():
            if split_rows is None:
                datasets[split] = None
                continue
            samples = [(path, self._encode(labels, path)) for path, labels in split_rows]
            # evaluation batches carry each file's path, for the mistakes report; test batches also its
            # label and CSV columns, for the prediction writer's test table
            transform = self.transforms(training=split == "train")
            columns = self._test_columns(split_rows) if split == "test" else None
            datasets[split] = ImageDataset(
                samples, transform, mode, with_path=split != "train", columns=columns
            )
        self.train_set, self.val_set, self.test_set = datasets["train"], datasets["val"], datasets["test"]
        # Predict batches carry each file's path (and, from the test split, its label and CSV columns).
        columns = None
        if self.predict_root:
            paths = sorted(
                p for p in Path(self.predict_root).rglob("*") if p.suffix.lower() in IMG_EXTENSIONS
            )
            if not paths:
                raise ValueError(f"No images in predict_root {self.predict_root}")
            samples = [(p, -1) for p in paths]
        else:
            samples = self.test_set.samples if self.test_set is not None else None
            columns = self.test_set.columns if self.test_set is not None else None
        if samples is not None:
            transform = self.transforms(training=False)
            self.predict_set = ImageDataset(samples, transform, mode, with_path=True, columns=columns)

    def _test_columns(self, rows: list[tuple[Path, list[str]]]) -> list[dict[str, str]]:
        """Each test image's ``label`` (as written; several joined by ``label_separator``) and the columns of
        its CSV row besides ``path``."""
        given = self._csv_columns()
        separator = self.label_separator or ""
        return [{"label": separator.join(labels), **given.get(path, {})} for path, labels in rows]

    def _csv_columns(self) -> dict[Path, dict[str, str]]:
        """The columns of the CSV files besides ``path`` (``label`` and any others, as written), by image."""
        columns: dict[Path, dict[str, str]] = {}
        for file in filter(None, self.files.values()):
            with Path(file).open(newline="") as f:
                for row in csv.DictReader(f):
                    cells = {k: v or "" for k, v in row.items() if k is not None and k != META_PATH}
                    columns.setdefault(Path(file).parent / row[META_PATH], cells)
        return columns

    def _loader(self, dataset: Dataset | None, split: str, shuffle: bool = False) -> DataLoader:
        hint = f"add a {split}/ folder or {split}_file, or set {split}_fraction > 0"
        if split == "predict":
            hint = "set predict_root (a folder of images), or give a test split (predicted without one)"
        return split_loader(dataset, split, hint, self.batch_size, self.num_workers, shuffle=shuffle)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, "train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, "val")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, "test")

    def predict_dataloader(self) -> DataLoader:
        """``predict_root``'s images (sorted by path), else the test split; batches end with ``{"path"}``
        (and ``label`` and the CSV's columns, from the test split)."""
        return self._loader(self.predict_set, "predict")
