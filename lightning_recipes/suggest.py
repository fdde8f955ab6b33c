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
import json
import shlex
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from lightning_recipes.recipes import Recipe

#: Median training examples per class at or above which a data set counts as large.
LARGE_PER_CLASS = 1000
#: Share of the random-init probe's errors that pretrained features remove, from which data is similar.
SIMILAR = 0.30
#: As-is accuracy (pretrained classifier, classes matched by name) at or above which the model fits.
AS_IS_ACCURACY = 0.90
#: Cap on the examples embedded and probed (class-balanced, seeded): keeps ``suggest`` under a minute.
MAX_EXAMPLES = 300
#: Cap on the image side for the probe (pixels); larger inputs are resized down.
MAX_IMAGE_SIZE = 160
#: Folds of the probe's cross-validation (fewer when a class has fewer examples).
FOLDS = 5

#: The data module of each family whose recipes ``suggest`` fills in, and the options it sets.
DATA_CLASS = {"image": "ImageDataModule", "text": "TextDataModule"}


@dataclass(frozen=True)
class Measurement:
    """What ``suggest`` measured (accuracies are fractions of the probed subsample).

    Attributes:
        classes, probed: number of classes; examples embedded and probed.
        min_per_class, median_per_class: training examples per class.
        majority: accuracy of always predicting the most frequent class of the subsample.
        probe_pretrained: linear-probe accuracy on the pretrained backbone's frozen features.
        probe_random: the same probe on features of the architecture at random init.
        as_is: accuracy of the pretrained classifier with the classes matched by name, or ``None``.
        label_match: how many class names matched a pretrained label name.
    """

    classes: int
    min_per_class: int
    median_per_class: float
    probed: int
    majority: float
    probe_pretrained: float
    probe_random: float
    as_is: float | None
    label_match: int

    @property
    def similarity(self) -> float:
        """The share of the random-init probe's errors that pretrained features remove: ``(error_random -
        error_pretrained) / error_random``, each error at least ``1 / probed`` (random features that solve
        the task: ``<= 0``)."""
        floor = 1.0 / self.probed
        error_random = max(1.0 - self.probe_random, floor)
        return (error_random - max(1.0 - self.probe_pretrained, floor)) / error_random


def probe_accuracy(features: np.ndarray, targets: np.ndarray, seed: int = 0) -> float:
    """Cross-validated accuracy of a linear probe (ridge classifier: closed form, 23x faster than a logistic
    regression on 300 x 512 features, ``benchmarks/suggest_time.py``) on standardised ``features``.

    Example::

        >>> rng = np.random.default_rng(0)
        >>> y = np.repeat([0, 1], 20)
        >>> round(probe_accuracy(y[:, None] + 0.1 * rng.normal(size=(40, 3)), y), 2)
        1.0
    """
    from sklearn.linear_model import RidgeClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = min(FOLDS, int(np.bincount(targets).min()))
    if folds < 2:
        counts = np.bincount(targets).tolist()
        raise ValueError(f"Every class needs 2 examples or more for the probe; examples per class: {counts}")
    probe = make_pipeline(StandardScaler(), RidgeClassifier(alpha=100.0))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return float(cross_val_score(probe, features, targets, cv=cv).mean())


