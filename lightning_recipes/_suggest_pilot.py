"""``lightning-recipes suggest --pilot``: settle the call by training, not by the probe.

Each competing scenario (the probe's choice and its runner-up, or the scenarios given) runs a short
pilot: its printed command, as ``lightning run`` runs it (:class:`PilotCLI`), on a class-balanced
subset of the training data (:data:`PILOT_TRAIN` examples) validated on a class-balanced subset of the
validation data (the user's own, else held-out training examples; :data:`PILOT_VAL`), for the same
budget of optimizer steps (at most the full run's: a recipe whose whole run is shorter gets its whole
run) or minutes. The pilots' validation metric (the recipe's ``ModelCheckpoint``
monitor, after the last step) is printed side by side with the measured time per step and the
estimated time of the full run (seconds per step x the full run's steps), and the best metric picks
the scenario. An as-is recipe is validated as built (no steps).

A pilot changes only what makes it a pilot: the data (the subsets), the stages (fit, then validate),
the steps (``max_steps`` or ``max_time``, ``max_epochs: -1``), the run folder and logger folders (a
temporary folder), no LR finder (its sweep alone would spend the budget), and for images with
``FreezeUnfreeze`` the frozen backbone's feature cache with augmentation off, so that frozen epochs
cost a head's step. Text encoders keep their dropout, which the cache cannot serve: their frozen
epochs run uncached.
"""

from __future__ import annotations

import math
import re
import shlex
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lightning_recipes._suggest_command import CommandInputs
from lightning_recipes.recipe_cli import LightningRecipesCLI

__all__ = ["PILOT_TRAIN", "PILOT_VAL", "Budget", "PilotCLI", "PilotResult", "pick", "pilot", "run_pilot"]

#: Class-balanced training examples of each pilot (at most).
PILOT_TRAIN = 256
#: Class-balanced validation examples of each pilot (at most).
PILOT_VAL = 128


@dataclass(frozen=True)
class Budget:
    """The budget of each pilot: ``steps`` optimizer steps, or ``minutes`` of training.

    Example::

        >>> Budget.parse("50"), Budget.parse("1.5m")
        (Budget(steps=50, minutes=None), Budget(steps=None, minutes=1.5))
    """

    steps: int | None = None
    minutes: float | None = None

    @classmethod
    def parse(cls, text: str) -> Budget:
        """``N`` steps, or ``Xm``/``Xmin`` minutes; a one-line error otherwise."""
        found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(m|min)?\s*", text)
        if found is None or float(found[1]) <= 0 or (found[2] is None and not found[1].isdigit()):
            raise ValueError(f"--pilot-budget {text!r}: give steps (50) or minutes (2m, 1.5min), above 0")
        return cls(minutes=float(found[1])) if found[2] else cls(steps=int(found[1]))

    def trainer_args(self) -> dict[str, Any]:
        """The Trainer's limits for a pilot (steps or time; epochs unbounded)."""
        if self.steps is not None:
            return {"max_steps": self.steps, "max_epochs": -1}
        seconds = round(self.minutes * 60)
        return {"max_time": {"seconds": seconds}, "max_epochs": -1, "max_steps": 10_000}

    def __str__(self) -> str:
        return f"{self.steps} steps" if self.steps is not None else f"{self.minutes:g} min"


class _StepTimes(Callback):
    """The wall time of each training step (batch fetch excluded)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._started = 0.0

    @override
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._started = time.perf_counter()

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.seconds.append(time.perf_counter() - self._started)


class PilotCLI(LightningRecipesCLI):
    """:class:`LightningRecipesCLI` for one pilot: its folder, its budget, fit only, no LR finder, the
    feature cache for images' frozen epochs, and a step timer (module docstring).

    Args:
        folder: the pilot's run folder (``default_root_dir`` and every logger's ``save_dir``).
        budget: the pilot's :class:`Budget`.
        *args, **kwargs: as :class:`LightningRecipesCLI` (``recipe_mode=True``).
    """

    def __init__(self, *args: Any, folder: Path, budget: Budget, **kwargs: Any) -> None:
        self.folder, self.budget, self.timer = folder, budget, _StepTimes()
        super().__init__(*args, **kwargs)

    @override
    def before_instantiate_classes(self) -> None:
        config = self.config
        trainer = config.trainer
        config.stages = ["fit"] if "fit" in config.stages else []
        for key, value in self.budget.trainer_args().items():
            trainer[key] = value
        trainer.default_root_dir = str(self.folder)
        loggers = trainer.get("logger")
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            if getattr(logger, "init_args", None) is not None and "save_dir" in logger.init_args:
                logger.init_args.save_dir = str(self.folder)
        callbacks = [c for c in trainer.get("callbacks") or [] if not str(c.class_path).endswith("LRFinder")]
        trainer.callbacks = callbacks
        image = str(config.model.class_path).endswith("ImageClassifier")
        for callback in callbacks:
            if image and str(callback.class_path).endswith("FreezeUnfreeze"):
                callback.init_args.cache_features = True
                config.data.init_args.augment = False  # one view per example: the cache serves it
        if config.data.init_args.get("tokenizer_dir"):
            config.data.init_args.tokenizer_dir = str(self.folder / "tokenizer")
        super().before_instantiate_classes()

    @override
    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks.append(self.timer)
        return trainer


@dataclass(frozen=True)
class PilotResult:
    """One pilot's outcome.

    Attributes:
        scenario, recipe: what ran.
        monitor, mode: the recipe's monitored metric and whether higher (``max``) or lower is better.
        value: the metric on the pilot's validation examples after the last step.
        steps: optimizer steps the pilot took.
        seconds_per_step: mean wall time of its training steps.
        seconds: the pilot's wall time.
        full_steps: optimizer steps of the full run the printed command starts (estimated).
    """

    scenario: str
    recipe: str
    monitor: str
    mode: str
    value: float
    steps: int
    seconds_per_step: float
    seconds: float
    full_steps: int

    @property
    def full_seconds(self) -> float:
        """Estimated wall time of the full run's training steps."""
        return self.seconds_per_step * self.full_steps


