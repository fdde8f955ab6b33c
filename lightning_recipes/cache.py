"""Where lightning_recipes caches what it builds or exports (zoo weights, digits, tokenised data), and
where it looks for the project's shared real data and weights (``../shared``).

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


def shared_candidates(relative: str) -> list[Path]:
    """Where a file ``relative`` to the shared real data/weights folder is looked for, in order:
    ``$LIGHTNING_RECIPES_SHARED``, then ``../shared`` of the working directory and of the source checkout
    (a clone of the repository has ``../shared`` beside it), without repeats.

    Example::

        >>> import os
        >>> os.environ["LIGHTNING_RECIPES_SHARED"] = "/data/shared"
        >>> shared_candidates("data/x.txt")[0]
        PosixPath('/data/shared/data/x.txt')
        >>> del os.environ["LIGHTNING_RECIPES_SHARED"]
    """
    env = os.environ.get("LIGHTNING_RECIPES_SHARED")
    roots = [Path(env)] if env else []
    roots += [Path.cwd() / ".." / "shared", Path(__file__).resolve().parents[1] / ".." / "shared"]
    unique = dict.fromkeys(os.path.normpath(root / relative) for root in roots)
    return [Path(path) for path in unique]
