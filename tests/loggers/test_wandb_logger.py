"""WandbLogger: offline fallback, what an offline run records (read back from its files), resume by run id."""

from __future__ import annotations

import json
import os
import struct
import textwrap
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_recipes import DataSpec, connect
from lightning_recipes.callbacks import CurveLogger
from lightning_recipes.loggers import (
    LoggerSaveConfigCallback,
    WandbLogger,
    WandbRunId,
    apply_resume_id,
    run_id_from_checkpoint,
)
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
    """Run id, project, tags, config, metric history, artifacts and table files of an offline run."""
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
                {"name": a.name, "type": a.type, "aliases": list(a.aliases), "ttl": a.ttl_duration_seconds}
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


@pytest.fixture
def wandb_env(monkeypatch):
    """For a test that changes wandb's environment: wandb reads it once per process (``wandb.setup``), so
    its settings are torn down before the test and after it (``wandb.teardown``, both public)."""
    import wandb

    wandb.teardown()
    yield monkeypatch
    wandb.finish()
    wandb.teardown()


@pytest.fixture
def no_credentials(wandb_env, tmp_path):
    wandb_env.delenv("WANDB_API_KEY", raising=False)
    wandb_env.delenv("WANDB_IDENTITY_TOKEN_FILE", raising=False)
    wandb_env.delenv("WANDB_MODE", raising=False)
    wandb_env.setenv("NETRC", str(tmp_path / "no-netrc"))
    wandb_env.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))  # no settings file with a key


@pytest.fixture(autouse=True)
def _finish_wandb():
    yield
    import wandb

    if wandb.run is not None:
        wandb.finish()


# ---- tests ---------------------------------------------------------------------------------------


def test_offline_fallback_without_credentials(no_credentials, tmp_path, capsys):
    logger = WandbLogger(project="demo", save_dir=str(tmp_path))
    run = logger.experiment
    assert logger.offline and "no W&B credentials" in logger.offline_reason
    (run_dir,) = offline_runs(tmp_path)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("wandb: no W&B")]
    assert lines == [
        f"wandb: {logger.offline_reason}: run {run.id} is recorded offline in {run_dir}; "
        f"upload it with `wandb sync {run_dir}`"
    ]


def test_offline_fallback_when_server_unreachable(no_credentials, wandb_env, tmp_path, capsys):
    netrc = tmp_path / "netrc"  # what `wandb login` writes (the machine is the server's host:port)
    netrc.write_text("machine 127.0.0.1:9 login user password " + "x" * 40 + "\n")
    netrc.chmod(0o600)
    wandb_env.setenv("NETRC", str(netrc))
    wandb_env.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # discard port: refused at once
    logger = WandbLogger(project="demo", save_dir=str(tmp_path), init_timeout=1)
    run = logger.experiment
    assert run.id and logger.offline
    assert logger.offline_reason.startswith("wandb.init could not reach the W&B server within 1 s (")
    assert "127.0.0.1:9" in logger.offline_reason  # wandb's own error: what it tried
    (run_dir,) = offline_runs(tmp_path)
    assert f"upload it with `wandb sync {run_dir}`" in capsys.readouterr().err


def test_offline_run_records_config_history_curves_and_checkpoints(tmp_path):
    logger = WandbLogger(
        project="recipes",
        name="tiny-run",
        tags=["tiny", "test"],
        save_dir=str(tmp_path),
        log_model=True,
        model_ttl_days=7,
    )
    trainer = make_trainer(tmp_path, logger)
    model, data = Tiny(), TinyData()
    connect(model, data)
    trainer.fit(model, data)
    run_id = logger.experiment.id
    logger.experiment.finish()

    (run_dir,) = offline_runs(tmp_path)  # one run
    assert (tmp_path / "recipes" / run_id / "curves" / "val_epoch001" / "roc.png").is_file()
    run = read_offline_run(run_dir)
    assert (run["id"], run["project"], run["name"], run["tags"]) == (
        run_id,
        "recipes",
        "tiny-run",
        ["tiny", "test"],
    )
    assert run["config"]["lr"] == 0.05 and run["config"]["num_classes"] == 3  # module hparams
    steps = [row for row in run["history"] if "val/acc" in row]
    assert len(steps) == 2 and all("val/auroc" in row and "val/ap" in row for row in steps)
    curve_steps = [
        row["trainer/global_step"] for row in run["history"] if any(k.startswith("val/roc") for k in row)
    ]
    assert curve_steps == [row["trainer/global_step"] for row in steps]  # same x-axis as val/acc
    assert trainer.callback_metrics["val/auroc"].item() == pytest.approx(steps[-1]["val/auroc"])

    roc_tables = [t for name, t in run["tables"].items() if name.startswith("val/roc_curve")]
    assert len(roc_tables) == 2  # one per epoch
    table = roc_tables[0]
    assert table["columns"] == ["class", "fpr", "tpr", "threshold"]
    assert {row[0] for row in table["data"]} == {"red", "green", "blue", "micro"}  # classes kept
    assert len(table["data"]) <= 40  # downsampled
    metrics_table = next(t for name, t in run["tables"].items() if name.startswith("val/class_metrics"))
    assert [row[0] for row in metrics_table["data"]] == ["red", "green", "blue", "macro avg", "micro avg"]

    models = [a for a in run["artifacts"] if a["type"] == "model"]
    assert 1 <= len(models) <= 2  # bounded: best and last
    assert {"best", "last", "latest"} <= {alias for a in models for alias in a["aliases"]}
    assert all(a["ttl"] == 7 * 24 * 3600 for a in models)
    assert run_id_from_checkpoint(tmp_path / "ckpt" / "last.ckpt") == run_id


