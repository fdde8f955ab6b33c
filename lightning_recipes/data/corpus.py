"""TextCorpusDataModule: text files or a ``datasets`` dataset, tokenised once, cut into blocks."""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_recipes.cache import default_cache_dir
from lightning_recipes.data._loader import split_loader
from lightning_recipes.data.bpe import _read_lines, files_fingerprint, load_tokenizer, train_bpe_tokenizer

SPLITS = ("train", "val", "test")
#: Names a ``datasets`` DatasetDict may use for each of our splits, in order of preference.
DATASET_SPLITS = {"train": ("train",), "val": ("validation", "valid", "val", "dev"), "test": ("test",)}


def expand_files(patterns: str | Sequence[str] | None) -> list[Path]:
    """Paths matching ``patterns`` (paths or globs, ``**`` allowed), in the order given, each sorted.

    A pattern that matches nothing raises ``FileNotFoundError`` naming it.

    Example::

        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> for name in ("b.txt", "a.txt"):
        ...     _ = (root / name).write_text("x")
        >>> [p.name for p in expand_files(str(root / "*.txt"))]
        ['a.txt', 'b.txt']
    """
    if patterns is None:
        return []
    found: list[Path] = []
    for pattern in [patterns] if isinstance(patterns, str) else patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        matches = [m for m in matches if Path(m).is_file()]
        if not matches:
            raise FileNotFoundError(
                f"No text file matches {pattern!r} (relative paths start at {Path.cwd()})"
            )
        found.extend(Path(m) for m in matches)
    return found


def chunk_blocks(tokens: Tensor, block_size: int) -> Tensor:
    """Cut a 1-D token tensor into ``(len(tokens) // block_size, block_size)`` consecutive blocks.

    Block ``i`` is ``tokens[i * block_size:(i + 1) * block_size]``: every token lands in exactly one
    block, except the final remainder of fewer than ``block_size`` tokens, which is dropped.

    Example::

        >>> chunk_blocks(torch.arange(7), 3)
        tensor([[0, 1, 2],
                [3, 4, 5]])
    """
    if block_size < 2:
        raise ValueError(f"block_size must be >= 2 (an input and a next token), got {block_size}")
    n = tokens.numel() // block_size
    return tokens[: n * block_size].reshape(n, block_size)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of a tokenizer's full definition (vocabulary, merges, normalisation), for cache keys."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class TokenBlocks(Dataset):
    """Rows of a ``(num_blocks, block_size)`` token tensor as ``{"input_ids": LongTensor[block_size]}``."""

    def __init__(self, blocks: Tensor) -> None:
        self.blocks = blocks

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {"input_ids": self.blocks[index].long()}


