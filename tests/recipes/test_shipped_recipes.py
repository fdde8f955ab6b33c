"""Every shipped recipe runs as shipped (``lightning run``), with stand-ins only for what is not here.

One harness (:mod:`recipe_harness`) for all of ``recipes/``: the weights become stand-ins of the same
architecture (tiny here, full size in the slow suite), placeholders and Hub datasets become local
copies, and the run is cut to a couple of batches; :data:`recipe_harness.ALLOWED` lists every key it
may change, and nothing else changes: precision, optimizer, clipping, callbacks, schedulers, loggers
(W&B offline), batch sizes and stages are the recipe's own.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from recipe_harness import ALLOWED, StandIns, arguments, is_hub_model, load, overrides, sandbox

from lightning_recipes.cli import main
from lightning_recipes.recipes import list_recipes
from lightning_recipes.registry import ZOO

REPO = Path(__file__).resolve().parents[2]
RECIPES = list_recipes()


@pytest.fixture(scope="session")
def standins(tmp_path_factory) -> dict[str, StandIns]:
    from conftest import SHARED

    root = tmp_path_factory.mktemp("standins")
    return {size: StandIns(root / size, SHARED, size) for size in ("tiny", "full")}


def run(recipe, size: str, standins, shared_dir, tmp_path, monkeypatch, capsys):
    work = sandbox(tmp_path, REPO, shared_dir)
    monkeypatch.chdir(work)
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    changes = overrides(recipe.path, standins[size], work)
    assert set(changes) <= set(ALLOWED)
    args = ["run", str(recipe.path), *arguments(changes)]
    if size == "tiny":
        code = main(args)
        out, err = capsys.readouterr()
    else:  # its own process, as a user runs it: full-size activations are freed with it
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from lightning_recipes.cli import main; sys.exit(main())",
                *args,
            ],
            cwd=work,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=1800,
        )
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    assert code == 0, f"{recipe.name} with {changes}:\n{err[-4000:]}"
    return work, changes, out, err


def check(recipe, work: Path, out: str) -> None:
    """The summary names a run directory with the resolved recipe, finite metrics, and (fit) checkpoints
    that load; each stage of the recipe left its metrics."""
    config = load(recipe.path)
    run_dir = Path(out.split("Run directory:")[1].split()[0])
    run_dir = run_dir if run_dir.is_absolute() else work / run_dir
    assert (run_dir / "config.yaml").is_file(), out
    metrics = dict(
        item.split("=") for item in out.split("Final metrics:")[1].strip().splitlines()[0].split(", ")
    )
    assert all(math.isfinite(float(v)) for v in metrics.values()), metrics
    stages = config.get("stages") or ["fit", "test"]
    for stage, prefix in (("test", "test/"), ("validate", "val/")):
        if stage in stages:
            assert any(k.startswith(prefix) for k in metrics), (stage, metrics)
    if "fit" in stages and config.get("trainer", {}).get("enable_checkpointing", True) is not False:
        ckpts = sorted(run_dir.rglob("*.ckpt"))
        assert ckpts, f"no checkpoint under {run_dir}"
        state = torch.load(ckpts[-1], map_location="cpu", weights_only=False)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    if "predict" in stages:
        assert "Predictions:" in out


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.name for r in RECIPES])
def test_recipe_runs_as_shipped_with_tiny_stand_ins(
    recipe, standins, shared_dir, tmp_path, monkeypatch, capsys, recwarn
):
    work, _, out, err = run(recipe, "tiny", standins, shared_dir, tmp_path, monkeypatch, capsys)
    check(recipe, work, out)
    noise = [str(w.message) for w in recwarn if any(n in str(w.message) for n in NOISE)]
    noise += [n for n in NOISE if n in err]
    assert not noise, noise  # silenced at their source (#24)


#: Warnings a recipe user cannot act on, which no shipped recipe may raise: peft's about a LoftQ config
#: nobody set (jsonargparse filled its default) and a base model name it renamed to None (timm);
#: transformers' about padded input without a mask (the LM summary's example input, where token 0 is
#: the padding token; logged once per process, so the full-size runs, each in its own process, see it).
NOISE = (
    "`loftq_config` specified but will be ignored",
    "`base_model_name_or_path` was renamed",
    "We strongly recommend passing in an `attention_mask`",
)


def hub_weights(recipe) -> bool:
    """Whether the recipe's weights come from the Hub (the others run as shipped in the slow suite:
    tests/recipes/test_recipe_matrix.py runs every offline recipe with its real ``../shared`` or zoo
    weights)."""
    init = load(recipe.path)["model"]["init_args"]
    name = init.get("model_name_or_path")
    return bool(name) and init.get("pretrained", True) and name not in ZOO and is_hub_model(name, REPO)


#: Full-size cases too slow for CI's 2 CPU cores, with the reason (the tiny suite runs them as shipped).
TOO_SLOW_ON_CPU = {
    "image/freeze_then_unfreeze_resnet": "LRFinder sweeps 2 x 100 steps of a ResNet-50 at 64 images of "
    "224 px (~40 min on 2 CPU cores); a GPU check, not a CI one",
}
FULL = [
    pytest.param(
        r, id=r.name, marks=[pytest.mark.skip(TOO_SLOW_ON_CPU[r.name])] if r.name in TOO_SLOW_ON_CPU else []
    )
    for r in RECIPES
    if hub_weights(r)
]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", FULL)
def test_recipe_runs_as_shipped_at_full_size(recipe, standins, shared_dir, tmp_path, monkeypatch, capsys):
    """Full-size stand-ins (bert-base, distilbert-base, gpt2, resnet50 shapes): memory, shapes, step time."""
    work, _, out, err = run(recipe, "full", standins, shared_dir, tmp_path, monkeypatch, capsys)
    check(recipe, work, out)
    assert not [n for n in NOISE if n in err], err[-4000:]
