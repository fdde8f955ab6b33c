"""ProgressLog: plain progress lines, every 30 seconds and per epoch, for logs nobody watches live.

In a SLURM, ``torchrun`` or ``nohup`` log a live progress bar prints nothing readable for minutes
(Rich redraws a line that a file never shows; tqdm writes carriage returns). ``ProgressLog`` is a
Lightning ``ProgressBar`` that instead prints, from rank zero only, a line when training starts, one
per training epoch and, within any stage, one every ``every_n_seconds``: epoch, batch, optimizer step,
time per batch, training and validation loss, the monitored metric, elapsed time and the estimated time
left. ``lightning run`` uses it instead of the default bar when its output is not a terminal or it runs
under SLURM or ``torchrun`` (:func:`~lightning_recipes.cluster.use_progress_log`).
"""

from __future__ import annotations

import math
import sys
import time
from datetime import timedelta
from typing import Any, TextIO

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.trainer.states import TrainerFn
from typing_extensions import override

_TRAIN_LOSS = ("train/loss_epoch", "train/loss")
_VAL_LOSS = ("val/loss_epoch", "val/loss")


def _count(value: float) -> str:
    """A batch or step count, ``?`` when unknown (an iterable without a length)."""
    return str(int(value)) if math.isfinite(value) else "?"


def _clock(seconds: float) -> str:
    """``H:MM:SS`` (``?`` when unknown)."""
    return str(timedelta(seconds=round(seconds))) if math.isfinite(seconds) else "?"