def test_resume_continues_the_run(tmp_path):
    logger = WandbLogger(project="recipes", save_dir=str(tmp_path))
    make_trainer(tmp_path, logger, max_epochs=1).fit(Tiny(), TinyData())
    first_id = logger.experiment.id
    logger.experiment.finish()
    last = tmp_path / "ckpt" / "last.ckpt"
    assert run_id_from_checkpoint(last) == first_id

    # what the CLI does with `--ckpt_path`: the parsed logger config gets the stored id
    config = {"class_path": "lightning_recipes.loggers.WandbLogger", "init_args": {"project": "recipes"}}
    assert apply_resume_id(config, last) == first_id
    resumed = WandbLogger(**config["init_args"], save_dir=str(tmp_path))
    make_trainer(tmp_path, resumed, max_epochs=2).fit(Tiny(), TinyData(), ckpt_path=str(last))
    assert resumed.experiment.id == first_id
    resumed.experiment.finish()
    runs = [read_offline_run(d) for d in offline_runs(tmp_path)]
    assert [r["id"] for r in runs] == [first_id, first_id]
    assert run_id_from_checkpoint(last) == first_id

    explicit = {"class_path": "WandbLogger", "init_args": {"id": "mine"}}
    assert apply_resume_id(explicit, last) is None and explicit["init_args"]["id"] == "mine"
    assert apply_resume_id(None, last) is None and apply_resume_id(config, tmp_path / "missing.ckpt") is None


def test_cli_logs_the_recipe_once_and_resumes_from_a_checkpoint(tmp_path):
    from lightning.pytorch.cli import LightningCLI

    class ResumingCLI(LightningCLI):  # what LightningRecipesCLI does
        def before_instantiate_classes(self) -> None:
            config = self.config[self.subcommand] if self.subcommand else self.config
            self.resumed = apply_resume_id(config.get("trainer", {}).get("logger"), config.get("ckpt_path"))

    def cli(*extra: str) -> ResumingCLI:
        args = [
            "fit",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=2",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.logger=lightning_recipes.loggers.WandbLogger",
            "--trainer.logger.project=cli",
            f"--trainer.logger.save_dir={tmp_path}",
            "--trainer.logger.tags=[a,b]",
            "--model.lr=0.01",
            *extra,
        ]
        kwargs = {"save_config_callback": LoggerSaveConfigCallback, "save_config_kwargs": {"overwrite": True}}
        return ResumingCLI(Tiny, TinyData, args=args, **kwargs)

    first = cli("--trainer.max_epochs=1")
    first.trainer.validate(first.model, first.datamodule)  # a second stage does not log the config again
    run_id = first.trainer.logger.experiment.id
    first.trainer.logger.experiment.finish()
    assert first.resumed is None
    (run_dir,) = offline_runs(tmp_path)
    run = read_offline_run(run_dir)
    assert run["config_keys"].count("recipe") == 1
    recipe = run["config"]["recipe"]
    recipe = recipe.get("value", recipe)
    assert recipe["trainer"]["max_epochs"] == 1 and recipe["model"]["lr"] == 0.01
    assert recipe["trainer"]["logger"]["init_args"]["tags"] == ["a", "b"]
    assert run["tags"] == ["a", "b"]

    checkpoint = first.trainer.checkpoint_callback.best_model_path
    assert run_id_from_checkpoint(checkpoint) == run_id  # stored by LoggerSaveConfigCallback
    second = cli("--trainer.max_epochs=2", f"--ckpt_path={checkpoint}")
    assert second.resumed == run_id and second.trainer.logger.experiment.id == run_id
    assert second.trainer.logger._wandb_init["resume"] == "allow"  # not reset by the CLI's kwargs defaults
    assert second.trainer.current_epoch == 2  # it did resume the training
    second.trainer.logger.experiment.finish()
    assert [read_offline_run(d)["id"] for d in offline_runs(tmp_path)] == [run_id, run_id]


