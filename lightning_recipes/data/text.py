"""TextDataModule: a Hub dataset or local csv/tsv/json/jsonl/parquet files, tokenised once and cached."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import lightning as L
from torch.utils.data import DataLoader

from lightning_recipes.cache import default_cache_dir
from lightning_recipes.data._labels import LabelEncoder
from lightning_recipes.data._loader import split_loader
from lightning_recipes.data._splits import check_options
from lightning_recipes.data._text_batches import TextCollator, length_grouped_sampler, tokenize_split
from lightning_recipes.data._text_files import (
    check_encoding,
    file_format,
    load_hub_splits,
    read_local_files,
    require_columns,
    resolve_splits,
)
from lightning_recipes.data._tokenizer_cache import wordpiece_tokenizer
from lightning_recipes.handshake import DataSpec, InputSpec, agree_tokenizer
from lightning_recipes.tokenizer import load_tokenizer


class TextDataModule(L.LightningDataModule):
    """Labelled text from the Hugging Face Hub or local files, tokenised once, padded per batch.

    Sources (pick one): ``dataset`` (+ ``dataset_config``), a Hub dataset read with
    ``datasets.load_dataset`` (splits named by ``train_split``/``val_split``/``test_split``), or local
    ``train_file`` (+ ``val_file``, ``test_file``) in csv, tsv, json, jsonl, parquet or lines (``.txt``
    with a ``delimiter``, ``.label``; see ``format``), one with a ``split_column``. Without a validation
    split, ``val_fraction`` of the training data is held out (seeded, stratified by class; a ``group_column``
    group or a set of exact copies, found and reported at setup, on one side: see :mod:`._splits`).

    Labels: class ids come from a ``ClassLabel`` column, or from ``label_names`` (names in id order;
    string or integer values map to them), else from the sorted distinct values of the training split.
    They are exposed as ``label_names`` and handed to the model by the handshake (:meth:`data_spec`)
    with the ``task``, so predictions come back as names. Multi-label columns hold lists or
    ``label_separator``-joined strings; regression labels are floats.

    Tokenisation runs once (``prepare_data``) and is cached by ``datasets`` under ``cache_dir``, keyed
    by the data, the tokenizer and these options. Batches are padded to their longest sequence
    (``DataCollatorWithPadding``); ``group_by_length`` draws training batches of similar lengths
    (transformers' ``LengthGroupedSampler``) and orders evaluation by length, which cuts padding.

    Args:
        dataset, dataset_config, dataset_revision: a Hub dataset (e.g. ``nyu-mll/glue``, ``sst2``), revision.
        train_file, val_file, test_file: local ``.csv``/``.tsv``/``.json``/``.jsonl``/``.parquet`` files.
        predict_file: texts to predict: one of those formats, or ``.txt`` with one text per line; default:
            the test split. Predict and test batches also hold ``"meta"`` (every column of the file, for
            the prediction writer's tables), predict batches ``labels`` where each row has a known label
            (the metrics); validation batches hold the texts in ``"meta"`` (the mistakes report).
        text_column: column of the text; ``text_pair_column``: second text of sentence-pair tasks.
        label_column: column of the label.
        label_names: class names in id order.
        task: ``multiclass``, ``multilabel`` or ``regression``; the handshake hands it to the model, which
            must have been built for the same task.
        label_separator: separator of several labels in one string cell (multi-label).
        train_split, val_split, test_split: split names of a Hub dataset (``test_split: validation``
            tests on the dev set when the test labels are hidden, as in GLUE).
        train_size: keep a seeded random subset of this many training examples.
        val_fraction: share of training data held out when there is no validation split.
        split_column, group_column, duplicates: ``train_file``'s column of each row's split (``train``,
            ``val``/``validation``/``valid``/``dev``, ``test``); the column of its group (on one side of any
            split); ``keep`` or ``drop`` exact copies (casefolded texts) but the first.
        tokenizer: tokenizer id or folder, for using the data module on its own; connected to a model
            (:func:`~lightning_recipes.connect`), the model's tokenizer is used, and a different one here
            is an error.
        wordpiece_vocab_size: train a WordPiece tokenizer (BERT's scheme) of this size on the training
            split's text instead (see :func:`~lightning_recipes.data.wordpiece.train_wordpiece_tokenizer`),
            for a model from scratch, which has none; the handshake hands it to the model.
        tokenizer_dir: where the trained tokenizer is saved (default: under ``cache_dir``); it is reused
            while the training text and ``wordpiece_vocab_size`` are unchanged.
        max_length: truncation length in tokens.
        batch_size: training batch size; ``eval_batch_size``: validation/test/predict (default: same).
        group_by_length: length-grouped training batches and length-sorted evaluation.
        pad_to_multiple_of: pad lengths up to a multiple of this (8 helps tensor cores).
        num_workers: DataLoader workers.
        seed: seed of ``train_size`` and ``val_fraction``.
        cache_dir: ``datasets`` cache (default ``$LIGHTNING_RECIPES_CACHE/datasets``).
        encoding: text encoding of the local files (``latin-1`` for TREC's originals); a byte it cannot
            decode is an error naming the file, line and byte.
        delimiter: column separator of csv/tsv files; a ``.txt`` file's lines are then
            ``text<delimiter>label``.
        format: read the train/val/test files as ``csv``, ``json``, ``parquet``, ``text`` (one text per
            line), ``label_text`` (``LABEL text`` lines, as ``.label`` files are read) or ``text_label``
            instead of by extension; the line formats' columns are ``text_column`` and ``label_column``.

    Example::

        >>> import tempfile
        >>> from tokenizers import BertWordPieceTokenizer
        >>> from transformers import BertTokenizerFast
        >>> folder = Path(tempfile.mkdtemp())
        >>> words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad"]
        >>> file = str(folder / "tokenizer.json")
        >>> BertWordPieceTokenizer({w: i for i, w in enumerate(words)}).save(file)
        >>> _ = BertTokenizerFast(tokenizer_file=file).save_pretrained(folder / "tok")
        >>> rows = ["text,label", "good good,pos", "bad,neg", "good,pos", "bad bad,neg"]
        >>> _ = (folder / "train.csv").write_text("\\n".join(rows))
        >>> dm = TextDataModule(train_file=str(folder / "train.csv"), text_column="text", val_fraction=0.5,
        ...                     tokenizer=str(folder / "tok"), batch_size=2, cache_dir=str(folder / "cache"))
        >>> dm.setup("fit")
        >>> dm.label_names, len(dm.train_set), len(dm.val_set)
        (['neg', 'pos'], 2, 2)
        >>> batch = next(iter(dm.train_dataloader()))
        >>> sorted(batch), batch["input_ids"].shape[0]
        (['attention_mask', 'input_ids', 'labels', 'token_type_ids'], 2)
    """

    def __init__(
        self,
        dataset: str | None = None,
        dataset_config: str | None = None,
        dataset_revision: str | None = None,
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        predict_file: str | None = None,
        text_column: str = "sentence",
        text_pair_column: str | None = None,
        label_column: str = "label",
        label_names: list[str] | None = None,
        task: Literal["multiclass", "multilabel", "regression"] = "multiclass",
        label_separator: str | None = None,
        train_split: str = "train",
        val_split: str | None = "validation",
        test_split: str | None = "test",
        train_size: int | None = None,
        val_fraction: float = 0.0,
        tokenizer: str | None = None,
        wordpiece_vocab_size: int | None = None,
        tokenizer_dir: str | None = None,
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        group_by_length: bool = False,
        pad_to_multiple_of: int | None = None,
        num_workers: int = 0,
        seed: int = 42,
        cache_dir: str | None = None,
        encoding: str = "utf-8",
        delimiter: str | None = None,
        format: Literal["csv", "json", "parquet", "text", "label_text", "text_label"] | None = None,
        split_column: str | None = None,
        group_column: str | None = None,
        duplicates: Literal["keep", "drop"] = "keep",
    ) -> None:
        super().__init__()
        if (dataset is None) == (train_file is None):
            raise ValueError("Give exactly one of dataset (a Hub dataset name) or train_file (a local file)")
        check_options(split_column, duplicates, val_file, test_file, dataset)
        check_encoding(encoding)
        if task not in ("multiclass", "multilabel", "regression"):
            raise ValueError(f"task={task!r} is not one of ('multiclass', 'multilabel', 'regression')")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if train_size is not None and train_size < 1:
            raise ValueError(f"train_size must be >= 1 (or None for all), got {train_size}")
        if tokenizer is not None and wordpiece_vocab_size is not None:
            raise ValueError(
                "Give at most one of tokenizer (a Hugging Face id or folder) or wordpiece_vocab_size "
                "(train a WordPiece tokenizer on the training text); with neither, the model's is used"
            )
        # Lightning's record of the call (the code reads the attributes below), less label_names: the model
        # has that option too, Lightning requires the two records to agree where they share a key, and the
        # names reach the model through the handshake and are saved with it.
        self.save_hyperparameters(ignore=["label_names"])
        self.dataset, self.dataset_config, self.dataset_revision = dataset, dataset_config, dataset_revision
        self.files = {"train": train_file, "val": val_file, "test": test_file, "predict": predict_file}
        self.text_column, self.text_pair_column = text_column, text_pair_column
        self.task = task
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.train_size, self.val_fraction, self.seed = train_size, val_fraction, seed
        self.tokenizer_name, self.max_length = tokenizer, max_length
        self.wordpiece_vocab_size, self.tokenizer_dir = wordpiece_vocab_size, tokenizer_dir
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.group_by_length, self.pad_to_multiple_of = group_by_length, pad_to_multiple_of
        self.cache_dir = cache_dir
        self.encoding, self.delimiter, self.format = encoding, delimiter, format
        self.split_column, self.group_column, self.duplicates = split_column, group_column, duplicates
        if train_file is not None:
            file_format(train_file, format, delimiter)  # an unknown format or extension fails here
        self.label_encoder = LabelEncoder(label_column, task, label_names, label_separator)
        self.tokenizer: Any = None  # the model's (handshake) or ``tokenizer``'s, see accept_input_spec
        self.train_set = self.val_set = self.test_set = self.predict_set = None
        self.lengths: dict[str, list[int]] = {}
        self._raw_splits: dict[str, Any] | None = None
        self._absent: dict[str, str] = {}

    # -- the handshake ---------------------------------------------------------------------------
    def accept_input_spec(self, spec: InputSpec) -> None:
        """Tokenise with the model's tokenizer, which must equal ``tokenizer`` if that is given too, or, with
        ``wordpiece_vocab_size``, the one trained here (a model reloaded from a checkpoint of this data
        brings it back; a pretrained model's own is an error)."""
        if self.wordpiece_vocab_size is not None:
            own = self._train_tokenizer() if spec.tokenizer is not None else None
            name = f"wordpiece_vocab_size={self.wordpiece_vocab_size}"
        else:
            own = load_tokenizer(self.tokenizer_name) if self.tokenizer_name else None
            name = f"tokenizer={self.tokenizer_name!r}"
        self.tokenizer = agree_tokenizer(spec.tokenizer, own, name)

    def data_spec(self) -> DataSpec:
        """Class names (read from the training labels unless given), the task, ``max_length`` and the
        tokenizer (trained here, with ``wordpiece_vocab_size``)."""
        self._fit_labels()
        tokenizer = self.prepare_tokenizer() if self.wordpiece_vocab_size else self.tokenizer
        return DataSpec(
            label_names=self.label_names, task=self.task, max_length=self.max_length, tokenizer=tokenizer
        )

    @property
    def label_names(self) -> list[str] | None:
        """Class names in id order; ``None`` before the labels are read (``data_spec``/``setup``)."""
        return self.label_encoder.names

    @property
    def num_classes(self) -> int | None:
        """1 for regression, else the number of classes; ``None`` before the labels are read."""
        return (
            1 if self.task == "regression" else (None if self.label_names is None else len(self.label_names))
        )

    def prepare_tokenizer(self) -> Any:
        """The tokenizer: the model's (handshake), else ``tokenizer`` loaded, else the trained WordPiece."""
        if self.tokenizer is None:
            if self.wordpiece_vocab_size:
                self.tokenizer = self._train_tokenizer()
            elif self.tokenizer_name:
                self.tokenizer = load_tokenizer(self.tokenizer_name)
            else:
                raise ValueError(
                    "TextDataModule needs a tokenizer: pass tokenizer=<id or folder> or "
                    "wordpiece_vocab_size, or connect it to a model that has one "
                    "(lightning_recipes.connect(model, datamodule); the CLI does this)"
                )
        return self.tokenizer

    def _train_tokenizer(self) -> Any:
        """A WordPiece tokenizer trained on the training split's text (and pair text), cached."""
        columns = [c for c in (self.text_column, self.text_pair_column) if c]
        cache = Path(self.cache_dir) if self.cache_dir else default_cache_dir()
        train = self._raw()["train"]
        return wordpiece_tokenizer(train, columns, self.wordpiece_vocab_size, self.tokenizer_dir, cache)

    # -- loading ---------------------------------------------------------------------------------
    def _raw(self) -> dict[str, Any]:
        """``{split: datasets.Dataset | None}`` for train/val/test/predict, as stored (read once)."""
        if self._raw_splits is None:
            raw = self._read()
            for split, ds in raw.items():
                if ds is not None:
                    self._check_columns(split, ds)
            sources = {s: self.files[s] or f"{self.dataset} split {self.splits[s]!r}" for s in self.splits}
            columns = (self.text_column, self.text_pair_column, self.group_column, self.split_column)
            strata = self.label_encoder.column if self.task == "multiclass" else None
            how = (self.duplicates, self.train_size, self.val_fraction, self.seed)
            self._raw_splits = resolve_splits(raw, sources, *columns, strata, *how)
        return self._raw_splits

    def _read(self) -> dict[str, Any]:
        cache = self.cache_dir or str(default_cache_dir() / "datasets")
        raw: dict[str, Any] = {}
        if self.dataset is not None:
            raw, self._absent = load_hub_splits(
                self.dataset, self.dataset_config, self.dataset_revision, self.splits, cache
            )
        files = self.files if self.dataset is None else {"predict": self.files["predict"]}
        columns = {"text": self.text_column, "label": self.label_encoder.column}
        how = {"encoding": self.encoding, "delimiter": self.delimiter, "format": self.format}
        raw.update(read_local_files(files, cache, columns, **how))
        return raw

    def _check_columns(self, split: str, ds: Any) -> None:
        needed = [self.text_column] + ([self.text_pair_column] if self.text_pair_column else [])
        if split != "predict":
            needed.append(self.label_encoder.column)
        file = self.files.get("train" if split == "val" and not self.files["val"] else split)
        how = (self.format, self.delimiter) if split != "predict" else (None, None)
        require_columns(ds, needed, split, file, *how)

    def _fit_labels(self) -> None:
        if not self.label_encoder.ids and self.task != "regression":
            self.label_encoder.fit(self._raw()["train"])

    def _tokenize(self, split: str, ds: Any) -> Any:
        # Inputs travel with the batches (``batch["meta"]``): the texts of validation batches, for the
        # mistakes report; every column of the test and predict data (its ground truth too), for the
        # prediction writer's tables (and the test mistakes).
        text, pair = self.text_column, self.text_pair_column
        every = list(ds.column_names)
        kept = {"predict": every, "test": every, "train": []}.get(split, [c for c in (text, pair) if c])
        labels = self.label_encoder if self._labelled(split, ds) else None
        tokenizer = self.prepare_tokenizer()
        return tokenize_split(ds, split, tokenizer, text, pair, self.max_length, labels, self.task, kept)

    def _labelled(self, split: str, ds: Any) -> bool:
        """Whether the split's batches carry labels: every split with the label column, and the predict data
        where each of its rows has a known label (its ground truth, for the prediction metrics)."""
        column = self.label_encoder.column
        if column not in ds.column_names or split != "predict":
            return column in ds.column_names
        self._fit_labels()
        try:
            self.label_encoder.encode(ds[column])
        except (KeyError, TypeError, ValueError, AttributeError):
            return False
        return True

    def _build(self) -> dict[str, Any]:
        raw = self._raw()
        self._fit_labels()
        out = {}
        for split, ds in raw.items():
            if ds is None:
                out[split] = None
                continue
            if split != "predict":
                self.label_encoder.check(split, ds)
            out[split] = self._tokenize(split, ds)
        return out

    # -- LightningDataModule -----------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Download (Hub) and tokenise every split once; ``setup`` then reads the cache."""
        self._built = self._build()

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            built = getattr(self, "_built", None) or self._build()
            self._built = None
            for split, ds in built.items():
                if ds is not None:
                    self.lengths[split] = ds["length"]
                    ds = ds.remove_columns("length")
                setattr(self, f"{split}_set", ds)
        if stage == "predict" and self.predict_set is None and self._raw().get("test") is not None:
            # No predict_file: predict the test split, tokenised (once, cached) with its texts kept.
            ds = self._tokenize("predict", self._raw()["test"])
            self.lengths["predict"] = ds["length"]
            self.predict_set = ds.remove_columns("length")

    def collate(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        """Pad a list of examples to the longest one (transformers' ``DataCollatorWithPadding``).

        Validation batches also hold ``"meta"``: ``{text column: [texts]}`` (and the pair column's texts);
        test and predict batches, every column of their data.
        """
        if not hasattr(self, "_collator"):
            self._collator = TextCollator(self.prepare_tokenizer(), self.task, self.pad_to_multiple_of)
        return self._collator(features)

    def _loader(self, split: str, train: bool = False) -> DataLoader:
        ds = getattr(self, f"{split}_set")
        source = "train_file" if self.dataset is None else "dataset"
        hint = self._absent.get(split) or (
            f"give {split}_file (or a {split} split of the {source})"
            + ("; or set val_fraction > 0" if split == "val" else "")
        )
        if split == "predict":
            hint = "give predict_file, or a test split (predicted when there is no predict_file)"
        batch_size = self.batch_size if train else (self.eval_batch_size or self.batch_size)
        sampler: Any = None
        if ds is not None and self.group_by_length and train:
            sampler = length_grouped_sampler(batch_size, self.lengths[split], self.seed)
        elif ds is not None and self.group_by_length and split != "predict":
            sampler = sorted(range(len(ds)), key=self.lengths[split].__getitem__)
        shuffle = train and sampler is None
        return split_loader(
            ds,
            split,
            hint,
            batch_size,
            self.num_workers,
            shuffle=shuffle,
            sampler=sampler,
            collate_fn=self.collate,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        """``predict_file`` in file order (else the test split); batches carry the texts in ``"meta"``."""
        return self._loader("predict")
