"""Find the shipped recipes, read their headers (scenario, family) and tell which run offline here.

A recipe's header is its first comment lines::

    # <one-line description>
    # Scenario: <keyword> -- <details>      keyword: fine-tune, add-layers, scratch, as-is, adapters, distill
    # Family: <family> -- <model details>   family: image, text or lm
    # Global batch: <samples per optimizer step> -- <how to keep it on N devices>   (training recipes)
    # Data: ...
    # Expected: ...
    # Runtime: ...
    # Run: lightning run recipes/<family>/<name>.yaml [...]

The scenario and family keywords place the recipe in the matrix of transfer-learning scenarios x model
families (``lightning-recipes list --matrix``). A header that lacks them, or misspells a keyword, is an
error that names the file. Whether a recipe runs offline here is not declared but measured from the
recipe itself (:func:`offline_blockers`), so a new recipe is classified without anyone keeping a list.
"""

from __future__ import annotations

import difflib
import glob
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The ``# Scenario:`` keywords, in the order of the matrix's columns.
SCENARIOS = ("fine-tune", "add-layers", "scratch", "as-is", "adapters", "distill")
#: The ``# Family:`` keywords, in the order of the matrix's rows.
FAMILIES = ("image", "text", "lm")
#: Data options that name input files or folders (``root``, ``predict_root``, ``train_file``...).
_DATA_PATH_KEY = re.compile(r"^(root|predict_root|\w+_file)$")
#: Model options that name pretrained weights or a tokenizer.
_MODEL_KEYS = ("model_name_or_path", "tokenizer")


def recipes_dir() -> Path:
    """The shipped recipes: ``recipes/`` of a source checkout, or the copy inside an installed wheel."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "_recipes", package.parent / "recipes"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"No recipes folder found beside {package}; reinstall lightning-recipes")


class RecipeHeaderError(ValueError):
    """A recipe's header lacks its ``# Scenario:`` or ``# Family:`` line, or misspells the keyword."""


@dataclass(frozen=True)
class Recipe:
    """A recipe file and what its header and body say about it.

    Attributes:
        name: path below the recipes folder without ``.yaml`` (``image/scratch_resnet``).
        path: the file.
        description: the first header line.
        scenario: the ``# Scenario:`` keyword (one of :data:`SCENARIOS`).
        family: the ``# Family:`` keyword (one of :data:`FAMILIES`).
        blockers: why it does not run offline here (Hub weights, a Hub dataset, a data path that does
            not exist); empty when it does (see :func:`offline_blockers`).
        global_batch: samples per optimizer step on one device as written (see :func:`global_batch`);
            ``None`` for a recipe that does not train.
    """

    name: str
    path: Path
    description: str
    scenario: str
    family: str
    blockers: tuple[str, ...] = field(default=())
    global_batch: int | None = None

    @property
    def offline(self) -> bool:
        """Runs here as shipped, from the repository root, with no network (no :attr:`blockers`)."""
        return not self.blockers


def read_header(path: Path) -> dict[str, str]:
    """The header's ``# Key: value`` lines as ``{key: value}``; indented continuation lines are joined.

    The first line is the description (key ``""``). The header ends at the first line that is not a comment.

    Example::

        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "r.yaml"
        >>> _ = p.write_text("# Train.\\n# Scenario: scratch -- random init,\\n#   no weights\\nseed: 1\\n")
        >>> read_header(p)
        {'': 'Train.', 'Scenario': 'scratch -- random init, no weights'}
    """
    header: dict[str, str] = {}
    key: str | None = None
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line[1:].strip()
        match = re.match(r"^([A-Z][A-Za-z]*(?: [a-z]+)?):\s*(.*)$", text)  # Scenario, Global batch
        if key is None:
            key, header[""] = "", text
        elif match and not line[1:].startswith("  "):
            key = match.group(1)
            header[key] = match.group(2)
        elif text:
            header[key] = f"{header[key]} {text}".strip()
    return header


def read_description(path: Path) -> str:
    """The first ``# ...`` line of a recipe (its one-line description), or an empty string."""
    return read_header(path).get("", "")