def test_binary_curves_to_wandb(tmp_path):
    from lightning_recipes.callbacks.curve_logger import CurveMetrics, log_to_wandb

    metrics = CurveMetrics("multiclass", 2, thresholds=101, class_names=["ham", "spam"])
    p = torch.linspace(0, 1, 30)
    metrics.update(torch.stack([1 - p, p], 1), (p > 0.4).long())
    logger = WandbLogger(project="binary", save_dir=str(tmp_path))
    log_to_wandb(logger, metrics.compute(), "test", step=5, max_points=10)
    logger.experiment.finish()
    run = read_offline_run(offline_runs(tmp_path)[0])
    roc = next(t for name, t in run["tables"].items() if name.startswith("test/roc_curve"))
    per_class = [row[0] for row in roc["data"]]
    assert sorted(set(per_class)) == ["ham", "spam"]  # each class has its own curve, also for binary
    assert per_class.count("spam") == per_class.count("ham") == 5  # max_points=10 shared by the curves
    spam = [row for row in roc["data"] if row[0] == "spam"]
    assert spam[0][1:3] == [0.0, 0.0] and spam[0][3] is None  # the inf threshold
    table = next(t for name, t in run["tables"].items() if name.startswith("test/class_metrics"))
    rows = {row[0]: dict(zip(table["columns"], row, strict=True)) for row in table["data"]}
    assert rows["spam"]["auroc"] == 1.0 and rows["ham"]["auroc"] == pytest.approx(1.0)  # no blank for class 0
    assert rows["macro avg"]["support"] == 30
    assert any(row.get("trainer/global_step") == 5 for row in run["history"])


def test_arguments():
    with pytest.raises(ValueError, match="model_ttl_days"):
        WandbLogger(model_ttl_days=0)
    with pytest.raises(ValueError, match="init_timeout must be > 0"):
        WandbLogger(init_timeout=0)
    logger = WandbLogger(project="p", group="g", entity="e", offline=True)
    assert logger.offline and logger._wandb_init["group"] == "g" and logger._wandb_init["entity"] == "e"


DDP_SCRIPT = textwrap.dedent(
    """
    import sys
    import lightning as L
    import torch.distributed as dist
    sys.path.insert(0, {tests!r})
    from test_wandb_logger import Tiny, TinyData
    from lightning_recipes.loggers import WandbLogger

    logger = WandbLogger(project="ddp", save_dir=sys.argv[1])
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, limit_train_batches=2,
                        limit_val_batches=2, logger=logger, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(Tiny(), TinyData())
    dist.destroy_process_group()  # a script's own CPU DDP run ends so (docs/multi_gpu.md)
    """
)


@pytest.mark.slow
def test_one_run_for_two_processes(tmp_path, run_script):
    proc = run_script(
        DDP_SCRIPT.format(tests=str(Path(__file__).parent)),
        tmp_path,
        env={"WANDB_MODE": "offline", "MASTER_PORT": str(29600 + os.getpid() % 1000)},
    )
    (run_dir,) = offline_runs(tmp_path)
    assert any("val/acc" in row for row in read_offline_run(run_dir)["history"])
    assert proc.stderr.count("upload it with `wandb sync") == 1


RECIPE = """\
# A tiny recipe: W&B offline, curves, fit then test.
seed_everything: 0
stages: [fit, test]
trainer:
  max_epochs: 1
  accelerator: cpu
  limit_train_batches: 2
  limit_val_batches: 2
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: {root}
  logger:
    class_path: lightning_recipes.loggers.WandbLogger
    init_args: {{project: tiny, save_dir: {root}/runs, tags: [tiny]}}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{monitor: val/acc, mode: max, save_last: true}}
    - class_path: lightning_recipes.callbacks.CurveLogger
      init_args: {{thresholds: 21}}
model:
  class_path: test_wandb_logger.Tiny
data:
  class_path: test_wandb_logger.TinyData
"""


def test_lightning_run_logs_recipe_prints_table_and_resumes_the_run(tmp_path, capsys):
    import wandb

    from lightning_recipes.cli import main

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(RECIPE.format(root=tmp_path))
    assert main(["run", str(recipe)]) == 0
    wandb.finish()  # each `lightning run` is its own process
    out = capsys.readouterr().out
    assert "Per-class metrics (test" in out and "macro avg" in out  # printed at the end of the test stage
    (first,) = offline_runs(tmp_path / "runs")
    run = read_offline_run(first)
    assert run["config_keys"].count("recipe") == 1 and run["tags"] == ["tiny"]
    last = next((tmp_path / "runs").rglob("last.ckpt"))
    assert run_id_from_checkpoint(last) == run["id"]

    assert main(["run", str(recipe), "--trainer.max_epochs=2", f"--ckpt_path={last}"]) == 0
    wandb.finish()
    assert [read_offline_run(d)["id"] for d in offline_runs(tmp_path / "runs")] == [run["id"], run["id"]]
