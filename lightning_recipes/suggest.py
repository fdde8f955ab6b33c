"""``lightning-recipes suggest``: measure a data set against a backbone, name the scenario and its recipe.

The classic strategy table, measured instead of asked (thresholds below, ``docs/suggest.md``):

=====================  ===========================  ==================================
                       similar to the pretraining   different from the pretraining
=====================  ===========================  ==================================
small data set         fine-tune                    add-layers (new head, then unfreeze)
large data set         fine-tune                    scratch
=====================  ===========================  ==================================

and ``as-is`` when the data's class names are the backbone's pretrained labels and its classifier already
scores them well; ``distill`` for a smaller, faster model (``--smaller``): the backbone teaches a student.
"Similar" is measured: a linear probe (ridge classifier, cross-validated) on frozen features of the
pretrained backbone against the same probe on features of the same architecture at random init.
Pretraining that fits the data removes a clear share of the random-init probe's errors; on data unlike
the pretraining data, random features do as well.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from lightning_recipes._suggest_command import (
    DATA_CLASS,
    CommandInputs,
    choose_recipe,
    loads_pretrained_weights,
    recipe_command,
)
from lightning_recipes._suggest_margin import bootstrap_interval, closeness_lines, probe_correct, runner_up
from lightning_recipes._suggest_rules import (
    AS_IS_ACCURACY,
    LARGE_PER_CLASS,
    SIMILAR,
    Measurement,
    decide,
    errors_removed,
)

__all__ = [
    "AS_IS_ACCURACY",
    "DATA_CLASS",
    "LARGE_PER_CLASS",
    "Measurement",
    "Suggestion",
    "choose_recipe",
    "decide",
    "loads_pretrained_weights",
    "main",
    "pilot_scenarios",
    "probe_accuracy",
    "recipe_command",
    "report",
    "SIMILAR",
    "suggest",
]

#: Cap on the examples embedded and probed (class-balanced, seeded): keeps ``suggest`` under a minute.
MAX_EXAMPLES = 300
#: Cap on the image side for the probe (pixels); larger inputs are resized down.
MAX_IMAGE_SIZE = 160
#: Folds of the probe's cross-validation (fewer when a class has fewer examples).
FOLDS = 5


def probe_accuracy(features: np.ndarray, targets: np.ndarray, seed: int = 0) -> float:
    """Cross-validated accuracy of a linear probe (ridge classifier) on standardised ``features``: the
    share of examples it gets right in their held-out fold (:func:`._suggest_margin.probe_correct`).

    A ridge classifier is solved in closed form: on 300 x 512 features it was 23x faster than an
    iterative logistic regression (``benchmarks/suggest_time.py``).

    Example::

        >>> rng = np.random.default_rng(0)
        >>> y = np.repeat([0, 1], 20)
        >>> round(probe_accuracy(y[:, None] + 0.1 * rng.normal(size=(40, 3)), y), 2)
        1.0
    """
    return float(probe_correct(features, targets, seed, FOLDS).mean())


@dataclass(frozen=True)
class Suggestion:
    """The result of :func:`suggest`: the measurements, the scenario, why, and the command to run."""

    family: str
    measurement: Measurement
    scenario: str
    reason: str
    recipe: str | None
    command: str | None
    details: dict[str, Any]
    inputs: CommandInputs | None = None


def suggest(
    data: str,
    backbone: str,
    family: str | None = None,
    text_column: str | None = None,
    label_column: str = "label",
    pretrained: str | None = None,
    max_examples: int = MAX_EXAMPLES,
    seed: int = 0,
    encoding: str = "utf-8",
    delimiter: str | None = None,
    format: str | None = None,
    val_file: str | None = None,
    test_file: str | None = None,
    smaller: bool = False,
) -> Suggestion:
    """Measure ``data`` against ``backbone`` and suggest a scenario and the recipe that runs it.

    Args:
        data: an image folder (``<class>/*.jpg``, or ``train/<class>/...`` beside ``val/``, ``test/``),
            or a csv/tsv/json/jsonl/parquet file of texts and labels.
        backbone: a timm name, ``local-dir:`` folder or zoo name (images); a Hugging Face id or folder (text).
        family: ``image`` or ``text``; default: ``image`` for a folder, ``text`` for a file.
        text_column, label_column: the text file's columns (default text column: ``sentence`` or ``text``).
        pretrained: a local weights file of the image backbone's architecture (as ``ImageClassifier``'s
            ``pretrained``), instead of the weights its name brings.
        max_examples: at most this many examples (class-balanced, seeded) are embedded and probed.
        seed: seed of the subsample, the random-init backbone and the probe's folds.
        encoding, delimiter, format: how the text file is read, as ``TextDataModule``'s options of those
            names (a Latin-1 file, ``text;label`` lines, a ``.label`` file); the printed command keeps them.
        val_file, test_file: the text data's own validation and test files (same columns, read the same
            way), kept in the printed command; an image folder's own ``val/`` and ``test/`` stay as they are.
        smaller: the user needs a smaller, faster model than ``backbone``: suggest ``distill``.
    """
    from lightning_recipes import _suggest_data as sd
    from lightning_recipes import zoo

    zoo.build_missing([backbone])  # a zoo name is built (once) before it is measured
    family = family or sd.detect_family(data)
    if family not in DATA_CLASS:
        raise ValueError(f"--family {family!r}: suggest measures image or text classification data")
    if family == "image" and (val_file or test_file):
        raise ValueError(
            "--val-file/--test-file are for a text file's own splits; an image folder's val/ and test/ "
            "folders (beside train/) are used as they are"
        )
    if family == "image":
        sample = sd.load_images(data, max_examples, seed)
        feats = sd.image_features(sample, backbone, MAX_IMAGE_SIZE, seed, pretrained or True)
    else:
        if pretrained:
            raise ValueError("pretrained=FILE is for image backbones; give a text model's folder as backbone")
        how = {"encoding": encoding, "delimiter": delimiter, "format": format}
        sample = sd.load_texts(data, text_column, label_column, max_examples, seed, **how)
        feats = sd.text_features(sample, backbone, max_length=128, seed=seed)
    y = sample.targets
    right_p, right_r = (
        probe_correct(feats.pretrained, y, seed, FOLDS),
        probe_correct(feats.random, y, seed, FOLDS),
    )
    right_as_is = None if feats.as_is_logits is None else feats.as_is_logits.argmax(1) == y
    n = len(y)
    m = Measurement(
        classes=len(sample.classes),
        min_per_class=int(min(sample.train_counts)),
        median_per_class=float(np.median(sample.train_counts)),
        probed=len(y),
        majority=float(np.bincount(y).max() / len(y)),
        probe_pretrained=float(right_p.mean()),
        probe_random=float(right_r.mean()),
        as_is=None if right_as_is is None else float(right_as_is.mean()),
        label_match=feats.label_match,
        similarity_interval=bootstrap_interval(
            lambda i: errors_removed(right_p[i].mean(1), right_r[i].mean(1), n), n, seed
        ),
        as_is_interval=None
        if right_as_is is None
        else bootstrap_interval(lambda i: right_as_is[i].mean(1), n, seed),
    )
    scenario, reason = decide(m, smaller)
    details = {k: v for k, v in sample.details.items() if k != "datamodule"}  # printable, comparable
    inputs = CommandInputs(family, data, backbone, sample.classes, details, pretrained, val_file, test_file)
    found = inputs.command(scenario)
    if found is None:
        return Suggestion(family, m, scenario, reason, None, None, details, inputs)
    return Suggestion(family, m, scenario, reason, found[0].name, found[1], details, inputs)


def report(s: Suggestion, data: str, backbone: str, rerun: str | None = None) -> str:
    """The printed summary: the numbers, the scenario with its reason, how close the call is (``rerun``:
    the ``suggest`` command line, which a close call suggests again with ``--pilot``), and the command."""
    m = s.measurement
    as_is = (
        f"{m.as_is:.3f}"
        if m.as_is is not None
        else f"n/a ({m.label_match} of {m.classes} class names match the backbone's pretrained labels)"
    )
    lines = [
        f"Data:       {data} ({s.family}; {m.classes} classes; training examples per class: min "
        f"{m.min_per_class}, median {m.median_per_class:g})",
        f"Backbone:   {backbone}",
        f"Probed:     {m.probed} examples (class-balanced), ridge-classifier probe, "
        f"{min(FOLDS, m.probed // m.classes)}-fold CV",
        f"  majority-class baseline          {m.majority:.3f}",
        f"  probe on pretrained features     {m.probe_pretrained:.3f}",
        f"  probe on random-init features    {m.probe_random:.3f}",
        f"  similarity                       {m.similarity:+.3f}   (share of the random-init probe's errors "
        f"removed; similar from {SIMILAR:.2f})",
        f"  as-is accuracy                   {as_is}",
        f"Scenario:   {s.scenario}",
        f"Reason:     {s.reason}",
        *closeness_lines(m, rerun),
    ]
    if s.command is None:
        wanted = f"{s.family} {s.scenario} recipe reads a {DATA_CLASS[s.family]}"
        lines.append(f"Recipe:     none shipped: no {wanted} (see `lightning-recipes list --matrix`)")
    else:
        lines += [f"Recipe:     {s.recipe}", f"Run:        {s.command}"]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """``lightning-recipes suggest --data PATH --backbone NAME [...]``; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="lightning-recipes suggest",
        description="Measure a data set against a backbone; print the scenario, the reason and the recipe "
        "command (docs/suggest.md).",
    )
    parser.add_argument("--data", required=True, help="image folder; or csv/tsv/json/parquet, texts + labels")
    parser.add_argument("--backbone", required=True, help="timm name, local-dir:PATH, zoo name; HF id/folder")
    parser.add_argument("--family", choices=sorted(DATA_CLASS), help="default: image (folder), text (file)")
    parser.add_argument("--text-column", help="text column (default: sentence or text)")
    parser.add_argument("--label-column", default="label", help="label column (default: label)")
    parser.add_argument("--pretrained", help="image backbones: a local weights file for the architecture")
    parser.add_argument("--max-examples", type=int, default=MAX_EXAMPLES, help="examples probed (300)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--encoding", default="utf-8", help="text file encoding (e.g. latin-1)")
    parser.add_argument("--delimiter", help="text file column separator (`;`: text;label lines in a .txt)")
    parser.add_argument("--format", help="text file format: csv, json, parquet, label_text, text_label")
    parser.add_argument("--val-file", help="text: your own validation file (default: 10 %% of --data)")
    parser.add_argument("--test-file", help="text: your own test file, kept in the printed command")
    parser.add_argument(
        "--pilot", action="store_true", help="also train short pilots and pick by their metric"
    )
    parser.add_argument("--pilot-budget", default="50", help="each pilot: N steps or Xm minutes (50)")
    parser.add_argument("--pilot-scenarios", help="comma-separated (default: the choice and its runner-up)")
    parser.add_argument("--smaller", action="store_true", help="a smaller, faster model: distil the backbone")
    args = parser.parse_args(argv)
    if args.max_examples < 4:
        parser.error(f"--max-examples must be at least 4, got {args.max_examples}")
    if args.pilot:
        from lightning_recipes import _suggest_pilot

        try:  # bad input fails before the probe
            budget = _suggest_pilot.Budget.parse(args.pilot_budget)
            parse_scenarios(args.pilot_scenarios)
        except ValueError as exc:
            parser.error(str(exc))
    result = suggest(
        args.data,
        args.backbone,
        family=args.family,
        text_column=args.text_column,
        label_column=args.label_column,
        pretrained=args.pretrained,
        max_examples=args.max_examples,
        seed=args.seed,
        encoding=args.encoding,
        delimiter=args.delimiter,
        format=args.format,
        val_file=args.val_file,
        test_file=args.test_file,
        smaller=args.smaller,
    )
    print(report(result, args.data, args.backbone, "lightning-recipes suggest " + shlex.join(argv)))
    sys.stdout.flush()
    if args.pilot:
        scenarios = pilot_scenarios(result, args.pilot_scenarios)
        print("\n".join(_suggest_pilot.pilot(result.inputs, scenarios, budget, args.seed)[0]))
    return 0


def pilot_scenarios(result: Suggestion, given: str | None) -> list[str]:
    """The scenarios ``--pilot`` trains: ``given`` (comma-separated), else the choice and its runner-up."""
    if given is None:
        second = runner_up(result.measurement)
        return [result.scenario] + ([second[0]] if second else [])
    return parse_scenarios(given)


def parse_scenarios(given: str | None) -> list[str]:
    """``--pilot-scenarios``: known scenario names, comma-separated; a one-line error otherwise."""
    from lightning_recipes.recipes import SCENARIOS

    scenarios = [s.strip() for s in (given or "").split(",") if s.strip()]
    if given is not None and (not scenarios or any(s not in SCENARIOS for s in scenarios)):
        raise ValueError(f"--pilot-scenarios {given!r}: give some of {', '.join(SCENARIOS)}, comma-separated")
    return scenarios
