"""What the WandbLogger tests share: an offline run read back from its files, a tiny classifier to log,
and wandb's run finished after every test (``_finish_wandb``, autouse where imported)."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_recipes import DataSpec
from lightning_recipes.callbacks import CurveLogger
from lightning_recipes.loggers import WandbRunId
from lightning_recipes.modules._classification import ClassificationModule

# ---- reading an offline run: the .wandb transaction log (LevelDB-log framing of protobuf Records) ----


def read_records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos, buf, records = path.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk
            record = pb.Record()
            record.ParseFromString(buf)
            records.append(record)
            buf = b""
    return records


def read_offline_run(run_dir: Path) -> dict:
    """Run id, project, tags, config, metric history, artifacts (with their files, description and
    metadata) and table files of an offline run."""
    (log,) = run_dir.glob("run-*.wandb")
    # wandb-core may still be writing after `finish()` returns: wait for the run's exit record.
    deadline = time.monotonic() + 60
    records = read_records(log)
    while not any(r.WhichOneof("record_type") == "exit" for r in records):
        assert time.monotonic() < deadline, f"{log} has no exit record: the run did not finish"
        time.sleep(0.2)
        records = read_records(log)
    run = {"config": {}, "config_keys": [], "history": [], "artifacts": [], "tables": {}}
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.update(id=record.run.run_id, project=record.run.project, name=record.run.display_name)
            run["tags"] = list(record.run.tags)
            for item in record.run.config.update:
                run["config"][item.key] = json.loads(item.value_json)
                run["config_keys"].append(item.key)
        elif kind == "config":
            for item in record.config.update:
                run["config"][item.key] = json.loads(item.value_json)
                run["config_keys"].append(item.key)
        elif kind == "history":
            row = {}
            for item in record.history.item:
                key = "/".join(item.nested_key) if item.nested_key else item.key
                row[key] = json.loads(item.value_json)
            run["history"].append(row)
        elif kind == "artifact":
            a = record.artifact
            run["artifacts"].append(
                {
                    "name": a.name,
                    "type": a.type,
                    "aliases": list(a.aliases),
                    "ttl": a.ttl_duration_seconds,
                    "files": [entry.path for entry in a.manifest.contents],
                    "description": a.description,
                    "metadata": json.loads(a.metadata) if a.metadata else {},
                }
            )
    media = run_dir / "files" / "media" / "table"
    for table in sorted(media.rglob("*.table.json")):
        run["tables"][table.relative_to(media).as_posix()] = json.loads(table.read_text())
    return run


def offline_runs(save_dir: Path) -> list[Path]:
    return sorted((save_dir / "wandb").glob("offline-run-*"))


# ---- a tiny classifier -------------------------------------------------------------------------------


class Tiny(ClassificationModule):
    def __init__(self, num_classes: int = 3, lr: float = 0.05) -> None:
        super().__init__(num_classes=num_classes, lr=lr)
        self.save_hyperparameters()
        self.backbone = nn.Linear(4, 8)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.head(self.backbone(x).relu())

    def logits_and_target(self, batch):
        x, y = batch
        return self(x), y


class TinyData(L.LightningDataModule):
    classes = ["red", "green", "blue"]

    def __init__(self, n: int = 45, batch_size: int = 8) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.y = torch.arange(n) % 3
        self.x = torch.randn(n, 4, generator=g) + torch.nn.functional.one_hot(self.y, 4) * 2
        self.batch_size = batch_size

    def accept_input_spec(self, spec):
        pass

    def data_spec(self):  # the handshake hands these class names to the model
        return DataSpec(label_names=self.classes)

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.x, self.y), batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(TensorDataset(self.x, self.y), batch_size=self.batch_size)

    test_dataloader = val_dataloader


def make_trainer(tmp_path: Path, logger, max_epochs: int = 2, **kwargs) -> L.Trainer:
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/acc", mode="max", save_last=True)
    return L.Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        logger=logger,
        callbacks=[checkpoint, CurveLogger(thresholds=21, max_points=40), WandbRunId()],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        default_root_dir=str(tmp_path),
        **kwargs,
    )


@pytest.fixture(autouse=True)
def _finish_wandb():
    yield
    import wandb

    if wandb.run is not None:
        wandb.finish()
