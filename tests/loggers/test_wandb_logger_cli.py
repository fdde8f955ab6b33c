"""WandbLogger through the CLI (the recipe logged once, the run resumed from a checkpoint) and under DDP."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from offline_wandb_runs import (
    Tiny,
    TinyData,
    _finish_wandb,  # noqa: F401  (autouse: each test's wandb run finished)
    offline_runs,
    read_offline_run,
)

from lightning_recipes.loggers import LoggerSaveConfigCallback, apply_resume_id, run_id_from_checkpoint


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


DDP_SCRIPT = textwrap.dedent(
    """
    import sys
    import lightning as L
    import torch.distributed as dist
    sys.path.insert(0, {tests!r})
    from offline_wandb_runs import Tiny, TinyData
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
  class_path: offline_wandb_runs.Tiny
data:
  class_path: offline_wandb_runs.TinyData
"""


def test_lightning_run_logs_recipe_prints_table_and_resumes_the_run(tmp_path, capsys):
    import wandb

    from lightning_recipes.cli import main

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(RECIPE.format(root=tmp_path))
    assert main(["run", str(recipe)]) == 0
    assert wandb.run is None  # `lightning run` finishes its W&B run: the next run in this process is its own
    out = capsys.readouterr().out
    assert "Per-class metrics (test" in out and "macro avg" in out  # printed at the end of the test stage
    (first,) = offline_runs(tmp_path / "runs")
    run = read_offline_run(first)
    assert run["config_keys"].count("recipe") == 1 and run["tags"] == ["tiny"]
    last = next((tmp_path / "runs").rglob("last.ckpt"))
    assert run_id_from_checkpoint(last) == run["id"]

    assert main(["run", str(recipe), "--trainer.max_epochs=2", f"--ckpt_path={last}"]) == 0
    assert wandb.run is None
    assert [read_offline_run(d)["id"] for d in offline_runs(tmp_path / "runs")] == [run["id"], run["id"]]
