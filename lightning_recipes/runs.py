"""What one recipe run owns: its own directory, its crash checkpoint, its config, and how it stopped.

Used by :class:`~lightning_recipes.recipe_cli.LightningRecipesCLI`: :class:`RecipeTrainer` gives every run a
``version_N`` directory of its own whatever the loggers, :class:`RunDirectory` points checkpoints and
curves there, :class:`RunConfigCallback` never overwrites another run's ``config.yaml``,
:class:`CrashCheckpoint` saves ``on_exception.ckpt`` when fit is stopped, and :func:`stopping_signal`
tells a SIGTERM or Ctrl-C apart from other exits (for exit codes 143 and 130).
"""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

import lightning as L
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from lightning_recipes.callbacks import CurveLogger, TrainingDiverged
from lightning_recipes.loggers.wandb import LoggerSaveConfigCallback


def stopping_signal(exc: BaseException | None) -> signal.Signals | None:
    """The signal behind ``exc``: SIGTERM for Lightning's ``SIGTERMException``, SIGINT for Ctrl-C.

    Lightning turns a SIGTERM during ``fit``/``validate``/``test``/``predict`` into a
    ``SIGTERMException`` (a ``SystemExit`` without code, so "exit 0") and a Ctrl-C into a graceful
    shutdown that ends in ``sys.exit(1)`` raised while handling the ``KeyboardInterrupt``; the chain of
    causes and contexts is followed to tell them apart from other exits.

    Example::

        >>> stopping_signal(SIGTERMException()).name, stopping_signal(SystemExit(1))
        ('SIGTERM', None)
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, SIGTERMException):
            return signal.SIGTERM
        if isinstance(exc, KeyboardInterrupt):
            return signal.SIGINT
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def next_version_dir(root: str | os.PathLike) -> str:
    """Create and return ``root/version_N``, N one more than the highest existing (like ``CSVLogger``).

    Creating the folder claims the number, so two runs started at once in ``root`` get two folders.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    while True:
        numbers = [int(m.group(1)) for p in root.iterdir() if (m := re.fullmatch(r"version_(\d+)", p.name))]
        path = root / f"version_{max(numbers, default=-1) + 1}"
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return str(path)


def run_dir_in(root: str | os.PathLike) -> str:
    """This run's directory under ``root``: ``slurm-<job id>`` in a SLURM job (the same directory again
    after a requeue, see :func:`~lightning_recipes.cluster.slurm_run_name`), else a new ``version_N``."""
    from lightning_recipes.cluster import slurm_run_name

    name = slurm_run_name()
    if name is None:
        return next_version_dir(root)
    path = Path(root) / name
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def _versioned_by_logger(trainer: L.Trainer) -> bool:
    """Whether Lightning's ``log_dir`` is already one folder per run (a TensorBoard/CSV first logger)."""
    return bool(trainer.loggers) and isinstance(trainer.loggers[0], (TensorBoardLogger, CSVLogger))


class RecipeTrainer(L.Trainer):
    """Lightning's ``Trainer`` whose ``log_dir`` is a directory of this run's own, whatever the loggers.

    With a TensorBoard or CSV first logger it is Lightning's (the logger's ``version_N`` folder).
    Otherwise (W&B or any other logger, or none) Lightning's ``log_dir`` is a folder all runs share
    (the logger's ``save_dir`` or ``default_root_dir``); here it is a new ``version_N`` under
    ``<save_dir>/<logger name>`` (e.g. the W&B project), or under ``default_root_dir`` without a logger
    (``slurm-<job id>`` in a SLURM job, the same after a requeue: :func:`run_dir_in`).
    Rank zero creates it when it is first asked for (in the ``setup`` hooks, once every process has
    started) and broadcasts it. ``default_root_dir`` itself is unchanged (SLURM's ``hpc_ckpt_*.ckpt``
    stay there, so a requeued job still resumes from them).
    """

    _run_dir: str | None = None

    @property
    @override
    def log_dir(self) -> str | None:
        if _versioned_by_logger(self):
            return super().log_dir
        if self._run_dir is None:
            logger = self.loggers[0] if self.loggers else None
            root = str(self.default_root_dir)
            if logger is not None:
                root = str(logger.save_dir or root)
                root = os.path.join(root, str(logger.name)) if logger.name else root
            if "://" in root:  # a remote file system: Lightning's shared folder
                return super().log_dir
            self._run_dir = self.strategy.broadcast(run_dir_in(root) if self.is_global_zero else None)
        return self._run_dir


class RunDirectory(Callback):
    """Points the callbacks that write files at the run directory (``trainer.log_dir``) when they are unset.

    Only where Lightning's defaults are shared between runs (no TensorBoard/CSV first logger):
    ``ModelCheckpoint`` without ``dirpath`` saves to ``<run dir>/checkpoints``, ``CurveLogger`` without
    ``dirpath`` to ``<run dir>/curves``. ``LightningRecipesCLI`` adds it first in the callback list.
    """

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        run_dir = trainer.log_dir  # every rank: creates the folder on rank zero once and broadcasts it
        if run_dir is None or _versioned_by_logger(trainer):
            return
        for callback in trainer.callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
                callback.dirpath = os.path.join(run_dir, "checkpoints")
            elif isinstance(callback, CurveLogger) and callback.dirpath is None:
                callback.dirpath = os.path.join(run_dir, "curves")


