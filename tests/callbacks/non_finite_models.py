"""What the NonFiniteGuard tests share: scripted modules that go NaN/inf where told, and their Trainer."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_recipes.callbacks import NonFiniteGuard


class Scripted(L.LightningModule):
    """Head/backbone groups at different LRs; NaN losses at ``nan_steps``; ``val/loss`` scripted per epoch."""

    def __init__(self, nan_steps=(), val=(1.0,)) -> None:
        super().__init__()
        self.backbone = nn.Linear(4, 8)
        self.head = nn.Linear(8, 3)
        self.nan_steps, self.val = set(nan_steps), list(val)
        self.backward_steps: list[int] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.head(self.backbone(x)), y)
        if self.global_step in self.nan_steps:
            loss = loss * float("nan")
        self.log("train/loss", loss)
        return loss

    def on_after_backward(self) -> None:
        self.backward_steps.append(self.global_step)

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", torch.tensor(self.val[min(self.current_epoch, len(self.val) - 1)]))

    def configure_optimizers(self):
        groups = [
            {"name": "head", "params": self.head.parameters(), "lr": 0.1},
            {"name": "backbone", "params": self.backbone.parameters(), "lr": 0.01},
        ]
        return torch.optim.SGD(groups)


def loader(batch_size: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(
        TensorDataset(torch.randn(16, 4, generator=g), torch.randint(0, 3, (16,), generator=g)), batch_size
    )


def trainer_for(tmp_path, callbacks, max_epochs=3, guard=True, **kwargs) -> L.Trainer:
    settings = {"limit_train_batches": 2, "limit_val_batches": 1, "num_sanity_val_steps": 0, **kwargs}
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        **settings,
    )
    if guard:
        NonFiniteGuard.attach(trainer)  # as the CLI does: after the Trainer is built
    return trainer


def fit(tmp_path, model, callbacks, max_epochs=3, guard=True, batch_size=8, ckpt_path=None, **kwargs):
    trainer = trainer_for(tmp_path, callbacks, max_epochs, guard, **kwargs)
    trainer.fit(model, loader(batch_size), loader(batch_size), ckpt_path=ckpt_path)
    return trainer


def checkpoint(tmp_path, **kwargs) -> ModelCheckpoint:
    return ModelCheckpoint(
        dirpath=tmp_path / "ckpt", monitor="val/loss", filename="best-{epoch}", save_last=True, **kwargs
    )


NAN, INF = float("nan"), float("inf")


class Poisoned(Scripted):
    """Scripted with a BatchNorm in its backbone (parameters and buffers: 8 float tensors).

    After the 0-based optimizer step ``at``, ``value`` is written into the first element of ``target``
    (a parameter or buffer); ``logs`` is ``{stage: {key: per-epoch value}}``, logged per epoch in that
    stage's steps; ``epoch_loss`` also logs the training loss per step and epoch (``train/avg_loss_*``).
    """

    def __init__(self, at=None, target="head.weight", value=NAN, logs=None, epoch_loss=False, **kwargs):
        super().__init__(**kwargs)
        self.backbone = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8))
        self.at, self.target, self.value = at, target, value
        self.logs, self.epoch_loss = logs or {}, epoch_loss
        self.batches: dict[str, list] = {"train": [], "val": [], "test": [], "predict": []}

    def _log(self, stage, batch_idx):
        self.batches[stage].append((self.current_epoch, batch_idx))
        for key, values in self.logs.get(stage, {}).items():
            value = torch.tensor(float(values[min(self.current_epoch, len(values) - 1)]))
            self.log(key, value, on_step=False, on_epoch=True)

    def training_step(self, batch, batch_idx):
        self._log("train", batch_idx)
        loss = super().training_step(batch, batch_idx)
        if self.epoch_loss:
            self.log("train/avg_loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        super().validation_step(batch, batch_idx)
        self._log("val", batch_idx)

    def test_step(self, batch, batch_idx):
        self._log("test", batch_idx)

    def predict_step(self, batch, batch_idx):
        self._log("predict", batch_idx)
        return self.head(self.backbone(batch[0]))

    def configure_optimizers(self):
        optimizer = super().configure_optimizers()
        optimizer.register_step_post_hook(self._poison)
        return optimizer

    def _poison(self, optimizer, args, kwargs) -> None:
        if self.trainer.global_step == self.at:  # during step k, global_step is still k
            with torch.no_grad():
                poison(self, self.target, self.value)


def poison(module: nn.Module, target: str, value: float) -> None:
    tensors = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    tensors[target].view(-1)[0] = value


def finite_files(folder: Path) -> dict[str, bool]:
    """``{file name: every float tensor of its state_dict is finite}`` for the checkpoints in ``folder``."""
    return {
        p.name: all(
            bool(torch.isfinite(t).all())
            for t in torch.load(p, weights_only=False)["state_dict"].values()
            if t.is_floating_point()
        )
        for p in sorted(folder.glob("*.ckpt"))
    }
