"""Predict from an export: ``lightning-recipes predict --config RUN/config.yaml --model DIR``.

An ``hf`` or ``timm`` folder written by ``lightning-recipes export`` holds the whole model (the head as the
architecture's own classifier, an adapter merged in) and its labels, so the family's module rebuilds it
with its pretrained head used as-is: ``ImageClassifier("local-dir:DIR", head="pretrained")``,
``TextClassifier(DIR, head="pretrained")``, ``CausalLM(DIR)``. The recipe's data module and trainer (the
``PredictionWriter`` among its callbacks) are the run's, and so are the model's options that say how it
predicts (:data:`PREDICT_OPTIONS`), so ``predictions.csv`` is the one the checkpoint gives: the same
columns, labels and probabilities within the export's parity tolerance, the same greedy continuations.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lightning_recipes.export._source import FAMILIES, ExportError

#: The formats the modules load back; the traced ones are for their own runtimes.
LOADABLE = ("hf", "timm")
#: Options of the recipe's model that say how it predicts, not what it is: the export does not hold them,
#: so ``predict --model DIR`` keeps the recipe's (a causal LM's ``generation``: ``max_new_tokens``, ...).
PREDICT_OPTIONS = ("generation",)


def export_record(folder: str | Path) -> dict[str, Any]:
    """The ``export.json`` of an export folder, or an :class:`ExportError` saying what ``folder`` lacks."""
    folder = Path(folder)
    path = folder / "export.json"
    if not path.is_file():
        raise ExportError(
            f"--model {folder}: no export.json there; give a folder written by `lightning-recipes export`, "
            "or predict from the checkpoint with --ckpt_path"
        )
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ExportError(f"--model {folder}: export.json is not JSON ({exc}); export the run again") from exc
    if not isinstance(record, dict) or record.get("family") not in FAMILIES:
        raise ExportError(f"--model {folder}: export.json names no model family; export the run again")
    return record


def model_config(folder: str | Path) -> dict[str, Any]:
    """``{"class_path", "init_args"}`` of the module that predicts from the export folder ``folder``.

    Raises:
        ExportError: not an export folder; a traced export (``torchscript``/``onnx``: its own runtime
            loads it); an LM adapter folder (exported without ``--merge``).
    """
    folder = Path(folder).expanduser().resolve()
    record = export_record(folder)
    fmt, family = record.get("format"), record["family"]
    if fmt not in LOADABLE:
        raise ExportError(
            f"--model {folder}: a {fmt} export runs in its own runtime, not in lightning_recipes; predict "
            "from an hf or timm export (lightning-recipes export RUN --to DIR), or from the checkpoint "
            "with --ckpt_path"
        )
    if (folder / "adapter_config.json").is_file():
        raise ExportError(
            f"--model {folder}: an adapter folder needs its base model; export the run with --merge to "
            "predict from the export, or predict from the checkpoint with --ckpt_path"
        )
    if family == "lm":
        return {"class_path": FAMILIES["lm"], "init_args": {"model_name_or_path": str(folder)}}
    init_args: dict[str, Any] = {
        "model_name_or_path": f"local-dir:{folder}" if family == "image" else str(folder),
        "pretrained": True,
        "head": "pretrained",
        "task": record.get("task", "multiclass"),
    }
    if record.get("class_map"):
        init_args["class_map"] = record["class_map"]
    return {"class_path": FAMILIES[family], "init_args": init_args}


def split_model_folder(argv: list[str]) -> tuple[list[str], Path | None]:
    """``(argv without it, folder)`` for a ``--model DIR`` / ``--model=DIR`` naming a folder; ``(argv,
    None)`` when ``--model`` names a class or a config, which the CLI parses as usual.

    Example::

        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> args, found = split_model_folder(["--config", "c.yaml", f"--model={folder}", "--seed=1"])
        >>> args, found == Path(folder)
        (['--config', 'c.yaml', '--seed=1'], True)
        >>> split_model_folder(["--model", "lightning_recipes.ImageClassifier"])
        (['--model', 'lightning_recipes.ImageClassifier'], None)
    """
    for i, arg in enumerate(argv):
        if arg == "--model" and i + 1 < len(argv) and Path(argv[i + 1]).expanduser().is_dir():
            return argv[:i] + argv[i + 2 :], Path(argv[i + 1]).expanduser()
        if arg.startswith("--model=") and Path(arg.removeprefix("--model=")).expanduser().is_dir():
            return argv[:i] + argv[i + 1 :], Path(arg.removeprefix("--model=")).expanduser()
    return argv, None


def use_export_model(config: Any, folder: Path) -> None:
    """Put the export ``folder``'s model into a parsed ``predict`` config (a jsonargparse ``Namespace``) in
    place of the recipe's: what ``LightningRecipesCLI`` does for ``predict --model DIR``.

    Raises:
        ExportError: the config also names a ``ckpt_path``; ``folder`` is not an export it can predict from.
    """
    from jsonargparse import Namespace

    if config.get("ckpt_path"):
        raise ExportError(
            f"--model {folder} and --ckpt_path {config['ckpt_path']}: predict from one of them (the export's "
            "weights or the checkpoint's); pass --ckpt_path=null with --model"
        )
    model = model_config(folder)
    recipe = config.get("model")
    recipe_args = recipe.get("init_args") if isinstance(recipe, Namespace) else None
    kept = {k: recipe_args[k] for k in PREDICT_OPTIONS if recipe_args is not None and recipe_args.get(k)}
    init_args = Namespace(**model["init_args"], **kept)
    config["model"] = Namespace(class_path=model["class_path"], init_args=init_args)
