"""The pieces of a language-modelling corpus: its files, its token stream cut into blocks, and prompts."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor
from torch.utils.data import Dataset

from lightning_recipes.handshake import META_KEY


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
        empty = [m for m in matches if Path(m).stat().st_size == 0]
        if empty:
            raise ValueError(f"Text file(s) {empty} are empty (matched by {pattern!r})")
        found.extend(Path(m) for m in matches)
    return found


def chunk_blocks(tokens: Tensor, block_size: int) -> Tensor:
    """Cut a 1-D token tensor into ``(len(tokens) // block_size, block_size)`` consecutive blocks.

    Block ``i`` is ``tokens[i * block_size:(i + 1) * block_size]``: every token lands in exactly one
    block, except the final remainder of fewer than ``block_size`` tokens, which is dropped.

    Example::

        >>> import torch
        >>> chunk_blocks(torch.arange(7), 3)
        tensor([[0, 1, 2],
                [3, 4, 5]])
    """
    if block_size < 2:
        raise ValueError(f"block_size must be >= 2 (an input and a next token), got {block_size}")
    n = tokens.numel() // block_size
    return tokens[: n * block_size].reshape(n, block_size)


class TokenBlocks(Dataset):
    """Rows of a ``(num_blocks, block_size)`` token tensor as ``{"input_ids": LongTensor[block_size]}``."""

    def __init__(self, blocks: Tensor) -> None:
        self.blocks = blocks

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {"input_ids": self.blocks[index].long()}


class Prompts(Dataset):
    """The lines of a text file (one prompt each, empty ones too) as ``{"meta": {"prompt": line}}``."""

    def __init__(self, path: str, encoding: str = "utf-8") -> None:
        from lightning_recipes.data._text_files import located_decode_errors

        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"predict_file {path!r} does not exist")
        with located_decode_errors(file, encoding, "predict_file"):
            self.prompts = file.read_text(encoding=encoding).splitlines()

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, index: int) -> dict[str, dict[str, str]]:
        return {META_KEY: {"prompt": self.prompts[index]}}
