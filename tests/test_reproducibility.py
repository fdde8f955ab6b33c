"""Same command, same seed, same metrics: on a cold zoo cache (`lightning run` builds the backbone after
seeding, before the run) and on a warm one (it is read from the cache)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import json, sys
from lightning_recipes.cli import run_recipe
overrides = ["--trainer.max_epochs=3", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
             f"--trainer.default_root_dir={sys.argv[2]}"]
summary = run_recipe(sys.argv[1], overrides)
print("METRICS " + json.dumps(summary["metrics"]))
"""


@pytest.mark.slow
def test_quickstart_metrics_are_the_same_on_a_cold_and_a_warm_cache(run_script, tmp_path: Path) -> None:
    env = {"LIGHTNING_RECIPES_CACHE": str(tmp_path / "cache")}  # empty: the first run builds the backbone
    recipe = REPO / "recipes" / "quickstart.yaml"
    runs = []
    for name in ("cold", "warm"):
        out = run_script(SCRIPT, recipe, tmp_path / name, env=env).stdout
        runs.append(json.loads(out.split("METRICS ", 1)[1].splitlines()[0]))
    cold, warm = runs
    assert cold["test/acc"] > 0.5 and set(cold) == set(warm)
    assert cold == warm
