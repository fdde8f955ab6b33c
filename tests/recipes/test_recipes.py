"""Every shipped recipe parses and documents itself; the quickstart transfers (slow).

Every recipe runs as shipped in tests/recipes/test_shipped_recipes.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lightning_recipes.cli import main
from lightning_recipes.recipes import list_recipes, read_description

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "recipes").rglob("*.yaml"))
IDS = [str(p.relative_to(REPO / "recipes")) for p in RECIPES]


def test_list_matches_the_folder():
    assert sorted(r.name for r in list_recipes()) == sorted(i.removesuffix(".yaml") for i in IDS)


@pytest.mark.parametrize("recipe", RECIPES, ids=IDS)
def test_recipe_parses_and_documents_itself(recipe, capsys):
    text = recipe.read_text()
    assert read_description(recipe), "the first line must be a '# one-line description'"
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    for word in ("Scenario", "Expected", "Runtime", "Run:"):
        assert word in header, f"{recipe.name} header lacks {word!r}"
    assert main(["run", str(recipe), "--print_config"]) == 0, capsys.readouterr().err
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert {"trainer", "model", "data", "stages"} <= set(resolved)


@pytest.mark.slow
def test_quickstart_transfers_to_new_digits(tmp_path, capsys, monkeypatch):
    """The README's main job, as shipped: real transfer from digits 0-4 to 5-9."""
    monkeypatch.chdir(tmp_path)
    assert (
        main(["run", str(REPO / "recipes" / "quickstart.yaml"), "--trainer.enable_progress_bar=false"]) == 0
    )
    out = capsys.readouterr().out
    metrics = dict(item.split("=") for item in out.split("Final metrics:")[1].strip().split(", "))
    assert float(metrics["test/acc"]) > 0.9