def decide(m: Measurement, smaller: bool = False) -> tuple[str, str]:
    """The scenario keyword and the reason, from the measurements and the thresholds of this module;
    ``distill`` for a user who asks for a ``smaller`` (and so faster) model than the backbone.

    Example::

        >>> m = Measurement(5, 10, 10.0, 50, 0.2, 0.95, 0.70, None, 0)
        >>> decide(m)[0], decide(m, smaller=True)[0]
        ('fine-tune', 'distill')
    """
    if smaller:
        scores, (scenario, reason) = "" if m.as_is is None else f", scoring {m.as_is:.2f} as-is", decide(m)
        return "distill", (
            f"a smaller, faster model was asked for (--smaller): the backbone (the teacher: a classifier of "
            f"these labels{scores}) teaches a student of half its depth. Without --smaller: {scenario}, "
            f"{reason}"
        )
    size = (
        f"{'large' if m.median_per_class >= LARGE_PER_CLASS else 'small'} data set (median "
        f"{m.median_per_class:g} examples per class, large from {LARGE_PER_CLASS})"
    )
    lead = f"pretrained features remove {m.similarity:.0%} of the random-init probe's errors"
    if m.as_is is not None and m.as_is >= AS_IS_ACCURACY:
        return "as-is", (
            f"the class names are the backbone's pretrained labels and it already scores {m.as_is:.2f} "
            f"(>= {AS_IS_ACCURACY}): evaluate it, no training"
        )
    if m.similarity >= SIMILAR:
        return "fine-tune", f"{size}, similar to the pretraining data ({lead}; similar from {SIMILAR:.0%})"
    if m.median_per_class >= LARGE_PER_CLASS:
        return "scratch", f"{size}, different from the pretraining data ({lead}; similar from {SIMILAR:.0%})"
    return "add-layers", (
        f"{size}, different from the pretraining data ({lead}; similar from {SIMILAR:.0%}): train a new "
        "head on the frozen backbone first, then unfreeze it"
    )


def _data_class(recipe: Recipe) -> str:
    import yaml

    return (yaml.safe_load(recipe.path.read_text()).get("data") or {}).get("class_path", "")


def choose_recipe(family: str, scenario: str, backbone: str) -> Recipe | None:
    """The shipped recipe of this cell that reads the family's own data module (``None`` if there is none).

    Among several, one whose model is ``backbone`` comes first, then one whose model is on this machine
    (no model blockers, see :func:`~lightning_recipes.recipes.offline_blockers`), then by name.
    """
    import yaml

    from lightning_recipes.recipes import list_recipes

    cell = [r for r in list_recipes() if r.family == family and r.scenario == scenario]
    wanted = DATA_CLASS[family]
    usable = [r for r in cell if _data_class(r).endswith(wanted)]
    if not usable:
        return None

    def rank(recipe: Recipe) -> tuple[bool, bool, str]:
        args = (yaml.safe_load(recipe.path.read_text())["model"].get("init_args")) or {}
        same = backbone == args.get("model_name_or_path")
        return (not same, any(b.startswith("model") for b in recipe.blockers), recipe.name)

    return min(usable, key=rank)


