"""What ``lightning run`` does differently on a cluster: plain progress lines and no dependency noise.

:func:`use_progress_log` swaps Lightning's live progress bar (Rich or tqdm) for
:class:`~lightning_recipes.callbacks.ProgressLog` when nobody watches the output live: stdout is not a
terminal (a SLURM log, ``nohup``, a pipe), or the run is a SLURM job or was started by ``torchrun``.
``LIGHTNING_RECIPES_PROGRESS=bar`` keeps the bar, ``=log`` forces the lines.

:func:`quiet_dependency_noise` hides the messages of Lightning and torch that a recipe user cannot act
on: Lightning's advertising tips, torch's ``LeafSpec`` deprecation raised inside Lightning, the
"N module(s) in eval mode" warning after a deliberate freeze (frozen BatchNorm layers of
:class:`~lightning_recipes.callbacks.FreezeUnfreeze`), and jsonargparse's note on ``args``.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

from lightning_recipes.callbacks.progress_log import ProgressLog

#: Environment variables that mark a run nobody watches live: a SLURM job, a ``torchrun`` worker.
CLUSTER_VARIABLES = ("SLURM_JOB_ID", "TORCHELASTIC_RUN_ID")

#: Warning messages (regular expressions, matched at the start) that ``lightning run`` does not show.
IGNORED_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\)` is deprecated",  # torch 2.10+, from Lightning's _pytree
    r"Found \d+ module\(s\) in eval mode at the start of training",  # frozen BatchNorm layers
    r".*args parameter is intended to run from within Python",  # LightningCLI(args=...) from main()
)

#: Lightning's advertising messages (``rank_zero_info``), dropped by their first words.
IGNORED_INFO = ("💡 Tip:",)


def progress_mode() -> str:
    """``"log"`` (one line per epoch) or ``"bar"`` (Lightning's live bar) for this process.

    ``LIGHTNING_RECIPES_PROGRESS`` (``log`` or ``bar``) decides when set; otherwise ``log`` when stdout
    is not a terminal or a variable of :data:`CLUSTER_VARIABLES` is set.
    """
    chosen = os.environ.get("LIGHTNING_RECIPES_PROGRESS", "").strip().lower()
    if chosen:
        if chosen not in ("log", "bar"):
            raise ValueError(f"LIGHTNING_RECIPES_PROGRESS={chosen!r} is not one of 'log', 'bar'")
        return chosen
    watched = sys.stdout.isatty() and not any(os.environ.get(v) for v in CLUSTER_VARIABLES)
    return "bar" if watched else "log"


def use_progress_log(trainer: L.Trainer) -> ProgressLog | None:
    """Replace the trainer's Rich/tqdm progress bar by a :class:`ProgressLog` where :func:`progress_mode` says
    ``log``; returns it (``None``: nothing replaced). A progress bar of another class is kept, and so is
    ``enable_progress_bar=False``.
    """
    bar = trainer.progress_bar_callback
    if not isinstance(bar, (RichProgressBar, TQDMProgressBar)) or progress_mode() != "log":
        return None
    log = ProgressLog()
    trainer.callbacks[trainer.callbacks.index(bar)] = log
    return log


class _DropInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(IGNORED_INFO)


def quiet_dependency_noise() -> None:
    """Hide the warnings of :data:`IGNORED_WARNINGS` and the infos of :data:`IGNORED_INFO` in this process."""
    for message in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropInfo) for f in logger.filters):
            logger.addFilter(_DropInfo())
