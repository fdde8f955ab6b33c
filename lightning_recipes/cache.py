"""Where lightning_recipes caches what it builds or exports (zoo weights, digits, tokenised data).

Imports nothing heavy, so any module can ask for the cache folder without loading image or text code.
"""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$LIGHTNING_RECIPES_CACHE`` or ``~/.cache/lightning_recipes``.

    Example::

        >>> default_cache_dir() / "weights"  # doctest: +ELLIPSIS
        PosixPath('.../weights')
    """
    return Path(os.environ.get("LIGHTNING_RECIPES_CACHE", Path.home() / ".cache" / "lightning_recipes"))