class CrashCheckpoint(Callback):
    """Saves ``on_exception.ckpt`` beside the run's checkpoints when fit crashes or is stopped.

    Not when fit stopped because its weights are NaN/inf (``TrainingDiverged`` with
    ``weights_finite=False``): such a file would look resumable and resume nothing; the line names the
    last checkpoint with finite values instead.

    Stopped means SIGTERM (Lightning's ``SIGTERMException``, raised at the next batch boundary; what a
    scheduler sends) or Ctrl-C (``KeyboardInterrupt``). Rank zero prints one line on stderr: what
    stopped the run, at which epoch and step, and the ``--ckpt_path`` that resumes it. The file is
    removed when fit ends normally. Unlike Lightning's ``OnExceptionCheckpoint``, its presence does not
    make a later ``fit(ckpt_path=None)`` resume silently: resuming is explicit
    (``--ckpt_path=.../on_exception.ckpt``). ``lightning run`` then exits 143 (SIGTERM), 130 (SIGINT)
    or 1 (another error); see :func:`stopping_signal`. No signal handler is installed: Lightning's own
    (``_SignalConnector``, SLURM auto-requeue on SIGUSR1 included) stay in charge.
    """

    filename = "on_exception.ckpt"

    def __init__(self) -> None:
        self.path: Path | None = None
        self._fallback_dir: Path | None = None

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._fallback_dir = Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"

    def _path(self, trainer: L.Trainer) -> Path | None:
        """Beside the checkpoint callback's files (its ``dirpath`` is resolved in its ``setup``)."""
        callback = trainer.checkpoint_callback
        dirpath = getattr(callback, "dirpath", None) if callback is not None else None
        folder = Path(dirpath) if dirpath else self._fallback_dir
        return None if folder is None else folder / self.filename

    @override
    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        signum = stopping_signal(exception)
        if signum is None and trainer.received_sigterm:  # DDP: the SIGTERM broke a collective first
            signum = signal.SIGTERM
        what = signum.name if signum is not None else type(exception).__name__
        fitting = trainer.state.fn == TrainerFn.FITTING
        # NaN/inf weights (the guard's decision, the same on every process) are not worth resuming from.
        nan_weights = isinstance(exception, TrainingDiverged) and not exception.weights_finite
        self.path = self._path(trainer) if fitting and trainer.global_step > 0 and not nan_weights else None
        try:
            if self.path is not None:
                trainer.save_checkpoint(self.path)
        finally:  # the line also when a collective after the write fails (a DDP peer already gone)
            if self.path is not None and self.path.is_file():
                saved = f"checkpoint saved: resume with --ckpt_path={self.path}"
            elif not fitting:
                stage = trainer.state.fn.value if trainer.state.fn else "no stage"
                saved = f"no checkpoint saved (only fit saves one; this was {stage})"
            elif nan_weights:
                last = exception.last_finite_checkpoint or "none"
                saved = f"no checkpoint saved (the weights are NaN/inf; last one with finite values: {last})"
            elif trainer.global_step == 0:
                saved = "no checkpoint saved (no training step had completed)"
            else:
                saved = "no checkpoint saved"
            if trainer.is_global_zero:
                where = f"at epoch {trainer.current_epoch}, step {trainer.global_step}"
                print(f"Stopped by {what} {where}; {saved}", file=sys.stderr, flush=True)

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        path = self._path(trainer)
        if path is not None and trainer.is_global_zero:
            path.unlink(missing_ok=True)


class RunConfigCallback(LoggerSaveConfigCallback):
    """Saves ``config.yaml`` in the run directory and never over an earlier run's (also logs it to W&B).

    Every run has a directory of its own (:class:`RecipeTrainer`), so a ``config.yaml`` already there
    means a fixed logger ``version`` points at an earlier run: the run stops before training. The
    exception is a requeued SLURM job, which continues in its own ``slurm-<job id>`` directory.
    """

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from lightning_recipes.cluster import slurm_run_name

        if self.save_to_log_dir and not self.overwrite and not self.already_saved:
            log_dir = trainer.log_dir  # every rank: it broadcasts
            assert log_dir is not None
            if Path(log_dir).name == slurm_run_name():  # this job's directory, before its requeue
                self.overwrite = True
                return super().setup(trainer, pl_module, stage)
            path = os.path.join(log_dir, self.config_filename)
            exists = get_filesystem(log_dir).isfile(path) if trainer.is_global_zero else False
            if trainer.strategy.broadcast(exists):
                raise RuntimeError(
                    f"{path} exists: {log_dir} holds an earlier run (the logger's `version` is fixed?); "
                    "set another version or save_dir, or remove it"
                )
        super().setup(trainer, pl_module, stage)
