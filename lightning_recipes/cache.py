"""Where lightning_recipes caches what it builds: zoo weights, digits PNGs, tokenised data, tokenizers."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$LIGHTNING_RECIPES_CACHE`` or ``~/.cache/lightning_recipes``."""
    return Path(os.environ.get("LIGHTNING_RECIPES_CACHE", Path.home() / ".cache" / "lightning_recipes"))