class TextCorpusDataModule(L.LightningDataModule):
    """A text corpus for causal language modelling, as fixed-length blocks of token ids.

    The text (files, or rows of a ``datasets`` dataset; each file or row is one document, followed
    by the EOS token when ``add_eos``) is tokenised once and cached as a tensor file keyed by the
    tokenizer and the sources (paths, sizes, modification times), so later runs and every DDP rank
    load it in milliseconds. The token stream is cut into consecutive ``block_size`` blocks (see
    :func:`chunk_blocks`: the final remainder of fewer than ``block_size`` tokens is dropped). Without
    ``val_files``/``test_files`` (or dataset splits), a seeded random ``val_fraction``/``test_fraction``
    of the training blocks is held out. Batches are ``{"input_ids": LongTensor[batch, block_size]}``.

    The tokenizer is either given (Hub id or folder) or, with ``bpe_vocab_size``, a byte-level BPE
    trained on the training text (see :func:`~lightning_recipes.data.bpe.train_bpe_tokenizer`) and
    saved to ``tokenizer_dir``; :class:`~lightning_recipes.CausalLM` adopts the data module's
    tokenizer when it has none, and stores it in its checkpoints.

    Args:
        train_files: text file(s) or glob(s) (UTF-8), e.g. ``data/*.txt``.
        val_files, test_files: held-out text files; default: ``val_fraction``/``test_fraction`` of train.
            Without ``train_files`` they serve ``validate``/``test`` only (evaluating a model as-is).
        dataset: instead of files, a ``datasets`` dataset: a folder written by ``save_to_disk`` or a
            name for ``datasets.load_dataset`` (e.g. ``wikitext``); splits ``train``/``validation``/``test``.
        dataset_config_name: the dataset's configuration (e.g. ``wikitext-2-raw-v1``).
        text_column: column of the dataset holding the text.
        tokenizer: Hugging Face tokenizer id or folder (e.g. ``gpt2``, ``./my-model``).
        bpe_vocab_size: train a byte-level BPE tokenizer of this size on the training text instead.
        tokenizer_dir: where the trained tokenizer is saved (default: under ``cache_dir``); it is
            reused while the training text and ``bpe_vocab_size`` are unchanged.
        block_size: tokens per training sequence (the model's context length at most).
        val_fraction, test_fraction, seed: the seeded random split of blocks, where no held-out text is given.
        batch_size, num_workers: DataLoader settings.
        cache_dir: cache of token tensors and trained tokenizers (default ``$LIGHTNING_RECIPES_CACHE``
            or ``~/.cache/lightning_recipes``).
        add_eos: append the tokenizer's EOS token after every document (file or dataset row).

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
        train_files: str | list[str] | None = None,
        val_files: str | list[str] | None = None,
        test_files: str | list[str] | None = None,
        dataset: str | None = None,
        dataset_config_name: str | None = None,
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
    ) -> None:
        super().__init__()
        files = (train_files, val_files, test_files)
        if dataset is not None and any(f is not None for f in files):
            raise ValueError("Give text files (train_files/val_files/test_files) or a dataset, not both")
        if dataset is None and all(f is None for f in files):
            raise ValueError(
                "Give train_files (text files/globs; val_files/test_files alone to only evaluate) "
                "or dataset (a datasets dataset)"
            )
        if bpe_vocab_size is not None and dataset is None and train_files is None:
            raise ValueError("bpe_vocab_size trains a tokenizer on the training text: give train_files too")
        if (tokenizer is None) == (bpe_vocab_size is None):
            raise ValueError(
                "Give exactly one of tokenizer (a Hugging Face id or folder) or bpe_vocab_size "
                "(train a byte-level BPE tokenizer on the corpus)"
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
        # Options live in ``self.opts`` (as in ImageDataModule): under LightningCLI ``self.hparams`` may hold
        # a subclass's arguments instead.
        self.opts = SimpleNamespace(**{k: v for k, v in locals().items() if k not in ("self", "__class__")})
        self.save_hyperparameters()
        self.block_size = block_size
        self._tokenizer: Any = None
        self._dataset: Any = None
        self.train_set: TokenBlocks | None = None
        self.val_set: TokenBlocks | None = None
        self.test_set: TokenBlocks | None = None

    # -- sources ---------------------------------------------------------------------------------
    @property
    def cache_dir(self) -> Path:
        return Path(self.opts.cache_dir) if self.opts.cache_dir else default_cache_dir()

    def _split_files(self, split: str) -> list[Path]:
        return expand_files(getattr(self.opts, f"{split}_files"))

    def _load_dataset(self) -> Any:
        if self._dataset is None:
            import datasets

            from lightning_recipes._hub import PretrainedLoadError, is_network_error, offline_hint

            name = self.opts.dataset
            try:
                if Path(name).is_dir() and any(
                    (Path(name) / f).is_file() for f in ("dataset_dict.json", "state.json")
                ):
                    self._dataset = datasets.load_from_disk(name)
                else:
                    self._dataset = datasets.load_dataset(name, self.opts.dataset_config_name)
            except Exception as exc:
                if is_network_error(exc):
                    raise PretrainedLoadError(
                        f"Could not load dataset {name!r}: " + offline_hint(name)
                    ) from exc
                raise
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
                if self.opts.text_column not in ds.column_names:
                    raise ValueError(
                        f"Column {self.opts.text_column!r} not in dataset {self.opts.dataset!r} "
                        f"split {name!r}; it has {ds.column_names}. Set text_column."
                    )
                return ds
        if split == "train":
            raise ValueError(f"Dataset {self.opts.dataset!r} has no train split; it has {list(data)}")
        return None

    def _has_source(self, split: str) -> bool:
        if self.opts.dataset is not None:
            return self._dataset_split(split) is not None
        return getattr(self.opts, f"{split}_files") is not None

    def _documents(self, split: str) -> Iterator[list[str]]:
        """The split's text as lists of pieces, one list per document."""
        if self.opts.dataset is None:
            for path in self._split_files(split):
                yield list(_read_lines([path]))
        else:
            for text in self._dataset_split(split)[self.opts.text_column]:
                yield [text]

    def _source_key(self, split: str) -> str:
        if self.opts.dataset is None:
            return "files:" + files_fingerprint(self._split_files(split))
        ds = self._dataset_split(split)
        return f"dataset:{self.opts.dataset}:{self.opts.dataset_config_name}:{split}:{ds._fingerprint}"

    # -- tokenizer ---------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        """The Hugging Face tokenizer: loaded from ``tokenizer`` or trained once with ``bpe_vocab_size``."""
        if self._tokenizer is None:
            self._tokenizer = self._train_tokenizer() if self.opts.bpe_vocab_size else self._load_tokenizer()
        return self._tokenizer

    def _load_tokenizer(self) -> Any:
        return load_tokenizer(self.opts.tokenizer)

    def _train_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        vocab = self.opts.bpe_vocab_size
        key = f"bpe:{vocab}:{self._source_key('train')}"
        folder = Path(
            self.opts.tokenizer_dir
            or self.cache_dir / "tokenizers" / hashlib.sha256(key.encode()).hexdigest()[:16]
        )
        stamp = folder / "lightning_recipes_bpe.json"
        if stamp.is_file() and json.loads(stamp.read_text()).get("key") == key:
            return AutoTokenizer.from_pretrained(str(folder))
        if self.opts.dataset is None:
            tokenizer = train_bpe_tokenizer(self._split_files("train"), vocab_size=vocab, output_dir=folder)
        else:
            texts = (text for doc in self._documents("train") for text in doc)
            tokenizer = train_bpe_tokenizer(texts=texts, vocab_size=vocab, output_dir=folder)
        stamp.write_text(json.dumps({"key": key, "vocab_size": vocab}))
        return tokenizer

    # -- tokens ----------------------------------------------------------------------------------
    def tokenize(self, split: str) -> Tensor:
        """All tokens of ``split``'s text as one 1-D ``int32`` tensor (documents joined by EOS), cached."""
        tokenizer = self.tokenizer
        key = f"{tokenizer_fingerprint(tokenizer)}|{self._source_key(split)}|eos={self.opts.add_eos}"
        path = self.cache_dir / "corpus" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.pt"
        if path.is_file():
            return torch.load(path, weights_only=True)
        eos = tokenizer.eos_token_id if self.opts.add_eos else None
        if self.opts.add_eos and eos is None:
            raise ValueError(
                f"add_eos=True but tokenizer {self.opts.tokenizer!r} has no EOS token; set add_eos=False"
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
        if self.train_set is not None:
            return
        opts = self.opts
        blocks = {
            s: chunk_blocks(self.tokenize(s), opts.block_size) if self._has_source(s) else None
            for s in SPLITS
        }
        train = blocks["train"]
        if train is not None and train.shape[0] == 0:
            raise ValueError(
                f"The training text has fewer tokens than block_size={opts.block_size}: "
                "add text or lower block_size"
            )
        wanted = (
            {}
            if train is None
            else {
                s: f
                for s, f in (("test", opts.test_fraction), ("val", opts.val_fraction))
                if blocks[s] is None and f > 0
            }
        )
        if wanted:
            n = train.shape[0]
            counts = {s: max(1, round(n * f)) for s, f in wanted.items()}
            if sum(counts.values()) >= n:
                raise ValueError(
                    f"{n} block(s) of {opts.block_size} tokens are too few to hold out {counts}: "
                    "add text, lower block_size or give val_files"
                )
            order = torch.randperm(n, generator=torch.Generator().manual_seed(opts.seed))
            start = 0
            for split, count in counts.items():
                blocks[split] = train[order[start : start + count].sort().values]
                start += count
            blocks["train"] = train[order[start:].sort().values]
        self.train_set, self.val_set, self.test_set = (
            None if blocks[s] is None else TokenBlocks(blocks[s]) for s in SPLITS
        )

    def _loader(self, dataset: TokenBlocks | None, split: str, shuffle: bool = False) -> DataLoader:
        hint = f"give {split}_files (or a dataset with that split) or set {split}_fraction > 0"
        return split_loader(
            dataset, split, hint, self.opts.batch_size, self.opts.num_workers, shuffle=shuffle
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, "train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, "val")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, "test")