class ProgressLog(ProgressBar):
    """Prints progress lines from rank 0: at the start of training, at each training epoch's end, and
    within an epoch (training, validation, test or predict) once ``every_n_seconds`` have passed since the
    last line, so a long epoch on a slow machine still shows it moves.

    An epoch's end reads ``epoch 3/10 step 120/400 0.84 s/batch train/loss 0.4123 val/loss 0.3811
    val/acc 0.8712 elapsed 0:03:12 eta 0:07:28``: the epoch counts from 1, the step is the optimizer step
    out of the run's total (``trainer.estimated_stepping_batches``), ``s/batch`` the mean time of the
    training batches since the previous line, and ``val/acc`` the metric the checkpoint callback (else
    early stopping) monitors. The ETA extrapolates the time per optimizer step so far, validation
    included. Lines within a training epoch say ``batch b/B`` as well and carry the latest training
    loss; lines within an evaluation say ``validate batch b/B`` (``test``, ``predict``).

    Args:
        every_n_seconds: within a stage, print when this many seconds have passed since the last line
            (``0``: never by time).
        every_n_steps: also print every this many training batches within an epoch (``None`` or ``0``:
            not by count).
        stream: where to print (``sys.stdout`` by default, looked up when printing).

    Example::

        >>> import io, torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from lightning_recipes import ImageClassifier
        >>> model = ImageClassifier("test_resnet", num_classes=2, pretrained=False)
        >>> x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 2, (8,))
        >>> data = DataLoader(TensorDataset(x, y), batch_size=4)
        >>> out = io.StringIO()
        >>> trainer = pl.Trainer(max_epochs=2, callbacks=[ProgressLog(stream=out)], logger=False,
        ...                      enable_checkpointing=False, enable_model_summary=False, accelerator="cpu")
        >>> trainer.fit(model, data, data)
        >>> lines = out.getvalue().splitlines()
        >>> lines[0]
        'fit: 2 epochs of 2 batches, 4 optimizer steps; a line every 30 s and per epoch'
        >>> [line.split(" s/batch")[0].rsplit(" ", 1)[0] for line in lines[1:]]
        ['epoch 1/2 step 2/4', 'epoch 2/2 step 4/4']
    """

    def __init__(
        self, every_n_seconds: float = 30.0, every_n_steps: int | None = None, stream: TextIO | None = None
    ) -> None:
        super().__init__()
        if every_n_steps is not None and every_n_steps < 0:
            raise ValueError(f"every_n_steps must be >= 0 (0: not by count) or None, got {every_n_steps}")
        if not every_n_seconds >= 0:
            raise ValueError(f"every_n_seconds must be >= 0 (0: never by time), got {every_n_seconds}")
        self.every_n_seconds = every_n_seconds
        self.every_n_steps = every_n_steps
        self.stream = stream
        self._enabled = True
        self._start: float | None = None
        self._start_step = 0
        self._last_line = time.monotonic()
        # (time, training batches, seconds spent validating) at the last training line
        self._since: tuple[float, int, float] = (self._last_line, 0, 0.0)
        self._batches = 0  # training batches so far in this fit
        self._validating, self._validation_began = (
            0.0,
            0.0,
        )  # seconds in validation loops; the current's start

    # -- ProgressBar API ---------------------------------------------------------------------------
    @override
    def disable(self) -> None:
        self._enabled = False

    @override
    def enable(self) -> None:
        self._enabled = True

    @property
    @override
    def is_enabled(self) -> bool:
        return self._enabled

    # -- what to print -----------------------------------------------------------------------------
    def due(self, batch: int) -> bool:
        """Whether a line is due within a stage after ``batch`` (1-based) batches of it."""
        by_count = bool(self.every_n_steps) and batch % self.every_n_steps == 0
        by_time = self.every_n_seconds > 0 and time.monotonic() - self._last_line >= self.every_n_seconds
        return by_count or by_time

    def batch_time(self) -> str | None:
        """``0.84 s/batch``: mean time of the training batches since the previous training line, validation
        left out (``None``: none)."""
        then, batches, validating = self._since
        done, spent = self._batches - batches, time.monotonic() - then - (self._validating - validating)
        return f"{spent / done:.2f} s/batch" if done > 0 else None

    def line(self, trainer: pl.Trainer, batch: int | None = None) -> str:
        """The training line for now: ``batch`` (1-based) within the epoch, or ``None`` at an epoch's end."""
        metrics = trainer.callback_metrics
        total_steps = trainer.estimated_stepping_batches
        max_epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1) else "?"
        parts = [f"epoch {trainer.current_epoch + 1}/{max_epochs}"]
        if batch is not None:
            parts.append(f"batch {batch}/{trainer.num_training_batches}")
        total = int(total_steps) if math.isfinite(total_steps) else "?"
        parts.append(f"step {trainer.global_step}/{total}")
        parts += [speed] if (speed := self.batch_time()) else []
        train = ("train/loss_step", "train/loss") if batch is not None else _TRAIN_LOSS
        keys = [next((k for k in train if k in metrics), None)]
        if batch is None:
            keys.append(next((k for k in _VAL_LOSS if k in metrics), None))
            keys.append(self.monitor(trainer))
        shown: set[str] = set()
        for key in keys:
            if key and key in metrics and key not in shown and metrics[key].numel() == 1:
                shown.add(key)
                parts.append(f"{key.removesuffix('_epoch').removesuffix('_step')} {float(metrics[key]):.4f}")
        elapsed = time.monotonic() - (self._start or time.monotonic())
        done = trainer.global_step - self._start_step
        left = (total_steps - trainer.global_step) * elapsed / done if done > 0 else math.inf
        parts += [f"elapsed {_clock(elapsed)}", f"eta {_clock(left)}"]
        return " ".join(parts)

    def start_line(self, trainer: pl.Trainer) -> str:
        """``fit: 10 epochs of 40 batches, 400 optimizer steps; a line every 30 s and per epoch``."""
        epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1) else "?"
        steps = trainer.estimated_stepping_batches
        every = f"every {self.every_n_seconds:g} s and " if self.every_n_seconds else ""
        return (
            f"fit: {epochs} epochs of {_count(trainer.num_training_batches)} batches, "
            f"{_count(steps)} optimizer steps; a line {every}per epoch"
        )

    @staticmethod
    def monitor(trainer: pl.Trainer) -> str | None:
        """The monitored metric: the checkpoint callback's ``monitor``, else early stopping's."""
        for callback in (trainer.checkpoint_callback, trainer.early_stopping_callback):
            key = getattr(callback, "monitor", None)
            if key:
                return key
        return None

    def _print(self, trainer: pl.Trainer, text: str) -> None:
        if self._enabled and trainer.is_global_zero:
            print(text, file=self.stream or sys.stdout, flush=True)
        self._last_line = time.monotonic()

    # -- hooks -------------------------------------------------------------------------------------
    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start, self._start_step = time.monotonic(), trainer.global_step
        self._batches, self._since, self._validating = 0, (self._start, 0, 0.0), 0.0
        self._print(trainer, self.start_line(trainer))

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._batches += 1
        if self.due(batch_idx + 1) and batch_idx + 1 < trainer.num_training_batches:
            self._print(trainer, self.line(trainer, batch=batch_idx + 1))
            self._since = (self._last_line, self._batches, self._validating)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._print(trainer, self.line(trainer))
        self._since = (self._last_line, self._batches, self._validating)

    def _evaluation_batch_end(
        self, trainer: pl.Trainer, stage: str, batch_idx: int, dataloader_idx: int
    ) -> None:
        waited = time.monotonic() - self._last_line
        if trainer.sanity_checking or not (0 < self.every_n_seconds <= waited):
            return
        totals = {
            "validate": trainer.num_val_batches,
            "test": trainer.num_test_batches,
            "predict": trainer.num_predict_batches,
        }[stage]
        total = _count(totals[dataloader_idx]) if dataloader_idx < len(totals) else "?"
        fitting = trainer.state.fn == TrainerFn.FITTING
        epoch = f"epoch {trainer.current_epoch + 1} " if fitting else ""
        elapsed = time.monotonic() - (self._start or time.monotonic())
        self._print(trainer, f"{epoch}{stage} batch {batch_idx + 1}/{total} elapsed {_clock(elapsed)}")

    @override
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._evaluation_batch_end(trainer, "validate", batch_idx, dataloader_idx)

    @override
    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._evaluation_batch_end(trainer, "test", batch_idx, dataloader_idx)

    @override
    def on_predict_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._evaluation_batch_end(trainer, "predict", batch_idx, dataloader_idx)

    @override
    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._start is None:  # a validate/test/predict stage without fit: elapsed from its start
            self._start = time.monotonic()

    on_predict_start = on_test_start

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.on_test_start(trainer, pl_module)
        self._validation_began = time.monotonic()

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validating += time.monotonic() - self._validation_began
