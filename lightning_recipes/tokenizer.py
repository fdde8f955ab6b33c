"""Tokenizers: loading one by id or folder, its fingerprint, and carrying it inside a checkpoint.

One implementation for every module and data module: :func:`load_tokenizer` (clear errors for a
missing folder or an unreachable Hub id), :func:`tokenizer_fingerprint` (cache keys, comparisons) and
:func:`store_tokenizer` / :func:`restore_tokenizer`, which keep the tokenizer's files in a Lightning
checkpoint under :data:`TOKENIZER_KEY`, so ``load_from_checkpoint`` needs no network.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

from lightning_recipes._hub import hub_call, looks_like_local_path

#: Checkpoint key holding the tokenizer's files, ``{file name: bytes}``.
TOKENIZER_KEY = "lightning_recipes_tokenizer"


def load_tokenizer(name: str, revision: str | None = None) -> Any:
    """``AutoTokenizer.from_pretrained`` of a Hub id or folder; clear errors for a missing folder, no network.

    Example::

        >>> load_tokenizer("./no-such-tokenizer")
        Traceback (most recent call last):
        ...
        FileNotFoundError: tokenizer folder './no-such-tokenizer' not found
    """
    from transformers import AutoTokenizer

    path = str(Path(name).expanduser()) if looks_like_local_path(name) else name
    return hub_call(name, "transformers", "tokenizer", AutoTokenizer.from_pretrained, path, revision=revision)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of a tokenizer's full definition (vocabulary, merges, normalisation), for cache keys.

    The truncation and padding a call last asked for (``tokenizer(..., truncation=True, max_length=64)``
    leaves them in the Rust tokenizer's state) are not part of it: a tokenizer used and saved, e.g. in a
    checkpoint, is the same tokenizer.

    Example::

        >>> from lightning_recipes.data.bpe import train_bpe_tokenizer
        >>> a = train_bpe_tokenizer(texts=["a rose is a rose"] * 20, vocab_size=270)
        >>> b = train_bpe_tokenizer(texts=["a rose is a rose"] * 20, vocab_size=270)
        >>> _ = b("a rose", truncation=True, max_length=2)
        >>> tokenizer_fingerprint(a) == tokenizer_fingerprint(b), len(tokenizer_fingerprint(a))
        (True, 16)
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        definition = {k: v for k, v in state.items() if k not in ("truncation", "padding")}
        text = json.dumps(definition, sort_keys=True)
    else:
        text = json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def store_tokenizer(checkpoint: dict[str, Any], tokenizer: Any) -> None:
    """Put ``tokenizer``'s files into ``checkpoint`` (a ``None`` tokenizer stores nothing)."""
    if tokenizer is None:
        return
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        checkpoint[TOKENIZER_KEY] = {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}


def restore_tokenizer(checkpoint: dict[str, Any]) -> Any:
    """The tokenizer stored by :func:`store_tokenizer`, or ``None`` when the checkpoint holds none.

    Example::

        >>> from lightning_recipes.data.bpe import train_bpe_tokenizer
        >>> tok = train_bpe_tokenizer(texts=["to be or not to be"] * 20, vocab_size=270)
        >>> checkpoint = {}
        >>> store_tokenizer(checkpoint, tok)
        >>> restore_tokenizer(checkpoint)("to be")["input_ids"] == tok("to be")["input_ids"]
        True
    """
    files = checkpoint.get(TOKENIZER_KEY)
    if not files:
        return None
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as folder:
        for name, data in files.items():
            Path(folder, name).write_bytes(data)
        return AutoTokenizer.from_pretrained(folder)