def recipe_command(
    recipe: Recipe,
    family: str,
    data: str,
    backbone: str,
    classes: list[str],
    details: dict[str, Any],
    pretrained: str | None = None,
) -> str:
    """The ``lightning run`` command of ``recipe`` with the data, backbone and classes filled in.

    Args:
        recipe: the recipe (:func:`choose_recipe`).
        family: ``image`` or ``text``.
        data: the image folder or text file, as the user gave it.
        backbone: the backbone, as the user gave it.
        classes: the data's class names.
        details: how the data was read: ``layout`` (``class folders``: a folder without splits) for images;
            ``text_column``, ``label_column``, ``file_options`` (encoding, delimiter, format) for text;
            ``label_map`` (class name -> the pretrained label id it matched) where every name matches.
        pretrained: a local weights file of an image backbone, passed on unless the recipe trains from
            scratch.

    The data replaces the recipe's own, and every stage gets its split: a folder without ``val/``/``test/``
    is split by ``val_fraction``/``test_fraction`` (0.1 each unless the recipe sets them); a text file is
    the training data with 10 % held out for validation, a training recipe's ``test`` becoming ``validate``;
    an as-is recipe tests on the whole file. A recipe with the model's own head (``head: pretrained``, no
    ``num_classes``) gets no ``num_classes``; one with a ``class_map`` gets the names that matched.
    """
    import yaml

    config = yaml.safe_load(recipe.path.read_text())
    data_args = config["data"].get("init_args") or {}
    model_args = config["model"].get("init_args") or {}
    stages = list(config.get("stages") or ["fit", "test"])
    overrides: dict[str, str] = {}
    if family == "image":
        overrides["data.init_args.root"] = data
        for key in ("train_file", "val_file", "test_file", "predict_root"):
            if data_args.get(key) is not None:
                overrides[f"data.init_args.{key}"] = "null"
        if details.get("layout") == "class folders":
            for split, stage in (("val", "validate"), ("test", "test")):
                needed = stage in stages or (split == "val" and "fit" in stages)
                if needed and not data_args.get(f"{split}_fraction"):
                    overrides[f"data.init_args.{split}_fraction"] = "0.1"
        overrides["model.init_args.model_name_or_path"] = backbone
        if pretrained and recipe.scenario != "scratch":
            overrides["model.init_args.pretrained"] = pretrained
    else:
        overrides["data.init_args.train_file"] = data
        overrides["data.init_args.text_column"] = details["text_column"]
        overrides["data.init_args.label_column"] = details["label_column"]
        for key, value in details.get("file_options", {}).items():  # how the file was read
            overrides[f"data.init_args.{key}"] = value
        nulls = ["dataset", "dataset_config", "val_file", "test_file", "predict_file", "label_names"]
        if "fit" in stages:
            overrides["data.init_args.val_fraction"] = "0.1"
            nulls.append("train_size")  # train on all of it
            if "test" in stages:
                stages = [s for s in stages if s != "test"] + ([] if "validate" in stages else ["validate"])
                overrides["stages"] = "[" + ",".join(stages) + "]"
        elif "test" in stages:
            overrides["data.init_args.test_file"] = data
            nulls.remove("test_file")
        overrides.update({f"data.init_args.{k}": "null" for k in nulls if data_args.get(k) is not None})
        overrides["model.init_args.model_name_or_path"] = backbone
    if model_args.get("head") != "pretrained" or model_args.get("num_classes") is not None:
        overrides["model.init_args.num_classes"] = str(len(classes))
    if "class_map" in model_args and details.get("label_map"):
        overrides["model.init_args.class_map"] = json.dumps({c: [n] for c, n in details["label_map"].items()})
    path = f"recipes/{recipe.name}.yaml"
    return "lightning run " + " ".join([path, *(f"--{k}={shlex.quote(v)}" for k, v in overrides.items())])


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
        smaller: the user needs a smaller, faster model than ``backbone``: suggest ``distill``.
    """
    from lightning_recipes import _suggest_data as sd
    from lightning_recipes import zoo

    zoo.build_missing([backbone])  # a zoo name is built (once) before it is measured
    family = family or sd.detect_family(data)
    if family not in DATA_CLASS:
        raise ValueError(f"--family {family!r}: suggest measures image or text classification data")
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
    as_is = None if feats.as_is_logits is None else float((feats.as_is_logits.argmax(1) == y).mean())
    m = Measurement(
        classes=len(sample.classes),
        min_per_class=int(min(sample.train_counts)),
        median_per_class=float(np.median(sample.train_counts)),
        probed=len(y),
        majority=float(np.bincount(y).max() / len(y)),
        probe_pretrained=probe_accuracy(feats.pretrained, y, seed),
        probe_random=probe_accuracy(feats.random, y, seed),
        as_is=as_is,
        label_match=feats.label_match,
    )
    scenario, reason = decide(m, smaller)
    details = {k: v for k, v in sample.details.items() if k != "datamodule"}  # printable, comparable
    recipe = choose_recipe(family, scenario, backbone)
    if recipe is None:
        return Suggestion(family, m, scenario, reason, None, None, details)
    command = recipe_command(recipe, family, data, backbone, sample.classes, details, pretrained)
    return Suggestion(family, m, scenario, reason, recipe.name, command, details)


def report(s: Suggestion, data: str, backbone: str) -> str:
    """The printed summary: the numbers, the scenario with its reason, and the command."""
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
    parser.add_argument("--smaller", action="store_true", help="a smaller, faster model: distil the backbone")
    args = parser.parse_args(argv)
    if args.max_examples < 4:
        parser.error(f"--max-examples must be at least 4, got {args.max_examples}")
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
        smaller=args.smaller,
    )
    print(report(result, args.data, args.backbone))
    sys.stdout.flush()
    return 0
