"""Byte-level BPE tokenizer training (GPT-2's scheme) on a corpus, and the corpus readers it uses."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

#: The one special token of GPT-2: document separator, and beginning/end of text.
ENDOFTEXT = "<|endoftext|>"


def files_fingerprint(paths: Sequence[str | Path]) -> str:
    """A short hash of the files' resolved paths, sizes and modification times (cache keys).

    Example::

        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "a.txt"
        >>> _ = path.write_text("hello")
        >>> key = files_fingerprint([path])
        >>> len(key), key == files_fingerprint([str(path)])
        (16, True)
    """
    digest = hashlib.sha256()
    for path in paths:
        path = Path(path).resolve()
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _read_lines(
    paths: Sequence[str | Path], chunk_chars: int = 1 << 16, encoding: str = "utf-8"
) -> Iterator[str]:
    """Text of ``paths`` in pieces of about ``chunk_chars`` characters, cut at line ends; a byte
    ``encoding`` cannot decode is an error naming the file, the line and the byte."""
    from lightning_recipes.data._text_files import located_decode_errors

    for path in paths:
        with located_decode_errors(path, encoding, "text file"), open(path, encoding=encoding) as f:
            piece: list[str] = []
            size = 0
            for line in f:
                piece.append(line)
                size += len(line)
                if size >= chunk_chars:
                    yield "".join(piece)
                    piece, size = [], 0
            if piece:
                yield "".join(piece)


def train_bpe_tokenizer(
    files: Sequence[str | Path] | None = None,
    vocab_size: int = 8192,
    output_dir: str | Path | None = None,
    texts: Iterable[str] | None = None,
    min_frequency: int = 2,
    special_tokens: Sequence[str] = (ENDOFTEXT,),
) -> Any:
    """Train a byte-level BPE tokenizer (GPT-2's scheme) and save it as a Hugging Face tokenizer.

    Byte-level means every string can be encoded (no unknown tokens): the 256 byte symbols are
    the base alphabet and ``vocab_size - 256 - len(special_tokens)`` merges are learnt on top.
    The first special token (``<|endoftext|>``, id 0) serves as BOS, EOS, UNK and padding token.
    The saved folder (``tokenizer.json`` + ``tokenizer_config.json``) loads with
    ``transformers.AutoTokenizer.from_pretrained(output_dir)``.

    Args:
        files: UTF-8 text files to learn from.
        vocab_size: size of the vocabulary, special tokens and the 256 bytes included; a corpus too small
            for that many merges gives a smaller one.
        output_dir: folder to save the tokenizer to; ``None`` keeps it in memory only.
        texts: strings to learn from, instead of (or besides) ``files``.
        min_frequency: pairs seen fewer times are never merged.
        special_tokens: added first, with ids ``0 .. len(special_tokens) - 1``.

    Returns:
        a ``transformers.PreTrainedTokenizerFast``.

    Example::

        >>> tok = train_bpe_tokenizer(texts=["the cat sat on the mat"] * 50, vocab_size=280)
        >>> len(tok) <= 280, tok.eos_token, tok.eos_token_id  # a tiny corpus allows only a few merges
        (True, '<|endoftext|>', 0)
        >>> tok.decode(tok("the cat, naïve")["input_ids"])
        'the cat, naïve'
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = training_corpus("train_bpe_tokenizer", files, texts)
    if not special_tokens:
        raise ValueError("special_tokens must hold at least one token (used as BOS/EOS/UNK/padding)")
    base = 256 + len(special_tokens)
    if vocab_size < base:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: byte-level BPE needs at least 256 bytes + "
            f"{len(special_tokens)} special token(s) = {base}"
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    special = special_tokens[0]
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=special, eos_token=special, unk_token=special, pad_token=special
    )
    return saved(wrapped, output_dir)


def training_corpus(
    owner: str, files: Sequence[str | Path] | None, texts: Iterable[str] | None
) -> Iterator[str]:
    """The lines a tokenizer trainer learns from: each file's lines, then ``texts``; checked up front
    (files or texts given, every file present) so a trainer fails before it starts.

    Example::

        >>> list(training_corpus("train_bpe_tokenizer", None, ["a b", "c"]))
        ['a b', 'c']
    """
    if files is None and texts is None:
        raise ValueError(f"{owner} needs files (text file paths) or texts (strings) to learn from")
    paths = [Path(p) for p in files or []]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"Tokenizer training file(s) not found: {missing}")

    def corpus() -> Iterator[str]:
        yield from _read_lines(paths)
        yield from texts or []

    return corpus()


def saved(tokenizer: Any, output_dir: str | Path | None) -> Any:
    """``tokenizer``, written with ``save_pretrained`` to ``output_dir`` first when one is given."""
    if output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(str(output_dir))
    return tokenizer
