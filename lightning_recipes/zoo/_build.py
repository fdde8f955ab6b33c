"""What every zoo build shares: the quiet Trainer it trains with, the shared folder it reads its real data
and weights from, and publishing the result atomically."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

#: The environment variable that names the project's shared folder (real data and weights).
SHARED_ENV = "LIGHTNING_RECIPES_SHARED"


def build_trainer(**settings: Any) -> Any:
    """The quiet one-CPU ``Trainer`` a zoo build trains its source task with: no logger, checkpoints,
    progress bar, model summary or validation; ``settings`` (``max_epochs``, ``max_steps``,
    ``gradient_clip_val``, ...) are added to these.

    Example::

        >>> build_trainer(max_epochs=2).max_epochs
        2
    """
    import lightning as L

    quiet = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "limit_val_batches": 0,
    }
    return L.Trainer(**quiet, **settings)


def shared_file(name: str, relative: str, source: str | os.PathLike | None, hint: str = "") -> Path:
    """The file (or folder) ``relative`` to the shared folder that zoo model ``name`` is built from.

    The folder is ``source`` (``lightning-recipes zoo build NAME --source DIR``), else
    ``$LIGHTNING_RECIPES_SHARED``; nothing else is searched. Without either, or without the file in it,
    ``FileNotFoundError`` says which file is needed and both ways to give the folder; ``hint`` is added
    (e.g. where to download the file).

    Example::

        >>> shared_file("tiny.sst2", "data/no/such.tsv", "/nowhere")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        FileNotFoundError: zoo model 'tiny.sst2' is built from data/no/such.tsv, not found in /nowhere ...
    """
    folder = source if source is not None else os.environ.get(SHARED_ENV)
    where = "the folder given with `--source DIR` or $LIGHTNING_RECIPES_SHARED"
    if not folder:
        raise FileNotFoundError(
            f"zoo model {name!r} is built from {relative} of the project's shared folder (real data and "
            f"weights), and no such folder was given: pass `lightning-recipes zoo build {name} --source DIR` "
            f"or set {SHARED_ENV}=DIR{hint}"
        )
    path = Path(folder).expanduser() / relative
    if not path.exists():
        raise FileNotFoundError(
            f"zoo model {name!r} is built from {relative}, not found in {folder} ({where}){hint}"
        )
    return path.resolve()


def publish(unfinished: Path, path: Path) -> None:
    """Rename the finished build into place; a concurrent build that got there first wins."""
    try:
        unfinished.replace(path)
    except OSError:
        if not path.exists():
            raise
        if unfinished.is_dir():
            shutil.rmtree(unfinished, ignore_errors=True)
        else:
            unfinished.unlink(missing_ok=True)


def unfinished_path(path: Path) -> Path:
    """Where a build of ``path`` is written before :func:`publish`: a name of this process's own."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")