def header_keyword(path: Path, header: dict[str, str], key: str, allowed: tuple[str, ...]) -> str:
    """The first word of the header's ``key`` line, which must be one of ``allowed``; else a clear error."""
    form = f"'# {key}: <{'|'.join(allowed)}> -- <details>'"
    if key not in header:
        raise RecipeHeaderError(f"Recipe {path}: its header has no {form} line")
    word = (header[key].split() or [""])[0].rstrip(",;.")
    if word not in allowed:
        close = difflib.get_close_matches(word, allowed, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise RecipeHeaderError(
            f"Recipe {path}: '# {key}: {header[key][:40]}' starts with {word!r}, which is not one of "
            f"{', '.join(allowed)}{hint} (expected {form})"
        )
    return word


def _is_local(value: str) -> bool:
    return value.startswith(("local-dir:", ".", "/", "~"))


def _timm_architecture(name: str) -> bool:
    """A timm architecture name (``resnet18``, ``resnet50.a1_in1k``): built without a download."""
    import timm

    return timm.is_model(name.split(".")[0])


def offline_blockers(config: dict[str, Any], base: Path) -> list[str]:
    """Why a recipe, run as shipped from ``base``, would need the network or data that is not here.

    The rule (``docs/recipes.md``): a recipe runs offline here when

    * every model it names (``model_name_or_path``, ``tokenizer``, a callback's ``teacher``) is a zoo name
      (:mod:`lightning_recipes.registry`; ``lightning run`` builds it offline), a local folder that
      exists (``local-dir:`` or a path starting with ``.``, ``/`` or ``~``, relative to ``base``), or an
      architecture built with ``pretrained: false`` (a timm architecture name; for Hugging Face models:
      with a ``config`` dict, so no config is fetched); a teacher may also be a checkpoint file that
      exists;
    * its data module reads no Hub ``dataset``, and every file or folder its data options name
      (``root``, ``predict_root``, ``*_file``; globs allowed) exists relative to ``base``.
      A data module that generates its data (``DigitsDataModule``) names none.

    Example::

        >>> offline_blockers({"model": {"init_args": {"model_name_or_path": "resnet50.a1_in1k"}}}, Path("."))
        ["model model_name_or_path 'resnet50.a1_in1k': pretrained weights from the Hub"]
    """
    from lightning_recipes.registry import ZOO

    blockers = []
    model = (config.get("model") or {}).get("init_args") or {}
    data = (config.get("data") or {}).get("init_args") or {}
    for section, args in (("model", model), ("data", data)):
        for key in _MODEL_KEYS:
            value = args.get(key)
            if not isinstance(value, str) or value in ZOO:
                continue
            if _is_local(value):
                if not (base / value.removeprefix("local-dir:")).expanduser().is_dir():
                    blockers.append(f"{section} {key} {value!r}: folder not found")
            elif not (
                model.get("pretrained") is False and (model.get("config") or _timm_architecture(value))
            ):
                blockers.append(f"{section} {key} {value!r}: pretrained weights from the Hub")
    for callback in (config.get("trainer") or {}).get("callbacks") or []:
        teacher = ((callback.get("init_args") or {}) if isinstance(callback, dict) else {}).get("teacher")
        if not isinstance(teacher, str) or teacher in ZOO:
            continue
        name = str(callback.get("class_path", "")).rsplit(".", 1)[-1]
        where = f"trainer callback {name} teacher {teacher!r}"
        if teacher.endswith(".ckpt") or _is_local(teacher):
            if not (base / teacher.removeprefix("local-dir:")).expanduser().exists():
                blockers.append(f"{where}: {'file' if teacher.endswith('.ckpt') else 'folder'} not found")
        else:
            blockers.append(f"{where}: pretrained weights from the Hub")
    if data.get("dataset"):
        blockers.append(f"data dataset {data['dataset']!r}: a Hub dataset")
    for key, value in data.items():
        if not _DATA_PATH_KEY.match(key) or value is None:
            continue
        for pattern in [value] if isinstance(value, str) else value:
            if not glob.glob(str((base / pattern).expanduser())):
                blockers.append(f"data {key} {pattern!r}: not found (your data)")
    return blockers


def global_batch(config: dict[str, Any]) -> int | None:
    """Samples per optimizer step on one device: ``GlobalBatch``'s ``size``, else batch_size x accumulation.

    ``None`` when the recipe has no ``fit`` stage or its data section names no ``batch_size``.

    Example::

        >>> data = {"init_args": {"batch_size": 8}}
        >>> global_batch({"data": data, "trainer": {"accumulate_grad_batches": 4}})
        32
        >>> global_batch({"stages": ["validate"], "data": data})
    """
    if "fit" not in (config.get("stages") or ["fit"]):
        return None
    trainer = config.get("trainer") or {}
    for callback in trainer.get("callbacks") or []:
        if isinstance(callback, dict) and str(callback.get("class_path", "")).endswith("GlobalBatch"):
            return int((callback.get("init_args") or {})["size"])
    batch_size = ((config.get("data") or {}).get("init_args") or {}).get("batch_size")
    return None if batch_size is None else int(batch_size) * int(trainer.get("accumulate_grad_batches") or 1)


def load_recipe(path: Path, root: Path | None = None, base: Path | None = None) -> Recipe:
    """Read one recipe: header keywords (a :class:`RecipeHeaderError` names the file) and offline blockers.

    Args:
        path: the YAML file.
        root: the folder its name is relative to (default: its parent).
        base: where relative paths in it are resolved (default: the folder above the recipes folder,
            the repository root of a checkout).
    """
    import yaml

    root = root or path.parent
    base = base or recipes_dir().parent
    header = read_header(path)
    scenario = header_keyword(path, header, "Scenario", SCENARIOS)
    family = header_keyword(path, header, "Family", FAMILIES)
    config = yaml.safe_load(path.read_text()) or {}
    return Recipe(
        name=str(path.relative_to(root).with_suffix("")),
        path=path,
        description=header.get("", ""),
        scenario=scenario,
        family=family,
        blockers=tuple(offline_blockers(config, base)),
        global_batch=global_batch(config),
    )


def list_recipes(root: Path | None = None) -> list[Recipe]:
    """Every ``*.yaml`` under ``root`` (default: the shipped recipes), named by relative path without suffix.

    Example::

        >>> quick = {r.name: r for r in list_recipes()}["quickstart"]
        >>> quick.family, quick.scenario, quick.offline
        ('image', 'fine-tune', True)
    """
    root = root or recipes_dir()
    return [load_recipe(p, root) for p in sorted(root.rglob("*.yaml"))]


def recipe_matrix(recipes: list[Recipe]) -> dict[tuple[str, str], list[Recipe]]:
    """``{(family, scenario): [recipes]}`` for every cell of :data:`FAMILIES` x :data:`SCENARIOS`."""
    cells: dict[tuple[str, str], list[Recipe]] = {(f, s): [] for f in FAMILIES for s in SCENARIOS}
    for recipe in recipes:
        cells[recipe.family, recipe.scenario].append(recipe)
    return cells


def format_list(recipes: list[Recipe]) -> str:
    """The ``lightning-recipes list`` table: name, family, scenario, offline, description."""
    rows = [("name", "family", "scenario", "offline", "description")] + [
        (r.name, r.family, r.scenario, "yes" if r.offline else "no", r.description) for r in recipes
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        "  ".join([*(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)), row[4]]).rstrip()
        for row in rows
    )


