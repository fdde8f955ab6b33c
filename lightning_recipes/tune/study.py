"""``lightning-recipes tune RECIPE``: an optuna study over a recipe's options, ``best.yaml`` at the end.

Everything that can be checked before training is checked first, in one parse of the recipe per value
(:func:`plan_study`): every searched key is an option of the recipe, the ends of every range and every
choice are values the recipe accepts, the recipe fits and monitors a metric, and no callback writes to a
fixed folder that the trials would share. The study lives in an optuna storage (default
``<default_root_dir>/tune/<study name>/study.db``, SQLite): the same command again adds trials to the
same study. Each trial is fitted in ``trial_<N>/`` (:func:`~lightning_recipes.tune.trial.run_trial`); a
trial that fails (an exception, NaN) is recorded as failed and the study goes on.
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_recipes.recipe_cli import short_error
from lightning_recipes.recipes import resolve_recipe
from lightning_recipes.tune.space import Dimension, SearchSpaceError, check_keys
from lightning_recipes.tune.trial import NotOneDevice, TrialPlan, override_args, parse_recipe, run_trial

__all__ = ["DIRECTIONS", "best_recipe", "monitored_metric", "open_study", "plan_study", "tune", "write_best"]

#: ``--direction`` for a monitor's ``mode``.
DIRECTIONS = {"max": "maximize", "min": "minimize"}
#: Callbacks whose monitor is the study's metric, in order of preference.
_MONITORS = ("lightning.pytorch.callbacks.ModelCheckpoint", "lightning.pytorch.callbacks.EarlyStopping")


def _class(class_path: str) -> type | None:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def _callbacks(config: Any) -> list[tuple[type, Any]]:
    """``(class, init_args)`` of each ``class_path`` callback of a parsed recipe."""
    found = []
    for entry in config.trainer.get("callbacks") or []:
        cls = _class(str(getattr(entry, "class_path", "")))
        if cls is not None:
            found.append((cls, getattr(entry, "init_args", None) or {}))
    return found


def monitored_metric(config: Any) -> tuple[str, str]:
    """``(monitor, mode)`` of the recipe's ``ModelCheckpoint`` (else its ``EarlyStopping``)."""
    callbacks = _callbacks(config)
    for base in map(_class, _MONITORS):
        for cls, init_args in callbacks:
            if issubclass(cls, base) and init_args.get("monitor"):
                return str(init_args["monitor"]), str(init_args.get("mode") or "min")
    raise SearchSpaceError(
        "the recipe monitors no metric: tune optimizes the monitor of its ModelCheckpoint (or "
        "EarlyStopping); add one to trainer.callbacks, e.g. ModelCheckpoint with monitor: val/acc, mode: max"
    )


def _several(devices: Any) -> bool:
    """Whether a parsed ``trainer.devices`` (``2``, ``"2"``, ``"0,1"``, ``[0, 1]``, ``-1``) is several."""
    if isinstance(devices, str):
        text = devices.strip()
        if "," in text:
            return len([p for p in text.split(",") if p.strip()]) > 1
        devices = int(text) if text.lstrip("-").isdigit() else 1
    if isinstance(devices, (list, tuple)):
        return len(devices) > 1
    return isinstance(devices, int) and (devices > 1 or devices == -1)


def _refuse_shared_runs(config: Any) -> None:
    """Refuse what trials would share: a callback's fixed output folder, several devices (DDP launches
    processes that would each run the study)."""
    for cls, init_args in _callbacks(config):
        for key in ("dirpath", "output_dir"):
            if init_args.get(key):
                raise SearchSpaceError(
                    f"trainer.callbacks {cls.__name__} sets {key}={init_args[key]}: every trial would write "
                    f"there; remove {key} (each trial's run directory gets its own files)"
                )
    trainer = config.trainer
    devices, nodes = trainer.get("devices"), trainer.get("num_nodes") or 1
    if _several(devices) or nodes > 1:
        raise SearchSpaceError(
            f"trainer.devices={devices}, trainer.num_nodes={nodes}: tune runs each trial in one process on "
            "one device; pass --trainer.devices=1 --trainer.num_nodes=1"
        )