def _monitor(config: Any) -> tuple[str, str]:
    for callback in config.trainer.get("callbacks") or []:
        if str(callback.class_path).endswith("ModelCheckpoint") and callback.init_args.get("monitor"):
            return callback.init_args.monitor, callback.init_args.get("mode") or "min"
    return "val/acc", "max"


def full_steps(config: Any, train_examples: int, carved: bool) -> int:
    """Optimizer steps of a full run of a parsed recipe on ``train_examples`` training examples, less
    the recipe's ``val_fraction``/``test_fraction`` where ``carved`` (no validation file or folder)."""
    trainer, data = config.trainer, config.data.init_args
    if (trainer.get("max_steps") or -1) > 0:
        return int(trainer.max_steps)
    held_out = (data.get("val_fraction") or 0.0) + (data.get("test_fraction") or 0.0) if carved else 0.0
    examples = train_examples * (1.0 - held_out)
    if data.get("train_size"):
        examples = min(examples, data.train_size)
    batch = (data.get("batch_size") or 1) * (trainer.get("accumulate_grad_batches") or 1)
    return math.ceil(examples / batch) * (trainer.get("max_epochs") or 1)


def run_pilot(
    scenario: str,
    full: CommandInputs,
    subset: CommandInputs,
    train_examples: int,
    budget: Budget,
    folder: Path,
) -> PilotResult:
    """Run ``scenario``'s command on the pilot ``subset`` within ``budget`` in ``folder``; see the module.
    A recipe without a fit stage (as-is) is tested as built on the same examples (``test/`` metrics)."""
    from lightning_recipes.loggers.wandb import finish_runs
    from lightning_recipes.tune.trial import _quiet_seed, parse_recipe

    recipe, command = full.command(scenario)
    full_config = parse_recipe(recipe.path, shlex.split(command)[3:]).config
    carved = full.details.get("layout") == "class folders" or (full.family == "text" and not full.val_file)
    steps = full_steps(full_config, train_examples, carved) if "fit" in full_config.stages else 0
    if "fit" not in full_config.stages:  # as-is: tested on the pilots' validation examples
        subset = replace(subset, test_file=subset.val_file)
    elif budget.steps:  # never longer than the run it stands for: a pilot ranks the runs users start
        budget = replace(budget, steps=min(budget.steps, max(steps, 1)))
    _, pilot_command = subset.command(scenario)
    started = time.perf_counter()
    with _quiet_seed():
        cli = PilotCLI(
            args=["--config", str(recipe.path), *shlex.split(pilot_command)[3:]],
            run=False, recipe_mode=True, folder=folder / scenario, budget=budget,
        )  # fmt: skip
    trains = "fit" in cli.config.stages
    try:
        cli.run_stages()
        evaluate = cli.trainer.validate if trains else cli.trainer.test
        metrics = evaluate(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    finally:
        finish_runs(cli.trainer)
    monitor, mode = _monitor(cli.config)
    key = monitor if trains else monitor.replace("val/", "test/", 1)
    if key not in metrics:
        raise ValueError(f"pilot of {scenario}: its recipe monitors {key!r}, not logged ({sorted(metrics)})")
    times = cli.timer.seconds
    return PilotResult(
        scenario, recipe.name, monitor, mode, float(metrics[key]), len(times),
        float(np.mean(times)) if times else 0.0, time.perf_counter() - started, steps,
    )  # fmt: skip


def pick(results: list[PilotResult]) -> PilotResult:
    """The pilot with the best metric; on a tie, the earlier one (the probe's choice comes first).

    Example::

        >>> a = PilotResult("scratch", "r1", "val/acc", "max", 0.61, 50, 0.2, 10.0, 126)
        >>> pick([a, replace(a, scenario="fine-tune", value=0.80)]).scenario
        'fine-tune'
    """
    sign = 1.0 if results[0].mode == "max" else -1.0
    return max(results, key=lambda r: (sign * r.value, -results.index(r)))


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _subset(full: CommandInputs, folder: Path, seed: int) -> tuple[CommandInputs, int, int, int]:
    """The pilot's data (written under ``folder``) as command inputs, and the numbers of training examples
    of the full data and of the pilot's training and validation subsets."""
    from lightning_recipes._suggest_data import balanced_subsample

    def split(targets: np.ndarray, val: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        if val is not None:
            return balanced_subsample(targets, PILOT_TRAIN, seed), balanced_subsample(val, PILOT_VAL, seed)
        # Held out from the training data: PILOT_VAL examples, or a fifth of a small data set.
        held = balanced_subsample(targets, min(PILOT_VAL, len(targets) // 5), seed)
        rest = np.setdiff1d(np.arange(len(targets)), held)
        return rest[balanced_subsample(targets[rest], PILOT_TRAIN, seed)], held

    folder.mkdir(parents=True, exist_ok=True)
    if full.family == "image":
        from lightning_recipes.data.image import ImageDataModule

        dm = ImageDataModule(root=full.data, val_fraction=0.0, seed=seed, num_workers=0)
        rows = dm._rows()  # noqa: SLF001 (the data module's own split reading, as _suggest_data)
        if rows["train"] is None:
            raise ValueError(
                f"--pilot trains: {full.data} has no training images (a train/ or class folders)"
            )
        names = sorted({labels[0] for _, labels in rows["train"]})
        targets = {s: np.array([names.index(x[0]) for _, x in rows[s]]) for s in ("train", "val") if rows[s]}
        train, val = split(targets["train"], targets.get("val"))
        val_source = "val" if "val" in targets else "train"
        for name, source, picked in (("train", "train", train), ("val", val_source, val)):
            for i in picked:
                path, labels = rows[source][i]
                link = folder / name / labels[0] / f"{i}_{path.name}"
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(Path(path).resolve())
        (folder / "test").symlink_to(folder / "val")  # an as-is pilot tests on the validation examples
        details = {**full.details, "layout": "train/val/test folders"}
        subset = replace(full, data=str(folder), details=details)
        return subset, len(targets["train"]), len(train), len(val)
    from lightning_recipes.cache import default_cache_dir
    from lightning_recipes.data._labels import LabelEncoder
    from lightning_recipes.data._text_files import load_split_file

    text, label = full.details["text_column"], full.details["label_column"]
    how = full.details.get("file_options", {})
    cache = str(default_cache_dir() / "datasets")
    sets = {"train": load_split_file(full.data, "train", cache, **how)}
    if full.val_file:
        sets["val"] = load_split_file(full.val_file, "validation", cache, **how)
    encoder = LabelEncoder(label, "multiclass").fit(sets["train"])
    targets = {s: np.array(encoder.encode(ds[label])) for s, ds in sets.items()}
    train, val = split(targets["train"], targets.get("val"))
    for name, picked in (("train", train), ("val", val)):
        source = sets["val" if name == "val" and "val" in sets else "train"]
        source.select(picked).select_columns([text, label]).to_csv(str(folder / f"{name}.csv"), index=False)
    details = {k: v for k, v in full.details.items() if k != "file_options"}  # written as plain csv
    files = {"data": str(folder / "train.csv"), "val_file": str(folder / "val.csv")}
    subset = replace(full, details=details, test_file=None, **files)
    return subset, len(targets["train"]), len(train), len(val)


def pilot(
    inputs: CommandInputs, scenarios: list[str], budget: Budget, seed: int = 0
) -> tuple[list[str], str]:
    """Run the pilots of ``scenarios`` (each with a shipped recipe); return the report's lines and the
    picked scenario's command."""
    missing = [s for s in scenarios if inputs.command(s) is None]
    if missing:
        raise ValueError(f"--pilot: no shipped {inputs.family} recipe for {missing}: pilot other scenarios")
    with tempfile.TemporaryDirectory(prefix="suggest_pilot_") as tmp:
        subset, examples, n_train, n_val = _subset(inputs, Path(tmp) / "data", seed)
        results = [run_pilot(s, inputs, subset, examples, budget, Path(tmp)) for s in scenarios]
    best = pick(results)
    head = f"  {'scenario':<12} {results[0].monitor:>8}  {'steps':>5}  {'s/step':>7}  {'pilot':>7}  "
    lines = [
        f"Pilot:      {len(results)} scenario(s) on {n_train} training / {n_val} validation examples "
        f"(class-balanced), {budget} each",
        head + "full run (estimated)",
    ]
    for r in results:
        cost = f"{r.full_steps} steps x {r.seconds_per_step:.3f} s = {_duration(r.full_seconds)}"
        lines.append(
            f"  {r.scenario:<12} {r.value:>8.3f}  {r.steps:>5}  {r.seconds_per_step:>7.3f}  "
            f"{_duration(r.seconds):>7}  {cost if r.full_steps else 'no training'}"
        )
    others = "".join(f", {r.value:.3f} for {r.scenario}" for r in results if r is not best)
    lines.append(f"Picked:     {best.scenario}, by the pilots' {best.monitor} ({best.value:.3f}{others})")
    recipe, command = inputs.command(best.scenario)
    return [*lines, f"Recipe:     {recipe.name}", f"Run:        {command}"], best.scenario
