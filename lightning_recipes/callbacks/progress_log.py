"""ProgressLog: one plain line per epoch (and every N steps) for logs nobody watches live.

In a SLURM, ``torchrun`` or ``nohup`` log a live progress bar prints nothing readable for minutes
(Rich redraws a line that a file never shows; tqdm writes carriage returns). ``ProgressLog`` is a
Lightning ``ProgressBar`` that instead prints, from rank zero only, one line per training epoch and,
on long epochs, every ``every_n_steps`` batches: epoch, optimizer step, training and validation loss,
the monitored metric, elapsed time and the estimated time left. ``lightning run`` uses it instead of
the default bar when its output is not a terminal or it runs under SLURM or ``torchrun``
(:func:`~lightning_recipes.cluster.use_progress_log`).
"""

from __future__ import annotations

import math
import sys
import time
from datetime import timedelta
from typing import Any, TextIO

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ProgressBar
from typing_extensions import override

_TRAIN_LOSS = ("train/loss_epoch", "train/loss")
_VAL_LOSS = ("val/loss_epoch", "val/loss")


def _clock(seconds: float) -> str:
    """``H:MM:SS`` (``?`` when unknown)."""
    return str(timedelta(seconds=round(seconds))) if math.isfinite(seconds) else "?"


class ProgressLog(ProgressBar):
    """Prints one line per training epoch, and every ``every_n_steps`` batches of long epochs, from rank 0.

    A line reads ``epoch 3/10 step 120/400 train/loss 0.4123 val/loss 0.3811 val/acc 0.8712
    elapsed 0:03:12 eta 0:07:28``: the epoch counts from 1 and the step is the optimizer step out of the
    run's total (``trainer.estimated_stepping_batches``); ``val/acc`` is the metric the checkpoint
    callback (else early stopping) monitors. The ETA extrapolates the time per optimizer step so far,
    validation included. Lines within an epoch say ``batch b/B`` as well and carry the latest
    training loss.

    Args:
        every_n_steps: also print every this many training batches within an epoch; ``None``: every
            tenth of an epoch when an epoch has at least 100 batches, else only at epoch ends; ``0``:
            only at epoch ends.
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
        >>> [line.split(" train/loss")[0] for line in out.getvalue().splitlines()]
        ['epoch 1/2 step 2/4', 'epoch 2/2 step 4/4']
    """

    def __init__(self, every_n_steps: int | None = None, stream: TextIO | None = None) -> None:
        super().__init__()
        if every_n_steps is not None and every_n_steps < 0:
            raise ValueError(
                f"every_n_steps must be >= 0 (0: only at epoch ends) or None, got {every_n_steps}"
            )
        self.every_n_steps = every_n_steps
        self.stream = stream
        self._enabled = True
        self._start: float | None = None
        self._start_step = 0

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
    def interval(self, trainer: pl.Trainer) -> int:
        """Batches between lines within an epoch (0: none) for this trainer's epoch length."""
        if self.every_n_steps is not None:
            return self.every_n_steps
        batches = trainer.num_training_batches
        return batches // 10 if math.isfinite(batches) and batches >= 100 else 0

    def line(self, trainer: pl.Trainer, batch: int | None = None) -> str:
        """The line for now: ``batch`` (1-based) within the epoch, or ``None`` at an epoch's end."""
        metrics = trainer.callback_metrics
        total_steps = trainer.estimated_stepping_batches
        max_epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1) else "?"
        parts = [f"epoch {trainer.current_epoch + 1}/{max_epochs}"]
        if batch is not None:
            parts.append(f"batch {batch}/{trainer.num_training_batches}")
        total = int(total_steps) if math.isfinite(total_steps) else "?"
        parts.append(f"step {trainer.global_step}/{total}")
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

    # -- hooks -------------------------------------------------------------------------------------
    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start, self._start_step = time.monotonic(), trainer.global_step

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        every = self.interval(trainer)
        if every and (batch_idx + 1) % every == 0 and batch_idx + 1 < trainer.num_training_batches:
            self._print(trainer, self.line(trainer, batch=batch_idx + 1))

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._print(trainer, self.line(trainer))
