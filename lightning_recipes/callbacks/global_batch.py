"""GlobalBatch: keep a recipe's global batch when the number of devices changes, through accumulation.

The global batch (samples per optimizer step) is ``batch_size x devices x num_nodes x
accumulate_grad_batches``. A recipe tuned at 256 keeps its learning rate and schedule meaning on 1, 4
or 16 GPUs only if that product stays 256. ``GlobalBatch(size=256)`` sets ``accumulate_grad_batches``
from the Trainer's world size before the optimizer is built, so a schedule sized from
``trainer.estimated_stepping_batches`` (:class:`~lightning_recipes.schedulers.WarmupDecay`, warm-up
included) counts the same optimizer steps whatever the number of devices.
"""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.parsing import lightning_getattr
from typing_extensions import override


def accumulation(size: int, batch_size: int, world_size: int) -> int:
    """Gradient accumulation steps that make ``batch_size x world_size x steps == size``.

    Example::

        >>> accumulation(256, 32, 1), accumulation(256, 32, 4), accumulation(256, 32, 8)
        (8, 2, 1)
        >>> accumulation(256, 32, 3)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: global batch 256 is not a multiple of ...: use a global batch of 192 or 288, ...
    """
    per_step = batch_size * world_size
    if size < 1 or batch_size < 1:
        raise ValueError(f"global batch ({size}) and batch_size ({batch_size}) must be >= 1")
    if size % per_step:
        lower, upper = (size // per_step) * per_step, (size // per_step + 1) * per_step
        choices = f"{lower} or {upper}" if lower else str(upper)
        raise ValueError(
            f"global batch {size} is not a multiple of batch_size {batch_size} x {world_size} devices = "
            f"{per_step}: use a global batch of {choices}, or another batch_size"
        )
    return size // per_step


class GlobalBatch(Callback):
    """Sets ``trainer.accumulate_grad_batches`` so that each optimizer step sees ``size`` samples.

    The per-device ``batch_size`` is read the way Lightning's ``BatchSizeFinder`` reads it
    (``lightning_getattr``: the module, its hparams, then the data module), the world size is
    ``trainer.world_size`` (devices x nodes). Set in ``setup``, before the optimizer and LR schedulers
    are built. A recipe that also sets ``trainer.accumulate_grad_batches`` (other than 1) is an error:
    one of the two must go.

    Args:
        size: samples per optimizer step, over all devices.

    Example::

        >>> import torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from lightning_recipes import ImageClassifier
        >>> data = pl.LightningDataModule.from_datasets(
        ...     TensorDataset(torch.randn(16, 3, 32, 32), torch.randint(0, 2, (16,))), batch_size=4)
        >>> data.batch_size = 4
        >>> model = ImageClassifier("test_resnet", num_classes=2, pretrained=False)
        >>> trainer = pl.Trainer(max_epochs=1, callbacks=[GlobalBatch(size=8)], accelerator="cpu",
        ...                      logger=False, enable_checkpointing=False, enable_progress_bar=False,
        ...                      enable_model_summary=False)
        >>> trainer.fit(model, datamodule=data)
        >>> trainer.accumulate_grad_batches, trainer.global_step
        (2, 2)
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"size (the global batch) must be >= 1, got {size}")
        self.size = size

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        try:
            batch_size = int(lightning_getattr(pl_module, "batch_size"))
        except AttributeError as exc:
            raise ValueError(
                "GlobalBatch needs the per-device batch_size: give the data module (or the model) a "
                "`batch_size` attribute"
            ) from exc
        steps = accumulation(self.size, batch_size, trainer.world_size)
        if trainer.accumulate_grad_batches not in (1, steps):
            raise ValueError(
                f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches} and GlobalBatch(size="
                f"{self.size}) both set the accumulation: remove accumulate_grad_batches (GlobalBatch sets "
                f"{steps} on {trainer.world_size} device(s))"
            )
        trainer.accumulate_grad_batches = steps
        rank_zero_info(
            f"GlobalBatch: {self.size} samples per optimizer step = batch_size {batch_size} x "
            f"{trainer.world_size} device(s) x {steps} accumulated batch(es)"
        )
