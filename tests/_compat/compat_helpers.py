"""What the tests of lightning_recipes/_compat/ share: the failure message and a tiny module and Trainer.

There is one test per entry of lightning_recipes/_compat/, in ``tests/_compat/test_compat_*.py`` (one
file per private API area): an upgrade breaking a private API fails there, loudly. Each failure message names
the library, its installed version, the private name and the version the entry was checked against;
the fix goes in ``lightning_recipes/_compat/`` (and its docstring).
"""

from __future__ import annotations

import inspect
from importlib.metadata import version

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

CHECKED = {"lightning": "2.6.6", "torch": "2.15", "timm": "1.0.31", "wandb": "0.31"}


def broken(library: str, what: str) -> str:
    """The assertion message: which library and version broke which private API."""
    return (
        f"{library} {version(library)} changed a private API lightning_recipes relies on: {what} "
        f"(checked against {library} {CHECKED[library]}); update lightning_recipes/_compat/"
    )


def params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


class Tiny(L.LightningModule):
    def __init__(self, lr: float = 0.01) -> None:
        super().__init__()
        self.lr = lr
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return F.mse_loss(self.layer(batch[0]), batch[0].sum(1, keepdim=True))

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", F.mse_loss(self.layer(batch[0]), batch[0].sum(1, keepdim=True)))

    test_step = validation_step

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def data(n: int = 64) -> DataLoader:
    return DataLoader(
        TensorDataset(torch.randn(n, 4, generator=torch.Generator().manual_seed(0))), batch_size=8
    )


def tiny_trainer(tmp_path, callbacks=(), **kwargs) -> L.Trainer:
    options = dict(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
    )
    options.update(kwargs)
    return L.Trainer(callbacks=list(callbacks), **options)
