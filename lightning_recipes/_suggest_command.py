"""The recipe ``lightning-recipes suggest`` names for a scenario, and the command that runs it on your data.

A recipe trains against pretrained weights or from its own architecture: :func:`loads_pretrained_weights`
reads which from the recipe itself (an image model with ``pretrained: false``, a text model built from a
``config`` with ``model_name_or_path: null``), and only a recipe that loads weights gets the probed
backbone. The user's own splits (a text test or validation file; an image folder's ``val/`` and
``test/``) stay in the command.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from typing import Any

from lightning_recipes.recipes import Recipe

__all__ = ["DATA_CLASS", "CommandInputs", "choose_recipe", "loads_pretrained_weights", "recipe_command"]

#: The data module of each family whose recipes ``suggest`` fills in, and the options it sets.
DATA_CLASS = {"image": "ImageDataModule", "text": "TextDataModule"}


def _config(recipe: Recipe) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(recipe.path.read_text())


def loads_pretrained_weights(family: str, model_args: dict[str, Any]) -> bool:
    """Whether a recipe's model (its ``model.init_args``) loads pretrained weights, or trains its own
    architecture from random init (the ``scratch`` recipes).

    Example::

        >>> loads_pretrained_weights("image", {"model_name_or_path": "resnet18", "pretrained": False})
        False
        >>> loads_pretrained_weights("text", {"model_name_or_path": None, "config": {"model_type": "bert"}})
        False
        >>> loads_pretrained_weights("text", {"model_name_or_path": "../shared/models/all-MiniLM-L6-v2"})
        True
    """
    if family == "image":
        return model_args.get("pretrained", True) is not False
    return model_args.get("model_name_or_path") is not None


def choose_recipe(family: str, scenario: str, backbone: str) -> Recipe | None:
    """The shipped recipe of this cell that reads the family's own data module (``None`` if there is none).

    Among several, one whose model is ``backbone`` comes first, then one whose model is on this machine
    (no model blockers, see :func:`~lightning_recipes.recipes.offline_blockers`), then by name.
    """
    from lightning_recipes.recipes import list_recipes

    cell = [r for r in list_recipes() if r.family == family and r.scenario == scenario]
    wanted = DATA_CLASS[family]
    usable = [r for r in cell if (_config(r).get("data") or {}).get("class_path", "").endswith(wanted)]
    if not usable:
        return None

    def rank(recipe: Recipe) -> tuple[bool, bool, str]:
        args = _config(recipe)["model"].get("init_args") or {}
        same = backbone == args.get("model_name_or_path")
        return (not same, any(b.startswith("model") for b in recipe.blockers), recipe.name)

    return min(usable, key=rank)


def _text_data(
    overrides: dict[str, str],
    data_args: dict[str, Any],
    stages: list[str],
    data: str,
    details: dict[str, Any],
    val_file: str | None,
    test_file: str | None,
) -> list[str]:
    """Fill in ``overrides`` for a text recipe's data; return its stages (``test`` becomes ``validate``
    when a training recipe has no test file to test on)."""
    overrides["data.init_args.train_file"] = data
    overrides["data.init_args.text_column"] = details["text_column"]
    overrides["data.init_args.label_column"] = details["label_column"]
    for key, value in details.get("file_options", {}).items():  # how the files are read
        overrides[f"data.init_args.{key}"] = value
    nulls = ["dataset", "dataset_config", "val_file", "test_file", "predict_file", "label_names"]
    if "fit" in stages:
        nulls.append("train_size")  # train on all of it
        if val_file:
            overrides["data.init_args.val_file"] = val_file
        else:
            overrides["data.init_args.val_fraction"] = "0.1"
        if test_file and "test" in stages:
            overrides["data.init_args.test_file"] = test_file
        elif "test" in stages:  # no held-out test file: the last stage validates instead
            stages = [s for s in stages if s != "test"] + ([] if "validate" in stages else ["validate"])
            overrides["stages"] = "[" + ",".join(stages) + "]"
    elif "test" in stages:  # as-is: the test file, else the whole file (nothing is trained on it)
        overrides["data.init_args.test_file"] = test_file or data
    given = {k.removeprefix("data.init_args.") for k in overrides}
    overrides.update(
        {f"data.init_args.{k}": "null" for k in nulls if data_args.get(k) is not None and k not in given}
    )
    return stages


def recipe_command(
    recipe: Recipe,
    family: str,
    data: str,
    backbone: str,
    classes: list[str],
    details: dict[str, Any],
    pretrained: str | None = None,
    val_file: str | None = None,
    test_file: str | None = None,
) -> str:
    """The ``lightning run`` command of ``recipe`` with the data, backbone and classes filled in.

    Args:
        recipe: the recipe (:func:`choose_recipe`).
        family: ``image`` or ``text``.
        data: the image folder or text file, as the user gave it.
        backbone: the backbone, as the user gave it.
        classes: the data's class names.
        details: how the data was read: ``layout`` (``class folders`` for a folder without splits) for
            images; ``text_column``, ``label_column`` and ``file_options`` (encoding, delimiter, format)
            for text; ``label_map`` (class name -> the pretrained label id it matched) where every name
            matches.
        pretrained: a local weights file of an image backbone, passed on where the recipe loads weights.
        val_file, test_file: the user's own text validation and test files (same columns and options).

    The data takes the place of the recipe's own, and every stage the recipe runs gets its split: a
    folder's own ``val/`` and ``test/`` are used, one without them is split by ``val_fraction`` /
    ``test_fraction`` (0.1 each unless the recipe sets them); a text file is the training data,
    validated on ``val_file`` (else 10 % of it held out) and tested on ``test_file`` (without one, a
    training recipe's ``test`` stage becomes ``validate``); an as-is recipe tests on ``test_file``, else
    on the whole file. The backbone (and ``pretrained``) replaces the recipe's model only where the recipe
    loads pretrained weights (:func:`loads_pretrained_weights`): a from-scratch recipe keeps its own
    architecture and, for text, its own tokenizer trained on the data. A recipe with the model's own head
    as-is (``head: pretrained``, no ``num_classes``) gets no ``num_classes``; one with a ``class_map`` gets
    the names that matched.
    """
    config = _config(recipe)
    data_args = config["data"].get("init_args") or {}
    model_args = config["model"].get("init_args") or {}
    stages = list(config.get("stages") or ["fit", "test"])
    weights = loads_pretrained_weights(family, model_args)
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
        if weights:
            overrides["model.init_args.model_name_or_path"] = backbone
            if pretrained:
                overrides["model.init_args.pretrained"] = pretrained
    else:
        _text_data(overrides, data_args, stages, data, details, val_file, test_file)
        if weights:
            overrides["model.init_args.model_name_or_path"] = backbone
    if model_args.get("head") != "pretrained" or model_args.get("num_classes") is not None:
        overrides["model.init_args.num_classes"] = str(len(classes))
    if "class_map" in model_args and details.get("label_map"):
        overrides["model.init_args.class_map"] = json.dumps({c: [n] for c, n in details["label_map"].items()})
    path = f"recipes/{recipe.name}.yaml"
    return "lightning run " + " ".join([path, *(f"--{k}={shlex.quote(v)}" for k, v in overrides.items())])


@dataclass(frozen=True)
class CommandInputs:
    """What the command of any scenario needs: the data as read, the backbone, the user's own splits.

    Attributes:
        family, data, backbone, classes, details, pretrained, val_file, test_file: as
            :func:`recipe_command`.
    """

    family: str
    data: str
    backbone: str
    classes: list[str]
    details: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None
    val_file: str | None = None
    test_file: str | None = None

    def command(self, scenario: str) -> tuple[Recipe, str] | None:
        """The recipe of ``scenario`` and its command on this data, or ``None`` when none is shipped."""
        recipe = choose_recipe(self.family, scenario, self.backbone)
        if recipe is None:
            return None
        return recipe, recipe_command(
            recipe, self.family, self.data, self.backbone, self.classes, self.details, self.pretrained,
            self.val_file, self.test_file,
        )  # fmt: skip
