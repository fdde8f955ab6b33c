"""One trial of a study: the recipe with the trial's values, fitted in a run directory of the trial's own.

A trial is ``lightning run RECIPE [overrides] --KEY=VALUE ...`` (the same :class:`LightningRecipesCLI`,
the same callbacks, crash checkpoint and NaN guard) with three changes, made in :class:`TrialCLI`:
``trainer.default_root_dir`` and every logger's ``save_dir`` are ``<study folder>/trial_<N>``, a W&B
logger's run joins the study's group (``group=<study name>``, ``name=<study name>-trial-<N>``), and
only the ``fit`` stage runs, with :class:`~lightning_recipes.tune.pruning.TrialPruning` reporting the
monitored metric. The test set is not touched by the search: ``best.yaml`` keeps the recipe's stages.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from typing_extensions import override

from lightning_recipes.loggers.wandb import finish_runs
from lightning_recipes.recipe_cli import LightningRecipesCLI
from lightning_recipes.runs import stopping_signal
from lightning_recipes.tune.pruning import TrialPruning
from lightning_recipes.tune.space import Dimension

__all__ = [
    "NotOneDevice",
    "RecipeConfig",
    "StudyStopped",
    "TrialCLI",
    "TrialPlan",
    "override_args",
    "parse_recipe",
    "run_trial",
]


class StudyStopped(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped a trial: optuna records the trial as failed and stops the study
    (a ``KeyboardInterrupt``, which ``study.optimize`` never catches); ``signum`` says which."""

    def __init__(self, signum: signal.Signals) -> None:
        super().__init__(f"stopped by {signum.name}")
        self.signum = signum


class NotOneDevice(ValueError):
    """A trial's Trainer runs on several devices (``devices: auto`` on a machine with several GPUs)."""


class RecipeConfig(LightningRecipesCLI):
    """The recipe parsed and checked as ``lightning run`` parses it (``self.config``); nothing is built."""

    @override
    def before_instantiate_classes(self) -> None:
        pass

    @override
    def instantiate_classes(self) -> None:
        pass


@contextmanager
def _quiet_seed() -> Iterator[None]:
    """Parsing sets the recipe's seed, and Lightning logs "Seed set to N" each time: not worth a line."""
    seed_logger = logging.getLogger("lightning.fabric.utilities.seed")
    level = seed_logger.level
    seed_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        seed_logger.setLevel(level)


def parse_recipe(recipe: str | os.PathLike, args: Sequence[str] = ()) -> RecipeConfig:
    """Parse ``recipe`` with ``args`` (``--KEY=VALUE`` overrides) as ``lightning run`` does; build nothing."""
    with _quiet_seed():
        return RecipeConfig(args=["--config", str(recipe), *args], run=False, recipe_mode=True)


def override_args(values: dict[str, Any]) -> list[str]:
    """``--KEY=VALUE`` arguments for ``values``, each value written as JSON (which YAML reads back as is).

    Example::

        >>> override_args({"model.init_args.lr": 0.001, "model.init_args.optimizer_name": "sgd"})
        ['--model.init_args.lr=0.001', '--model.init_args.optimizer_name="sgd"']
    """
    import json

    return [f"--{key}={json.dumps(value)}" for key, value in values.items()]


@dataclass(frozen=True)
class TrialPlan:
    """What every trial of a study shares.

    Attributes:
        recipe: the recipe file.
        overrides: the user's ``--KEY=VALUE`` overrides, before the trial's values.
        space: the dimensions searched.
        monitor: the metric reported to optuna (the recipe's ``ModelCheckpoint`` monitor).
        mode: ``"max"`` or ``"min"``: which reported value is the trial's value.
        study_name: the study (also the W&B group).
        study_dir: the folder holding ``trial_<N>/`` and ``best.yaml``.
        prune: whether optuna's pruner may stop trials.
        seed: the recipe's ``seed_everything`` (an integer), which seeds the sampler; ``None``: unseeded.
    """

    recipe: Path
    overrides: tuple[str, ...]
    space: tuple[Dimension, ...]
    monitor: str
    mode: str
    study_name: str
    study_dir: Path
    prune: bool = True
    seed: int | None = None

    def trial_dir(self, number: int) -> Path:
        """Trial ``number``'s folder; optuna numbers a study's trials once, resumed or not."""
        return self.study_dir / f"trial_{number}"