def format_matrix(recipes: list[Recipe]) -> str:
    """The family x scenario table with each cell's recipes (``*``: runs offline here; ``-``: none)."""
    cells = recipe_matrix(recipes)
    lines = [f"{'':<8}" + "".join(f"| {s} " for s in SCENARIOS)]
    for family in FAMILIES:
        names = [
            ", ".join(r.name.split("/")[-1] + ("*" if r.offline else "") for r in cells[family, s]) or "-"
            for s in SCENARIOS
        ]
        lines.append(f"{family:<8}" + "".join(f"| {n} " for n in names))
    lines.append("(* runs offline here: every model and data path it names is on this machine)")
    return "\n".join(lines)


def resolve_recipe(name_or_path: str) -> Path:
    """A recipe file from a path or a shipped recipe name (``quickstart``, ``text/sst2_distilbert``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    root = recipes_dir()
    shipped = {str(p.relative_to(root).with_suffix("")): p for p in sorted(root.rglob("*.yaml"))}
    key = name_or_path.removesuffix(".yaml").removeprefix("recipes/")
    if key in shipped:
        return shipped[key]
    raise FileNotFoundError(
        f"Recipe {name_or_path!r} not found: not a file, and not a shipped recipe "
        f"({', '.join(sorted(shipped))}). `lightning-recipes list` shows them."
    )
