"""The ``lightning`` / ``lightning-recipes`` command: ``run RECIPE.yaml``, ``list`` and the other commands.

The LightningCLI class they run recipes with is :class:`~lightning_recipes.recipe_cli.LightningRecipesCLI`.

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
(:mod:`lightning_recipes.zoo`); ``lightning-recipes tune RECIPE --space KEY=DIST`` searches its options
with optuna (:mod:`lightning_recipes.tune`). ``lightning`` hands command lines that are not ours to
Lightning's own CLI (:mod:`lightning_recipes.lightning_command`). Errors print one short message; set
``LIGHTNING_RECIPES_DEBUG=1`` for the full traceback.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities.exceptions import SIGTERMException

from lightning_recipes import zoo
from lightning_recipes._process_group import destroy_leftover_process_group
from lightning_recipes.cluster import quiet_dependency_noise
from lightning_recipes.lightning_command import SUBCOMMANDS, dispatch, other_commands_help
from lightning_recipes.loggers.wandb import finish_runs
from lightning_recipes.recipe_cli import LightningRecipesCLI, short_error
from lightning_recipes.recipes import format_list, format_matrix, list_recipes, resolve_recipe
from lightning_recipes.run_record import document_run
from lightning_recipes.runs import stopping_signal

USAGE = """usage:
  lightning run RECIPE.yaml [--trainer.max_epochs=3 --model.init_args.lr=1e-4 ...]   (lightning run --help)
  lightning-recipes fit|validate|test|predict --config RECIPE.yaml [overrides]
  lightning-recipes predict --config RUN_DIR/config.yaml --model EXPORT_DIR   (predict from an hf/timm export)
  lightning-recipes list [--matrix]   (name, family, scenario, offline; --matrix: family x scenario)
  lightning-recipes suggest --data PATH --backbone NAME [--family image|text]   (which scenario fits)
  lightning-recipes zoo list | zoo build NAME [NAME...] [--source DIR]   (offline-pretrained weights)
  lightning-recipes tune RECIPE --space KEY=DIST [...] [--trials N]   (optuna search; docs/tune.md)
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
    if summary.get("test_predictions"):
        print(f"Test predictions: {summary['test_predictions']}")
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
        elif command == "tune":
            from lightning_recipes import tune

            return tune.main(argv[1:])
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
