"""Find the shipped recipes and read their header lines."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def recipes_dir() -> Path:
    """The shipped recipes: ``recipes/`` of a source checkout, or the copy inside an installed wheel."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "_recipes", package.parent / "recipes"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"No recipes folder found beside {package}; reinstall lightning-recipes")


@dataclass(frozen=True)
class Recipe:
    """A recipe file and the first line of its header comment."""

    name: str
    path: Path
    description: str


def read_description(path: Path) -> str:
    """The first ``# ...`` line of a recipe (its one-line description), or an empty string."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line.strip():
            break
    return ""


def list_recipes(root: Path | None = None) -> list[Recipe]:
    """Every ``*.yaml`` under ``root`` (default: the shipped recipes), named by relative path without suffix.

    Example::

        >>> "quickstart" in [r.name for r in list_recipes()]
        True
    """
    root = root or recipes_dir()
    return [
        Recipe(str(p.relative_to(root).with_suffix("")), p, read_description(p))
        for p in sorted(root.rglob("*.yaml"))
    ]


def resolve_recipe(name_or_path: str) -> Path:
    """A recipe file from a path or a shipped recipe name (``quickstart``, ``text/sst2_distilbert``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = {r.name: r.path for r in list_recipes()}
    key = name_or_path.removesuffix(".yaml").removeprefix("recipes/")
    if key in shipped:
        return shipped[key]
    raise FileNotFoundError(
        f"Recipe {name_or_path!r} not found: not a file, and not a shipped recipe "
        f"({', '.join(sorted(shipped))}). `lightning-recipes list` shows them."
    )
