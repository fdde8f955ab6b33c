"""The ``lightning`` / ``lightning-recipes`` command: LightningCLI plus ``run RECIPE.yaml`` and ``list``.

``lightning run RECIPE.yaml [--trainer.max_epochs=3 ...]`` runs a recipe's stages (default: fit, then
test with the best checkpoint) in a new directory of its own and prints where checkpoints, config,
metrics, plots and predictions went. ``lightning run --help`` shows its usage. A run stopped by
SIGTERM or Ctrl-C saves ``on_exception.ckpt`` and exits 143 or 130 (never 0).
``lightning-recipes fit|validate|test|predict --config RECIPE.yaml`` are plain LightningCLI subcommands;
``predict --model DIR`` predicts from a folder of ``lightning-recipes export`` (hf or timm) instead of the
recipe's model (:mod:`lightning_recipes.export`).
``lightning-recipes list [--matrix]`` shows the shipped recipes (family, scenario, offline or not);
``lightning-recipes suggest`` measures a data set against a backbone and names the recipe to run;
``lightning-recipes zoo list|build NAME`` shows and builds the zoo's offline-pretrained weights
(:mod:`lightning_recipes.zoo`). ``lightning`` hands command lines that are not ours to Lightning's
own CLI (:mod:`lightning_recipes.lightning_command`). Errors print one short message; set
``LIGHTNING_RECIPES_DEBUG=1`` for the full traceback.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from lightning_recipes import cores, preflight, zoo
from lightning_recipes._process_group import destroy_leftover_process_group
from lightning_recipes.callbacks.non_finite_guard import NonFiniteGuard
from lightning_recipes.callbacks.prediction_writer import PredictionWriter
from lightning_recipes.cluster import (
    hpc_checkpoint,
    quiet_dependency_noise,
    slurm_run_name,
    use_progress_log,
    use_slurm_run_name,
)
from lightning_recipes.handshake import connect
from lightning_recipes.lightning_command import SUBCOMMANDS, dispatch, other_commands_help
from lightning_recipes.loggers.wandb import apply_resume_id, finish_runs
from lightning_recipes.recipes import format_list, format_matrix, list_recipes, resolve_recipe
from lightning_recipes.run_record import document_run
from lightning_recipes.runs import (
    CrashCheckpoint,
    RecipeTrainer,
    RunConfigCallback,
    RunDirectory,
    stopping_signal,
)

Stage = Literal["fit", "validate", "test", "predict"]
USAGE = """usage:
  lightning run RECIPE.yaml [--trainer.max_epochs=3 --model.init_args.lr=1e-4 ...]   (lightning run --help)
  lightning-recipes fit|validate|test|predict --config RECIPE.yaml [overrides]
  lightning-recipes predict --config RUN_DIR/config.yaml --model EXPORT_DIR   (predict from an hf/timm export)
  lightning-recipes list [--matrix]   (name, family, scenario, offline; --matrix: family x scenario)
  lightning-recipes suggest --data PATH --backbone NAME [--family image|text]   (which scenario fits)
  lightning-recipes zoo list | zoo build NAME [NAME...] [--source DIR]   (offline-pretrained weights)
  lightning-recipes export RUN_DIR|CKPT --to DIR [--format hf|timm|onnx|torchscript] [--merge]   (ship it)
      [--push-to-hub ORG/NAME [--public]] [--no-wandb]   (docs/export.md)
  lightning run RECIPE.yaml --print_config > resolved.yaml   (runs again unchanged)
"""
RUN_USAGE = """usage: lightning run RECIPE [--KEY=VALUE ...] [--ckpt_path=PATH] [--print_config]

Runs the recipe's stages (default: fit, then test with the best checkpoint) in a new run directory
(config.yaml, checkpoints/, curves, metrics) and prints where everything went.

  RECIPE             a recipe YAML file, or a shipped recipe's name (lightning-recipes list)
  --KEY=VALUE        override any key of the recipe: --trainer.max_epochs=3 --model.init_args.lr=1e-4
  --ckpt_path=PATH   resume fit from a checkpoint (last.ckpt, or on_exception.ckpt after a stop)
  --print_config     print the fully resolved recipe and exit (it runs again unchanged)
  lightning run RECIPE --help   every option of that recipe

exit status: 0 done, 1 error, 2 usage error, 130 stopped by SIGINT (Ctrl-C), 143 stopped by SIGTERM
"""


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
        """Run the recipe's ``stages``; return a summary (run dir, checkpoints, metrics, predictions)."""
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
        writers = [cb for cb in trainer.callbacks if isinstance(cb, PredictionWriter) and cb.path]
        return {
            "run_dir": run_dir,
            "best_checkpoint": best,
            "last_checkpoint": last,
            "plots": sorted(str(p) for p in Path(run_dir).rglob("*.png")) if Path(run_dir).is_dir() else [],
            "metrics": dict(sorted(metrics.items())),
            "predictions": str(writers[0].path) if writers else None,
            "checkpoint": ckpt_path,
            "seconds": seconds,
        }


def requeued_from(trainer_config: Any) -> Path | None:
    """In a SLURM job, the ``hpc_ckpt_N.ckpt`` that Lightning will resume fit from (a requeued job)."""
    if slurm_run_name() is None:
        return None
    return hpc_checkpoint(trainer_config.get("default_root_dir") or os.getcwd())


