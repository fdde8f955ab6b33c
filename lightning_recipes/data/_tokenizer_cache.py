"""A tokenizer a data module trains once, saves to a folder and reuses while its training input is unchanged.

One mechanism for every data module that trains its tokenizer (``TextCorpusDataModule``'s byte-level BPE,
``TextDataModule``'s WordPiece).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: File beside the saved tokenizer that records what it was trained on.
STAMP = "lightning_recipes_tokenizer.json"


def load_or_train_tokenizer(
    key: str, train: Callable[[Path], Any], folder: str | Path | None, cache_dir: str | Path
) -> Any:
    """The tokenizer saved in ``folder`` if it was trained for ``key``, else ``train(folder)`` (then stamped).

    Args:
        key: what the tokenizer is a function of (scheme, vocabulary size, the training text's fingerprint).
        train: trains the tokenizer, saves it to the folder it is given, and returns it.
        folder: where to keep it; default ``cache_dir/tokenizers/<hash of key>``.
        cache_dir: the data module's cache folder.

    Example::

        >>> import tempfile
        >>> from lightning_recipes.data.wordpiece import train_wordpiece_tokenizer
        >>> calls = []
        >>> def train(folder):
        ...     calls.append(folder)
        ...     return train_wordpiece_tokenizer(texts=["a good film"] * 5, vocab_size=30, output_dir=folder)
        >>> cache = tempfile.mkdtemp()
        >>> first = load_or_train_tokenizer("wordpiece:30:abc", train, None, cache)
        >>> again = load_or_train_tokenizer("wordpiece:30:abc", train, None, cache)
        >>> len(calls), again.get_vocab() == first.get_vocab()
        (1, True)
    """
    from transformers import AutoTokenizer

    path = Path(folder or Path(cache_dir) / "tokenizers" / hashlib.sha256(key.encode()).hexdigest()[:16])
    stamp = path / STAMP
    if stamp.is_file() and json.loads(stamp.read_text()).get("key") == key:
        return AutoTokenizer.from_pretrained(str(path))
    tokenizer = train(path)
    stamp.write_text(json.dumps({"key": key}))
    return tokenizer


def wordpiece_tokenizer(
    train_split: Any, columns: list[str], vocab_size: int, folder: str | Path | None, cache_dir: str | Path
) -> Any:
    """``TextDataModule``'s WordPiece tokenizer, trained on the texts of ``columns`` of ``train_split`` (a
    ``datasets.Dataset``) and kept while they and ``vocab_size`` are unchanged."""
    from lightning_recipes._compat import dataset_fingerprint
    from lightning_recipes.data.wordpiece import train_wordpiece_tokenizer

    def train(path: Path) -> Any:
        texts = (text for column in columns for text in train_split[column] if text)
        return train_wordpiece_tokenizer(texts=texts, vocab_size=vocab_size, output_dir=path)

    key = f"wordpiece:{vocab_size}:{columns}:{dataset_fingerprint(train_split)}"
    return load_or_train_tokenizer(key, train, folder, cache_dir)