def _loggers(logger: Any) -> list[Any]:
    """The ``class_path`` entries of a parsed ``trainer.logger`` (one, a list, or ``False``/``None``)."""
    entries = logger if isinstance(logger, list) else [logger]
    return [
        e for e in entries if getattr(e, "class_path", None) and getattr(e, "init_args", None) is not None
    ]


class TrialCLI(LightningRecipesCLI):
    """:class:`LightningRecipesCLI` for one trial: its folder, its W&B group and name, fit only, and the
    pruning callback (module docstring).

    Args:
        folder: the trial's folder (``default_root_dir`` and every logger's ``save_dir``).
        group: the W&B group (the study's name).
        run_name: the W&B run's name.
        pruning: the trial's :class:`TrialPruning` callback, added to the Trainer.
        *args, **kwargs: as :class:`LightningRecipesCLI` (``recipe_mode=True``).
    """

    def __init__(
        self, *args: Any, folder: Path, group: str, run_name: str, pruning: TrialPruning, **kwargs: Any
    ) -> None:
        self.folder, self.group, self.run_name, self.pruning = folder, group, run_name, pruning
        super().__init__(*args, **kwargs)

    @override
    def before_instantiate_classes(self) -> None:
        config = self.config
        config.stages = ["fit"]
        config.trainer.default_root_dir = str(self.folder)
        for logger in _loggers(config.trainer.get("logger")):
            init_args = logger.init_args
            if "save_dir" in init_args:
                init_args.save_dir = str(self.folder)
            if str(logger.class_path).endswith("WandbLogger"):
                init_args.group, init_args.name = self.group, self.run_name
        super().before_instantiate_classes()

    @override
    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if trainer.world_size > 1:
            raise NotOneDevice(
                f"tune runs each trial in one process on one device; this recipe's Trainer has "
                f"{trainer.world_size} processes: pass --trainer.devices=1 --trainer.num_nodes=1"
            )
        trainer.callbacks.append(self.pruning)
        return trainer


def run_trial(trial: Any, plan: TrialPlan) -> float:
    """Draw ``trial``'s values, fit the recipe with them in ``trial_<N>/``, and return the best finite
    value of the monitored metric; ``optuna.TrialPruned`` when the pruner stopped it, :class:`StudyStopped`
    on SIGINT/SIGTERM. The run directory is kept as the trial's ``run_dir`` user attribute."""
    import optuna

    values = {dim.key: dim.suggest(trial) for dim in plan.space}
    pruning = TrialPruning(trial, plan.monitor, plan.mode, prune=plan.prune)
    folder = plan.trial_dir(trial.number)
    print(f"\nTrial {trial.number}: " + ", ".join(f"{k}={v}" for k, v in values.items()), flush=True)
    args = ["--config", str(plan.recipe), *plan.overrides, *override_args(values)]
    try:
        with _quiet_seed():
            cli = TrialCLI(
                args=args,
                run=False,
                recipe_mode=True,
                folder=folder,
                group=plan.study_name,
                run_name=f"{plan.study_name}-trial-{trial.number}",
                pruning=pruning,
            )
        try:
            summary = cli.run_stages()
        finally:
            finish_runs(cli.trainer)
        trial.set_user_attr("run_dir", str(summary["run_dir"]))
    except SystemExit as exc:  # Lightning ends a fit stopped by Ctrl-C/SIGTERM with SystemExit
        signum = stopping_signal(exc)
        if signum is None:
            raise RuntimeError(f"the trial exited with {exc.code!r}") from exc
        raise StudyStopped(signum) from exc
    if pruning.pruned is not None:
        raise optuna.TrialPruned(f"{plan.monitor} at validation {pruning.pruned}: {pruning.values[-1]:.4g}")
    best = pruning.best
    if best is None:
        raise RuntimeError(f"{plan.monitor} had no finite value in this trial ({pruning.values})")
    return best
