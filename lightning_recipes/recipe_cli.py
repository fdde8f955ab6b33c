"""``LightningRecipesCLI``: the LightningCLI every recipe runs under, and the short form of its errors.

The class ``lightning run`` (:func:`lightning_recipes.cli.run_recipe`), the ``fit|validate|test|predict``
subcommands and the trials of ``lightning-recipes tune`` (:mod:`lightning_recipes.tune`) build on; the
command line itself (``main``, usage, the summary) stays in :mod:`lightning_recipes.cli`, which imports
the commands it runs. Before anything is built it checks options that cannot work together
(:mod:`~lightning_recipes.preflight`) and builds the zoo names the recipe uses; after, it connects model
and data (the handshake) and adds the run's own callbacks (run directory, crash checkpoint, NaN guard,
prediction writer).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from typing_extensions import override

from lightning_recipes import cores, preflight, zoo
from lightning_recipes.callbacks.non_finite_guard import NonFiniteGuard
from lightning_recipes.callbacks.prediction_writer import PredictionWriter
from lightning_recipes.cluster import hpc_checkpoint, slurm_run_name, use_progress_log, use_slurm_run_name
from lightning_recipes.handshake import connect
from lightning_recipes.loggers.wandb import apply_resume_id
from lightning_recipes.runs import CrashCheckpoint, RecipeTrainer, RunConfigCallback, RunDirectory

__all__ = ["LightningRecipesCLI", "requeued_from", "short_error"]

Stage = Literal["fit", "validate", "test", "predict"]


class LightningRecipesCLI(LightningCLI):
    """LightningCLI for recipes: any LightningModule/DataModule by ``class_path``, a ``stages`` key,
    one directory per run (:class:`RecipeTrainer`), crash checkpoints, and optimizers configured on
    the module (``model.init_args.optimizer``) so that each module builds its own backbone/head
    parameter groups. Once model and data are built, it calls :func:`~lightning_recipes.connect` on
    them (the handshake), before any stage runs.
    """

    def __init__(
        self, *args: Any, recipe_mode: bool = False, model_folder: Path | None = None, **kwargs: Any
    ) -> None:
        self.recipe_mode = recipe_mode
        #: ``predict --model DIR``: the export folder the model is built from, in place of the recipe's.
        self.model_folder = model_folder
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("trainer_class", RecipeTrainer)
        # Also logs the resolved recipe to W&B and keeps the W&B run id in checkpoints.
        kwargs.setdefault("save_config_callback", RunConfigCallback)
        kwargs.setdefault("parser_kwargs", {"default_env": False, "exit_on_error": False})
        super().__init__(L.LightningModule, L.LightningDataModule, *args, **kwargs)

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--stages",
            type=list[Stage],
            default=["fit", "test"],
            help="What `lightning run` does, in order: fit, validate, test, predict (test after fit uses "
            "the best checkpoint). Ignored by the fit/validate/test/predict subcommands.",
        )
        if self.recipe_mode:
            parser.add_argument(
                "--ckpt_path", type=str | None, default=None, help="Resume fit from this checkpoint."
            )

    @override
    def before_instantiate_classes(self) -> None:
        """Options that cannot work together are refused before anything is built
        (:func:`~lightning_recipes.preflight.check`); zoo models the recipe names are built if they are
        not yet (:func:`lightning_recipes.zoo.build_missing`, one line each); resuming from a checkpoint
        continues the W&B run whose id the checkpoint stores. With ``predict --model DIR`` the model is
        the export's (:func:`lightning_recipes.export.model_config`), not the recipe's."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        if self.model_folder is not None:
            from lightning_recipes.export import use_export_model

            use_export_model(config, self.model_folder)
        preflight.check(config)
        zoo.build_missing(zoo.names_in(config))
        trainer = config.get("trainer", {})
        apply_resume_id(trainer.get("logger"), config.get("ckpt_path") or requeued_from(trainer))

    @override
    def instantiate_classes(self) -> None:
        """Build model, data and trainer, then hand over what model and data must agree on (``connect``)."""
        super().instantiate_classes()
        if self.datamodule is not None:
            ckpt_path = self.config[self.subcommand].get("ckpt_path") if self.subcommand else None
            if ckpt_path and Path(ckpt_path).is_file():
                # The subcommands build the model from the checkpoint's hyperparameters, which leave out
                # what the model keeps beside them (tokenizer, class names): restore those before the
                # handshake, so the data module tokenises with the checkpoint's tokenizer.
                checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
                self.model.on_load_checkpoint(checkpoint)
            connect(self.model, self.datamodule)
            for line in cores.fit_run(self.trainer, self.datamodule):  # DataLoader workers to the cores
                print(line, flush=True)

    @override
    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if isinstance(trainer, RecipeTrainer):
            trainer.callbacks.insert(0, RunDirectory())  # before the callbacks whose folders it sets
        trainer.callbacks.append(CrashCheckpoint())
        # NaN/inf fails the run (TrainingDiverged) unless a guard in the recipe says otherwise (non_finite)
        NonFiniteGuard.attach(trainer)
        # Predictions are written by a PredictionWriter, unless the recipe configures a writer of its own.
        if not any(isinstance(cb, BasePredictionWriter) for cb in trainer.callbacks):
            trainer.callbacks.append(PredictionWriter())
        use_progress_log(trainer)  # one line per epoch instead of a live bar in SLURM/torchrun/nohup logs
        use_slurm_run_name(trainer)  # a requeued SLURM job continues in its run directory
        return trainer

    def run_stages(self) -> dict[str, Any]:
        """Run the recipe's ``stages``; return a summary (run dir, checkpoints, metrics, predictions and
        the test split's predictions)."""
        trainer, model, data = self.trainer, self.model, self.datamodule
        ckpt_path, metrics = self.config.get("ckpt_path"), {}
        best = last = None
        if "fit" not in self.config.stages and ckpt_path is None and trainer.is_global_zero:
            # An as-is recipe (or an evaluation before any training): say which weights are scored.
            print(
                "No fit stage and no --ckpt_path: the stages use the model as built (its pretrained "
                "weights); nothing is trained",
                flush=True,
            )
        seconds: dict[str, float] = {}
        for stage in self.config.stages:
            started = time.perf_counter()
            if stage == "fit":
                trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
                # Read now: a later stage restores the callback state stored in the best checkpoint.
                best = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
                last = getattr(trainer.checkpoint_callback, "last_model_path", "") or None
                ckpt_path = best or last
            elif stage == "predict":  # the PredictionWriter writes the predictions
                trainer.predict(model, datamodule=data, ckpt_path=ckpt_path, return_predictions=False)
            else:
                getattr(trainer, stage)(model, datamodule=data, ckpt_path=ckpt_path)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1})
            seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - started
        run_dir = trainer.log_dir or trainer.default_root_dir
        writers = [cb for cb in trainer.callbacks if isinstance(cb, PredictionWriter)]
        predictions = next((str(cb.path) for cb in writers if cb.path), None)
        test_predictions = next((str(cb.test_path) for cb in writers if cb.test_path), None)
        return {
            "run_dir": run_dir,
            "best_checkpoint": best,
            "last_checkpoint": last,
            "plots": sorted(str(p) for p in Path(run_dir).rglob("*.png")) if Path(run_dir).is_dir() else [],
            "metrics": dict(sorted(metrics.items())),
            "predictions": predictions,
            "test_predictions": test_predictions,
            "checkpoint": ckpt_path,
            "seconds": seconds,
        }


def requeued_from(trainer_config: Any) -> Path | None:
    """In a SLURM job, the ``hpc_ckpt_N.ckpt`` that Lightning will resume fit from (a requeued job)."""
    if slurm_run_name() is None:
        return None
    return hpc_checkpoint(trainer_config.get("default_root_dir") or os.getcwd())


_NOISE = (
    "Expected a <class 'NoneType'>",
    "Given value type",
    "Subtypes:",
    "Does not validate against any",
    "Errors:",
)


def short_error(exc: BaseException) -> str:
    """One short message for ``exc``: jsonargparse's Union bookkeeping and long value dumps are dropped."""
    lines = [line.strip(" -") for line in str(exc).splitlines()]
    lines = [
        line
        for line in lines
        if line and not line.startswith(_NOISE) and not (line.startswith("Given value") and len(line) > 200)
    ]
    return "\n".join(line if i == 0 else "  " + line for i, line in enumerate(lines))