def plan_study(
    recipe: str | os.PathLike,
    space: Sequence[Dimension],
    overrides: Sequence[str] = (),
    study_name: str | None = None,
    prune: bool = True,
) -> TrialPlan:
    """Check everything about a study that can be checked without training, and return its :class:`TrialPlan`.

    Raises:
        SearchSpaceError: no dimension, an option the recipe does not have, a value it refuses, no
            ``fit`` stage, no monitored metric, a fixed output folder, several devices.
    """
    path = resolve_recipe(str(recipe))
    if not space:
        raise SearchSpaceError("nothing to search: give --space KEY=DIST (or --space-file SPACE.yaml)")
    config = parse_recipe(path, overrides).config
    check_keys(space, config.keys())
    for dim in space:
        for value in dim.extremes():
            try:
                parse_recipe(path, [*overrides, *override_args({dim.key: value})])
            except Exception as exc:
                first = short_error(exc).splitlines()[0]
                raise SearchSpaceError(
                    f"{dim.key}={value} ({dim.describe()}): the recipe refuses it: {first}"
                ) from None
    if "fit" not in config.stages:
        raise SearchSpaceError(f"stages={config.stages}: tune fits each trial; the recipe needs a fit stage")
    monitor, mode = monitored_metric(config)
    _refuse_shared_runs(config)
    name = study_name or path.stem
    root = Path(config.trainer.get("default_root_dir") or ".")
    seed = config.get("seed_everything")
    seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else None
    return TrialPlan(
        path, tuple(overrides), tuple(space), monitor, mode, name, root / "tune" / name, prune, seed
    )


def open_study(plan: TrialPlan, storage: str | None = None, direction: str | None = None):
    """Create the plan's optuna study, or load it from ``storage`` (the same command again goes on with it).

    The default storage is ``study.db`` (SQLite) in the study folder. Trials left running by a process
    that died are marked failed at the next trial's start (optuna's heartbeat). A loaded study must have
    been made for the same space, metric and direction. The sampler (TPE) is seeded with the recipe's
    seed plus the number of trials so far, so a resumed study draws new values.
    """
    import optuna

    plan.study_dir.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{(plan.study_dir / 'study.db').resolve()}"
    with warnings.catch_warnings():  # optuna calls the heartbeat experimental (a warning each run)
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        rdb = optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180)
    direction = direction or DIRECTIONS[plan.mode]
    pruner = optuna.pruners.MedianPruner() if plan.prune else optuna.pruners.NopPruner()
    study = optuna.create_study(
        storage=rdb, study_name=plan.study_name, direction=direction, pruner=pruner, load_if_exists=True
    )
    made_for = {
        "space": {dim.key: dim.describe() for dim in plan.space},
        "monitor": plan.monitor,
        "direction": direction,
    }
    if not study.user_attrs:
        for key, value in made_for.items():
            study.set_user_attr(key, value)
    for key, value in made_for.items():
        if study.user_attrs.get(key) != value:
            raise SearchSpaceError(
                f"study {plan.study_name!r} in {url} was made with {key}={study.user_attrs.get(key)}, not "
                f"{value}; pass another --study-name for a new study"
            )
    seed = None if plan.seed is None else plan.seed + len(study.trials)
    study.sampler = optuna.samplers.TPESampler(seed=seed)
    return study


def best_recipe(plan: TrialPlan, study: Any) -> str:
    """The recipe with the best trial's values, complete (every option resolved, as ``--print_config``),
    under the recipe's own header and a line naming the study, the trial and its value."""
    best = study.best_trial
    cli = parse_recipe(plan.recipe, [*plan.overrides, *override_args(best.params)])
    header = []
    for line in plan.recipe.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    values = ", ".join(f"{k}={v}" for k, v in best.params.items())
    header.append(
        f"# Tuned: study {plan.study_name}, trial {best.number} of {len(study.trials)}: "
        f"{plan.monitor}={best.value:.6g} ({study.direction.name.lower()}); {values}"
    )
    return "\n".join(header) + "\n" + cli.parser.dump(cli.config, skip_none=False)


def write_best(plan: TrialPlan, study: Any) -> Path | None:
    """Write :func:`best_recipe` to ``best.yaml`` in the study folder (``None``: no trial completed)."""
    import optuna

    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        return None
    path = plan.study_dir / "best.yaml"
    path.write_text(best_recipe(plan, study))
    return path


def tune(
    plan: TrialPlan,
    trials: int | None = None,
    timeout: float | None = None,
    storage: str | None = None,
    direction: str | None = None,
) -> Any:
    """Run ``trials`` more trials (or until ``timeout`` seconds) of the plan's study; return the study.

    Failed trials are recorded and the study goes on, except a Trainer on several devices
    (:class:`~lightning_recipes.tune.trial.NotOneDevice`, raised after the study stops); SIGINT/SIGTERM
    during a trial raise
    :class:`~lightning_recipes.tune.trial.StudyStopped` after optuna has recorded the trial as failed.
    """
    study = open_study(plan, storage, direction)
    fatal: list[NotOneDevice] = []

    def objective(trial: Any) -> float:
        try:
            return run_trial(trial, plan)
        except NotOneDevice as exc:  # every trial would fail alike: this one fails, and the study stops
            fatal.append(exc)
            trial.study.stop()
            raise

    study.optimize(
        objective,
        n_trials=trials,
        timeout=timeout,
        catch=(Exception,),
        gc_after_trial=True,
    )
    if fatal:
        raise fatal[0]
    return study
