"""TextCorpusDataModule: text files or a ``datasets`` dataset, tokenised once, cut into blocks."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_recipes._compat import dataset_fingerprint
from lightning_recipes._hub import hub_call
from lightning_recipes.cache import default_cache_dir
from lightning_recipes.data._blocks import Prompts, TokenBlocks, chunk_blocks, expand_files
from lightning_recipes.data._corpus_files import corpus_format, file_documents
from lightning_recipes.data._loader import split_loader
from lightning_recipes.data._text_files import check_encoding, file_format
from lightning_recipes.data._tokenizer_cache import load_or_train_tokenizer
from lightning_recipes.data.bpe import files_fingerprint, train_bpe_tokenizer
from lightning_recipes.handshake import DataSpec, InputSpec, agree_tokenizer
from lightning_recipes.tokenizer import load_tokenizer, tokenizer_fingerprint

SPLITS = ("train", "val", "test")
#: Names a ``datasets`` DatasetDict may use for each of our splits, in order of preference.
DATASET_SPLITS = {"train": ("train",), "val": ("validation", "valid", "val", "dev"), "test": ("test",)}


class TextCorpusDataModule(L.LightningDataModule):
    """A text corpus for causal language modelling, as fixed-length blocks of token ids.

    The text (text files, the ``text_column`` of table files, or rows of a ``datasets`` dataset; each
    text file or row is one document, followed by the EOS token when ``add_eos``) is tokenised once
    and cached as a tensor file keyed by the tokenizer and the sources (paths, sizes, modification
    times), so later runs and every DDP rank load it in milliseconds. The token stream is cut into
    consecutive ``block_size`` blocks (:func:`chunk_blocks` drops a final remainder). Without
    ``val_file``/``test_file`` (or dataset splits), a seeded random ``val_fraction``/``test_fraction``
    of the training blocks is held out. Batches are ``{"input_ids": LongTensor[batch, block_size]}``.

    The tokenizer is the model's, handed over by the handshake (:func:`~lightning_recipes.connect`); a
    model from scratch has none, and then the data module's is used: ``tokenizer`` (Hub id or folder)
    or, with ``bpe_vocab_size``, a byte-level BPE trained on the training text (see
    :func:`~lightning_recipes.data.bpe.train_bpe_tokenizer`) and saved to ``tokenizer_dir``. The
    handshake gives it to :class:`~lightning_recipes.CausalLM`, which stores it in its checkpoints.
    :meth:`prepare_tokenizer` makes it (loads, trains or reuses the trained one) explicitly.

    Args:
        train_file: text file(s) or glob(s), e.g. ``data/*.txt``, or a list of them; table files (``.csv``,
            ``.tsv``, ``.jsonl``, ``.json``, ``.parquet``) give the rows of their ``text_column`` (e.g.
            SST-2's ``train.tsv`` with ``text_column: sentence``).
        val_file, test_file: held-out text file(s) or glob(s), as ``train_file``; default:
            ``val_fraction``/``test_fraction`` of train. Without ``train_file`` they serve
            ``validate``/``test`` only (evaluating a model as-is).
        dataset: instead of files, a ``datasets`` dataset: a folder written by ``save_to_disk`` or a
            name for ``datasets.load_dataset`` (e.g. ``wikitext``); splits ``train``/``validation``/``test``.
        dataset_config: the dataset's configuration (e.g. ``wikitext-2-raw-v1``).
        text_column: column of the dataset or of table files holding the text.
        tokenizer: Hugging Face tokenizer id or folder (e.g. ``gpt2``, ``./my-model``), where the model has
            none; connected to a model that has one, a different one here is an error.
        bpe_vocab_size: train a byte-level BPE tokenizer of this size on the training text instead.
        tokenizer_dir: where the trained tokenizer is saved (default: under ``cache_dir``); it is
            reused while the training text and ``bpe_vocab_size`` are unchanged.
        block_size: tokens per training sequence (the model's context length at most).
        val_fraction, test_fraction, seed: the seeded random split of blocks, where no held-out text is given.
        batch_size, num_workers: DataLoader settings.
        cache_dir: cache of token tensors and trained tokenizers (default ``$LIGHTNING_RECIPES_CACHE``
            or ``~/.cache/lightning_recipes``).
        add_eos: append the tokenizer's EOS token after every document (file or dataset row).
        predict_file: prompts for ``predict`` (a text file, one prompt per line), which
            :class:`~lightning_recipes.CausalLM` continues; batches are ``{"meta": {"prompt": [...]}}``.
        encoding: text encoding of the text, table and prompt files (``latin-1``...); a byte it cannot
            decode is an error naming the file, line and byte.
        delimiter: column separator of csv/tsv table files (e.g. ``;``) and of ``text_label`` lines; a
            ``.txt`` file stays plain text (one document) unless ``format`` says otherwise.
        format: read the train/val/test files as ``csv``, ``json``, ``parquet`` (the ``text_column`` rows),
            ``text`` (the whole file one document), ``label_text``/``text_label`` (labelled lines: each
            line's text part one document, the labels left out) instead of by extension.

    Example::

        >>> import tempfile
        >>> from lightning_recipes.data.bpe import train_bpe_tokenizer
        >>> root = Path(tempfile.mkdtemp())
        >>> _ = (root / "a.txt").write_text("a rose is a rose is a rose\\n" * 40)
        >>> _ = train_bpe_tokenizer([root / "a.txt"], vocab_size=300, output_dir=root / "tok")
        >>> dm = TextCorpusDataModule(str(root / "a.txt"), tokenizer=str(root / "tok"), block_size=16,
        ...                           batch_size=4, cache_dir=str(root / "cache"))
        >>> dm.setup("fit")
        >>> next(iter(dm.train_dataloader()))["input_ids"].shape
        torch.Size([4, 16])
    """

    def __init__(
        self,
        train_file: str | list[str] | None = None,
        val_file: str | list[str] | None = None,
        test_file: str | list[str] | None = None,
        dataset: str | None = None,
        dataset_config: str | None = None,
        text_column: str = "text",
        tokenizer: str | None = None,
        bpe_vocab_size: int | None = None,
        tokenizer_dir: str | None = None,
        block_size: int = 128,
        val_fraction: float = 0.1,
        test_fraction: float = 0.0,
        seed: int = 42,
        batch_size: int = 8,
        num_workers: int = 0,
        cache_dir: str | None = None,
        add_eos: bool = True,
        predict_file: str | None = None,
        encoding: str = "utf-8",
        delimiter: str | None = None,
        format: Literal["csv", "json", "parquet", "text", "label_text", "text_label"] | None = None,
    ) -> None:
        super().__init__()
        check_encoding(encoding)
        if format is not None:
            file_format("", format)  # an unknown format fails here
        files = (train_file, val_file, test_file)
        if dataset is not None and any(f is not None for f in files):
            raise ValueError("Give text files (train_file/val_file/test_file) or a dataset, not both")
        if dataset is None and all(f is None for f in files) and predict_file is None:
            raise ValueError(
                "Give train_file (text files/globs; val_file/test_file alone to only evaluate, "
                "predict_file alone to only generate) or dataset (a datasets dataset)"
            )
        if bpe_vocab_size is not None and dataset is None and train_file is None:
            raise ValueError("bpe_vocab_size trains a tokenizer on the training text: give train_file too")
        if tokenizer is not None and bpe_vocab_size is not None:
            raise ValueError(
                "Give at most one of tokenizer (a Hugging Face id or folder) or bpe_vocab_size "
                "(train a byte-level BPE tokenizer on the corpus); with neither, the model's is used"
            )
        if block_size < 2:
            raise ValueError(f"block_size must be >= 2, got {block_size}")
        if not (
            0.0 <= val_fraction < 1.0 and 0.0 <= test_fraction < 1.0 and val_fraction + test_fraction < 1.0
        ):
            raise ValueError(
                f"val_fraction={val_fraction} and test_fraction={test_fraction} must sum below 1"
            )
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size}, {num_workers}")
        self.save_hyperparameters()  # Lightning's record of the call; the code reads the attributes below
        self.train_file, self.val_file, self.test_file = train_file, val_file, test_file
        self.dataset, self.dataset_config, self.text_column = dataset, dataset_config, text_column
        self.tokenizer_name, self.bpe_vocab_size, self.tokenizer_dir = (
            tokenizer,
            bpe_vocab_size,
            tokenizer_dir,
        )
        self.block_size, self.add_eos = block_size, add_eos
        self.val_fraction, self.test_fraction, self.seed = val_fraction, test_fraction, seed
        self.batch_size, self.num_workers = batch_size, num_workers
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.tokenizer: Any = None  # see prepare_tokenizer
        self._dataset: Any = None
        self.train_set: TokenBlocks | None = None
        self.val_set: TokenBlocks | None = None
        self.test_set: TokenBlocks | None = None
        self.predict_file = predict_file
        self.encoding, self.delimiter, self.format = encoding, delimiter, format
        self.predict_set: Prompts | None = None

    # -- sources ---------------------------------------------------------------------------------
    def _split_files(self, split: str) -> list[Path]:
        return expand_files(getattr(self, f"{split}_file"))

    def _load_dataset(self) -> Any:
        if self._dataset is None:
            import datasets

            name = self.dataset
            if Path(name).is_dir() and any(
                (Path(name) / f).is_file() for f in ("dataset_dict.json", "state.json")
            ):
                self._dataset = datasets.load_from_disk(name)
            else:
                self._dataset = hub_call(
                    name, "datasets", "dataset", datasets.load_dataset, name, self.dataset_config
                )
        return self._dataset

    def _dataset_split(self, split: str) -> Any:
        """The ``datasets.Dataset`` of one of our splits, or ``None`` where the dataset lacks it."""
        import datasets

        data = self._load_dataset()
        if isinstance(data, datasets.Dataset):
            data = datasets.DatasetDict({"train": data})
        for name in DATASET_SPLITS[split]:
            if name in data:
                ds = data[name]
                if self.text_column not in ds.column_names:
                    raise ValueError(
                        f"Column {self.text_column!r} not in dataset {self.dataset!r} "
                        f"split {name!r}; it has {ds.column_names}. Set text_column."
                    )
                return ds
        if split == "train":
            raise ValueError(f"Dataset {self.dataset!r} has no train split; it has {list(data)}")
        return None

    def _has_source(self, split: str) -> bool:
        if self.dataset is not None:
            return self._dataset_split(split) is not None
        return getattr(self, f"{split}_file") is not None

    def _documents(self, split: str) -> Iterator[list[str]]:
        """The split's text as lists of pieces, one list per document."""
        if self.dataset is None:
            how = (str(self.cache_dir / "datasets"), self.encoding, self.delimiter, self.format)
            for path in self._split_files(split):
                yield from file_documents(path, split, self.text_column, *how)
        else:
            for text in self._dataset_split(split)[self.text_column]:
                yield [text]

    def _source_key(self, split: str) -> str:
        if self.dataset is None:
            files = self._split_files(split)
            tables = any(corpus_format(p, self.format) != "text" for p in files)
            column = f":{self.text_column}" if tables else ""
            encoding = "" if self.encoding == "utf-8" else f":{self.encoding}"
            how = "".join(f":{k}={v}" for k, v in (("format", self.format), ("sep", self.delimiter)) if v)
            return "files:" + files_fingerprint(files) + column + encoding + how
        ds = self._dataset_split(split)
        return f"dataset:{self.dataset}:{self.dataset_config}:{split}:{dataset_fingerprint(ds)}"

    # -- the handshake and the tokenizer ---------------------------------------------------------
    def accept_input_spec(self, spec: InputSpec) -> None:
        """Use the model's tokenizer, if it has one (then ``bpe_vocab_size`` is an error)."""
        if spec.tokenizer is None:
            return
        if self.bpe_vocab_size is not None:
            raise ValueError(
                f"The model brings its own tokenizer ({getattr(spec.tokenizer, 'name_or_path', '?')!r}) and "
                f"the data module would train another (bpe_vocab_size={self.bpe_vocab_size}): remove "
                "bpe_vocab_size"
            )
        own = load_tokenizer(self.tokenizer_name) if self.tokenizer_name else None
        self.tokenizer = agree_tokenizer(spec.tokenizer, own, f"tokenizer={self.tokenizer_name!r}")

    def data_spec(self) -> DataSpec:
        """The block size (none with only prompts to predict) and the tokenizer (the model's, or the one
        this data module made)."""
        texts = self.dataset is not None or any(
            f is not None for f in (self.train_file, self.val_file, self.test_file)
        )
        return DataSpec(block_size=self.block_size if texts else None, tokenizer=self.prepare_tokenizer())

    def prepare_tokenizer(self) -> Any:
        """The tokenizer: the model's (handshake), else ``tokenizer`` loaded, else the BPE trained once."""
        if self.tokenizer is None:
            if self.bpe_vocab_size:
                self.tokenizer = self._train_tokenizer()
            elif self.tokenizer_name:
                self.tokenizer = load_tokenizer(self.tokenizer_name)
            else:
                raise ValueError(
                    "TextCorpusDataModule needs a tokenizer: pass tokenizer=<id or folder> or "
                    "bpe_vocab_size, or connect it to a model that has one (lightning_recipes.connect; the "
                    "CLI does this)"
                )
        return self.tokenizer

    def _train_tokenizer(self) -> Any:
        vocab = self.bpe_vocab_size

        def train(folder: Path) -> Any:
            files = self._split_files("train") if self.dataset is None else []
            plain = files and all(corpus_format(p, self.format) == "text" for p in files)
            if plain and self.encoding == "utf-8":
                return train_bpe_tokenizer(files, vocab_size=vocab, output_dir=folder)
            texts = (text for doc in self._documents("train") for text in doc)
            return train_bpe_tokenizer(texts=texts, vocab_size=vocab, output_dir=folder)

        key = f"bpe:{vocab}:{self._source_key('train')}"
        return load_or_train_tokenizer(key, train, self.tokenizer_dir, self.cache_dir)

    # -- tokens ----------------------------------------------------------------------------------
    def tokenize(self, split: str) -> Tensor:
        """All tokens of ``split``'s text as one 1-D ``int32`` tensor (documents joined by EOS), cached."""
        tokenizer = self.prepare_tokenizer()
        key = f"{tokenizer_fingerprint(tokenizer)}|{self._source_key(split)}|eos={self.add_eos}"
        path = self.cache_dir / "corpus" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.pt"
        if path.is_file():
            return torch.load(path, weights_only=True)
        eos = tokenizer.eos_token_id if self.add_eos else None
        if self.add_eos and eos is None:
            raise ValueError(
                f"add_eos=True but tokenizer {self.tokenizer_name!r} has no EOS token; set add_eos=False"
            )
        ids: list[int] = []
        batch: list[str] = []
        ends: list[bool] = []  # whether batch[i] is the last piece of its document

        def flush() -> None:
            encoded = tokenizer(batch, add_special_tokens=False, return_attention_mask=False, verbose=False)
            for piece, end in zip(encoded["input_ids"], ends, strict=True):
                ids.extend(piece)
                if end and eos is not None:
                    ids.append(eos)
            batch.clear()
            ends.clear()

        for pieces in self._documents(split):
            for i, piece in enumerate(pieces):
                batch.append(piece)
                ends.append(i == len(pieces) - 1)
                if len(batch) >= 256:  # one call per 256 pieces: the Rust tokenizer encodes them in parallel
                    flush()
        if batch:
            flush()
        tokens = torch.tensor(ids, dtype=torch.int32)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(tokens, partial)
        os.replace(partial, path)  # atomic: a concurrent reader sees the whole file or none
        return tokens

    # -- LightningDataModule -----------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Train the tokenizer and tokenise every split once (on one process); ``setup`` reads the cache."""
        for split in SPLITS:
            if self._has_source(split):
                self.tokenize(split)

    def setup(self, stage: str | None = None) -> None:
        if self.predict_file is not None and self.predict_set is None:
            self.predict_set = Prompts(self.predict_file, self.encoding)
        if self.train_set is not None:
            return

        blocks = {
            s: chunk_blocks(self.tokenize(s), self.block_size) if self._has_source(s) else None
            for s in SPLITS
        }
        train = blocks["train"]
        if train is not None and train.shape[0] == 0:
            raise ValueError(
                f"The training text has fewer tokens than block_size={self.block_size}: "
                "add text or lower block_size"
            )
        wanted = (
            {}
            if train is None
            else {
                s: f
                for s, f in (("test", self.test_fraction), ("val", self.val_fraction))
                if blocks[s] is None and f > 0
            }
        )
        if wanted:
            n = train.shape[0]
            counts = {s: max(1, round(n * f)) for s, f in wanted.items()}
            if sum(counts.values()) >= n:
                raise ValueError(
                    f"{n} block(s) of {self.block_size} tokens are too few to hold out {counts}: "
                    "add text, lower block_size or give val_file"
                )
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
            start = 0
            for split, count in counts.items():
                blocks[split] = train[order[start : start + count].sort().values]
                start += count
            blocks["train"] = train[order[start:].sort().values]
        self.train_set, self.val_set, self.test_set = (
            None if blocks[s] is None else TokenBlocks(blocks[s]) for s in SPLITS
        )

    def _loader(self, dataset: TokenBlocks | None, split: str, shuffle: bool = False) -> DataLoader:
        hint = f"give {split}_file (or a dataset with that split) or set {split}_fraction > 0"
        return split_loader(dataset, split, hint, self.batch_size, self.num_workers, shuffle=shuffle)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, "train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, "val")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, "test")

    def predict_dataloader(self) -> DataLoader:
        """The prompts of ``predict_file`` in file order, as ``{"meta": {"prompt": [...]}}`` batches."""
        hint = "give predict_file (a text file, one prompt per line)"
        return split_loader(self.predict_set, "predict", hint, self.batch_size, self.num_workers)