def print_summary(summary: dict[str, Any]) -> None:
    """Print where this run's files went (its own directory: config, checkpoints, plots) and its metrics."""
    config = Path(summary["run_dir"]) / "config.yaml"
    print(f"\nRun directory:   {summary['run_dir']}")
    print(f"Best checkpoint: {summary['best_checkpoint']}")
    print(f"Last checkpoint: {summary['last_checkpoint']}")
    print(f"Config:          {config if config.is_file() else '(not saved)'}")
    card = Path(summary["run_dir"]) / "README.md"
    if card.is_file():
        print(f"Model card:      {card}")
    if summary["plots"]:
        print(f"Plots:           {len(summary['plots'])} PNG files under {summary['run_dir']}")
    if summary.get("predictions"):
        print(f"Predictions:     {summary['predictions']}")
    if summary["metrics"]:
        print("Final metrics:   " + ", ".join(f"{k}={v:.4f}" for k, v in summary["metrics"].items()))


def run_recipe(recipe: str, overrides: list[str]) -> dict[str, Any]:
    """``lightning run``: parse the recipe with overrides and run its stages."""
    path = resolve_recipe(recipe)
    cli = LightningRecipesCLI(args=["--config", str(path), *overrides], run=False, recipe_mode=True)
    try:
        summary = cli.run_stages()
    except Exception as exc:
        if cli.trainer.received_sigterm:  # e.g. DDP peers torn down by the SIGTERM: still "stopped by it"
            raise SIGTERMException from exc
        raise
    finally:
        finish_runs(cli.trainer)
    if cli.trainer.is_global_zero:
        document_run(cli.trainer, cli.model, cli.datamodule, summary)
        print_summary(summary)
    return summary


def _list(args: list[str]) -> int:
    if args not in ([], ["--matrix"]):
        print(f"error: lightning-recipes list takes only --matrix, got {' '.join(args)!r}", file=sys.stderr)
        return 2
    print((format_matrix if args else format_list)(list_recipes()))
    return 0


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


def lightning_main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lightning`` console script: :func:`main` for our commands; every other
    command line (``run model ...``, another package's ``lightning`` commands) goes unchanged to
    Lightning's CLI (:func:`dispatch`), and its exit status is returned."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        other = dispatch(argv)
    except LookupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return main(argv) if other is None else other()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lightning-recipes`` console script (and, for our commands, of ``lightning``:
    :func:`lightning_main`); returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    quiet_dependency_noise()
    command = argv[0] if argv else ""
    try:
        if command == "run":
            if len(argv) > 1 and argv[1] in ("-h", "--help"):
                print(RUN_USAGE)
                return 0
            if len(argv) == 1 or argv[1].startswith("-"):
                missing = "RECIPE (a recipe YAML file or a shipped recipe's name) is missing"
                print(f"error: lightning run: {missing}\n{RUN_USAGE}", file=sys.stderr)
                return 2
            run_recipe(argv[1], argv[2:])
        elif command == "list":
            return _list(argv[1:])
        elif command == "suggest":
            from lightning_recipes import suggest

            return suggest.main(argv[1:])
        elif command == "zoo":
            return zoo.main(argv[1:])
        elif command == "export":
            from lightning_recipes import export

            return export.main(argv[1:])
        elif command == "predict":
            from lightning_recipes.export import ExportError, model_config, split_model_folder

            args, folder = split_model_folder(argv[1:])
            try:
                if folder is not None:  # from an export: its class satisfies the parser, its config wins
                    args.append(f"--model={model_config(folder)['class_path']}")
                LightningRecipesCLI(args=["predict", *args], model_folder=folder)
            except ExportError as exc:
                print(f"error: predict: {exc}", file=sys.stderr)
                return 2
        elif command in SUBCOMMANDS:
            LightningRecipesCLI(args=argv)
        elif command in ("-h", "--help", ""):
            print(USAGE + other_commands_help())
            return 0 if command else 2
        else:
            print(f"error: unknown command {command!r}\n{USAGE}", file=sys.stderr)
            return 2
    except SystemExit as exc:  # argparse/jsonargparse errors, --help/--print_config; SIGTERM, Ctrl-C
        signum = stopping_signal(exc)
        if signum is not None:  # CrashCheckpoint printed what stopped the run and where it saved
            return 128 + signum
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:  # Ctrl-C outside the Trainer's stages (parsing, building, between stages)
        print("Stopped by SIGINT (Ctrl-C) outside training; no checkpoint saved", file=sys.stderr)
        return 128 + signal.SIGINT
    except Exception as exc:
        if os.environ.get("LIGHTNING_RECIPES_DEBUG"):
            raise
        kind = "invalid recipe" if type(exc).__name__ == "ArgumentError" else type(exc).__name__
        # One write: under DDP every process prints this to the same stderr, and `print`'s separate
        # write of the newline lets another process's message land on the same line (unbuffered stderr).
        hint = "(set LIGHTNING_RECIPES_DEBUG=1 to see the full traceback)"
        sys.stderr.write(f"error: {kind}: {short_error(exc)}\n{hint}\n")
        sys.stderr.flush()
        return 1
    finally:  # a gloo group left alive can abort the process at exit, after a run that succeeded
        destroy_leftover_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
