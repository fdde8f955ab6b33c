"""``lightning-recipes tune``: hyperparameter search over a recipe's options with optuna.

::

    lightning-recipes tune RECIPE.yaml --space model.init_args.lr=loguniform:1e-5:1e-3 \\
        [--space KEY=DIST ...] [--space-file SPACE.yaml] [--trials 20] [--timeout S] \\
        [--study-name NAME] [--storage sqlite:///...] [--direction maximize|minimize] [--no-pruning] \\
        [--trainer.max_epochs=5 ...]   (any other argument overrides the recipe, as in `lightning run`)

Each trial fits the recipe with its values in a run directory of its own under the study folder
(``<default_root_dir>/tune/<study name>/trial_<N>/``), reporting the recipe's monitored metric to optuna
after each validation; optuna's ``MedianPruner`` stops trials that fall behind. At the end the best
trial is written as a complete recipe, ``best.yaml``, that ``lightning run best.yaml`` runs unchanged
(with the recipe's own stages: the search itself never tests). docs/tune.md.
"""

from __future__ import annotations

import argparse
import sys

from lightning_recipes.tune.pruning import TrialPruning
from lightning_recipes.tune.space import Dimension, SearchSpaceError, parse_dimension, read_space_file
from lightning_recipes.tune.study import plan_study, tune, write_best
from lightning_recipes.tune.trial import NotOneDevice, StudyStopped, TrialPlan

__all__ = [
    "Dimension",
    "NotOneDevice",
    "SearchSpaceError",
    "StudyStopped",
    "TrialPlan",
    "TrialPruning",
    "main",
    "parse_dimension",
    "plan_study",
    "read_space_file",
    "tune",
    "write_best",
]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-recipes tune",
        description="Search a recipe's options with optuna; each trial a run directory of its own, the best "
        "written as best.yaml (docs/tune.md). Other --KEY=VALUE arguments override the recipe.",
        allow_abbrev=False,
    )
    parser.add_argument("recipe", help="a recipe YAML file, or a shipped recipe's name")
    parser.add_argument(
        "--space",
        action="append",
        default=[],
        metavar="KEY=DIST",
        help="a recipe option and its distribution: loguniform:LOW:HIGH, uniform:LOW:HIGH, int:LOW:HIGH, "
        "choice:A,B,C (repeat for more options)",
    )
    parser.add_argument("--space-file", help="a YAML mapping of recipe options to distributions")
    parser.add_argument("--trials", type=int, default=20, help="trials to run now (default 20)")
    parser.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    parser.add_argument("--study-name", help="default: the recipe's file name; the same name resumes")
    parser.add_argument("--storage", help="optuna storage URL (default: sqlite study.db in the study folder)")
    parser.add_argument("--direction", choices=("maximize", "minimize"), help="default: the monitor's mode")
    parser.add_argument("--no-pruning", action="store_true", help="run every trial to the end")
    return parser


def _summary(plan: TrialPlan, study) -> list[str]:
    import optuna

    states = [t.state for t in study.trials]
    counts = ", ".join(f"{states.count(s)} {s.name.lower()}" for s in optuna.trial.TrialState if s in states)
    lines = [f"\nStudy {plan.study_name}: {len(states)} trials ({counts}); folder {plan.study_dir}"]
    best = write_best(plan, study)
    if best is None:
        return [*lines, "No trial completed: no best.yaml (each failed trial's error is above)"]
    trial = study.best_trial
    return [
        *lines,
        f"Best trial:  {trial.number}: {plan.monitor}={trial.value:.6g}, "
        + ", ".join(f"{k}={v}" for k, v in trial.params.items()),
        f"Run dir:     {trial.user_attrs.get('run_dir')}",
        f"Best recipe: {best}   (lightning run {best})",
    ]


def main(argv: list[str]) -> int:
    """``lightning-recipes tune RECIPE ...``; returns the exit code: 0 when a trial completed, 1 when none
    did or the input is refused, 2 for a usage error, 130/143 when SIGINT/SIGTERM stopped the study."""
    parser = _parser()
    args, overrides = parser.parse_known_args(argv)
    loose = [a for a in overrides if a.startswith("-") and not a.startswith("--")]
    if loose:
        parser.error(f"unrecognized arguments: {' '.join(loose)}")
    if args.trials < 1:
        parser.error(f"--trials must be at least 1, got {args.trials}")
    space = [parse_dimension(text) for text in args.space]
    if args.space_file:
        space += read_space_file(args.space_file)
    plan = plan_study(args.recipe, space, overrides, args.study_name, prune=not args.no_pruning)
    try:
        study = tune(plan, args.trials, args.timeout, args.storage, args.direction)
    except StudyStopped as stop:
        print(
            f"Stopped by {stop.signum.name}; the study keeps its trials (the last one failed): run the "
            "same command again to go on",
            file=sys.stderr,
        )
        return 128 + stop.signum
    lines = _summary(plan, study)
    print("\n".join(lines), flush=True)
    return 0 if study.best_trials else 1
