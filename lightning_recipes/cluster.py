"""What ``lightning run`` does differently on a cluster: plain progress, no noise, SLURM requeue in place.

:func:`use_progress_log` swaps Lightning's live progress bar (Rich or tqdm) for
:class:`~lightning_recipes.callbacks.ProgressLog` when nobody watches the output live: stdout is not a
terminal (a SLURM log, ``nohup``, a pipe), or the run is a SLURM job or was started by ``torchrun``.
``LIGHTNING_RECIPES_PROGRESS=bar`` keeps the bar, ``=log`` forces the lines.

SLURM: Lightning's ``SLURMEnvironment`` saves ``hpc_ckpt_N.ckpt`` in ``trainer.default_root_dir`` on
the requeue signal and requeues the job, which then starts ``lightning run`` again with the same job
id; Lightning resumes fit from that checkpoint. :func:`slurm_run_name` names the run directory (and a
TensorBoard/CSV logger's version) ``slurm-<job id>`` so the requeued job writes into the directory of
the job it continues instead of a new ``version_N``; :func:`hpc_checkpoint` finds the checkpoint so
``lightning run`` can also continue the W&B run stored in it.

:func:`quiet_dependency_noise` hides the messages of Lightning and torch that a recipe user cannot act
on: Lightning's advertising tips, torch's ``LeafSpec`` deprecation raised inside Lightning, the
"N module(s) in eval mode" warning after a deliberate freeze (frozen BatchNorm layers of
:class:`~lightning_recipes.callbacks.FreezeUnfreeze`), jsonargparse's note on ``args``, and torch's
notes on what :class:`~lightning_recipes.strategies.TransformerFSDP` does deliberately.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from pathlib import Path

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from lightning_recipes import _compat
from lightning_recipes.callbacks.progress_log import ProgressLog

#: Environment variables that mark a run nobody watches live: a SLURM job, a ``torchrun`` worker.
CLUSTER_VARIABLES = ("SLURM_JOB_ID", "TORCHELASTIC_RUN_ID")

#: Warning messages (regular expressions, matched at the start) that ``lightning run`` does not show.
IGNORED_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\)` is deprecated",  # torch 2.10+, from Lightning's _pytree
    r"Found \d+ module\(s\) in eval mode at the start of training",  # frozen BatchNorm layers
    r".*args parameter is intended to run from within Python",  # LightningCLI(args=...) from main()
    # TransformerFSDP with an adapter: blocks hold frozen and trainable weights (docs/multi_gpu.md)
    r".*has both parameters with requires_grad=True and False",
    r"offload_to_cpu=True and rank0_only=False",  # loading a trainable-only checkpoint under FSDP
    r"`is_gradient_checkpointing` is deprecated",  # transformers 5, asked by torch's checkpoint wrapper
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


def slurm_run_name() -> str | None:
    """``slurm-<SLURM_JOB_ID>`` in a job that Lightning runs under ``SLURMEnvironment``, else ``None``.

    A requeued job keeps its id, so it finds the directory of the job it continues. Jobs named
    ``bash`` or ``interactive`` are not SLURM runs for Lightning (``SLURMEnvironment.detect``), nor here.
    """
    job = os.environ.get("SLURM_JOB_ID")
    return f"slurm-{job}" if job and SLURMEnvironment.detect() else None


def hpc_checkpoint(root: str | os.PathLike) -> Path | None:
    """The checkpoint a requeued SLURM job resumes from: the highest ``hpc_ckpt_N.ckpt`` in ``root``.

    The same file Lightning picks for ``fit(ckpt_path=None)`` under SLURM (``trainer.default_root_dir``).

    Example::

        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> for n in (1, 2, 10):
        ...     _ = (root / f"hpc_ckpt_{n}.ckpt").write_bytes(b"")
        >>> hpc_checkpoint(root).name, hpc_checkpoint(root / "none")
        ('hpc_ckpt_10.ckpt', None)
    """
    folder = Path(root)
    numbers = [
        int(m.group(1))
        for p in (folder.iterdir() if folder.is_dir() else ())
        if (m := re.fullmatch(r"hpc_ckpt_(\d+)\.ckpt", p.name))
    ]
    return folder / f"hpc_ckpt_{max(numbers)}.ckpt" if numbers else None


def use_slurm_run_name(trainer: L.Trainer) -> str | None:
    """In a SLURM job, a TensorBoard/CSV first logger without a ``version`` gets ``slurm-<job id>``.

    Its directory is the run directory (checkpoints, config, curves), so the requeued job continues in
    it. Returns the version set, if any. (Other loggers: :class:`~lightning_recipes.runs.RecipeTrainer`.)
    Lightning's ``CSVLogger`` deletes a ``metrics.csv`` it finds in its directory; in a requeued job the
    earlier one is first renamed ``metrics.before_requeue_<N>.csv`` (``N``: ``SLURM_RESTART_COUNT``).
    """
    name = slurm_run_name()
    logger = trainer.loggers[0] if trainer.loggers else None
    if not (name and isinstance(logger, (CSVLogger, TensorBoardLogger))):
        return None
    if not _compat.set_default_logger_version(logger, name):
        return None
    metrics = Path(logger.log_dir) / "metrics.csv"
    if isinstance(logger, CSVLogger) and trainer.is_global_zero and metrics.is_file():
        restart = os.environ.get("SLURM_RESTART_COUNT", "0")
        metrics.rename(metrics.with_name(f"metrics.before_requeue_{restart}.csv"))
    return name
