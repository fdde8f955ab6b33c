"""Every shipped recipe parses, documents itself, and runs end to end with a tiny backbone."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lightning_recipes.cli import main
from lightning_recipes.recipes import list_recipes, read_description

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").rglob("*.yaml"))
IDS = [str(p.relative_to(REPO / "recipes")) for p in RECIPES]
FAST = [
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.strategy=auto",
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=2",
    "--trainer.limit_test_batches=2",
    "--trainer.limit_predict_batches=2",
    "--trainer.enable_progress_bar=false",
    "--trainer.logger=false",
]


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


def image_overrides(config: dict, tmp_path: Path, image_folder) -> list[str]:
    overrides = ["--model.init_args.backbone=test_resnet", "--model.init_args.pretrained=false"]
    if config["data"]["class_path"].endswith("DigitsDataModule"):
        return [
            *overrides,
            "--data.init_args.train_per_class=4",
            f"--data.init_args.root={tmp_path / 'digits'}",
        ]
    root = image_folder(splits=("train", "val", "test"), per_class=4)
    return [
        *overrides,
        "--model.init_args.num_classes=3",
        f"--data.init_args.root={root}",
        "--data.init_args.image_size=32",
        "--data.init_args.num_workers=0",
        "--data.init_args.batch_size=4",
    ]


FAMILIES = {"ImageClassifier": image_overrides}


@pytest.mark.parametrize("recipe", RECIPES, ids=IDS)
def test_recipe_runs_with_a_tiny_backbone(recipe, tmp_path, image_folder, capsys, monkeypatch):
    config = yaml.safe_load(recipe.read_text())
    family = config["model"]["class_path"].rsplit(".", 1)[-1]
    if family not in FAMILIES:
        pytest.skip(f"{family} recipes are run with tiny models in their own family's tests")
    if "# Scenario: as-is" in recipe.read_text():
        pytest.skip("as-is recipes run with tiny models of their kind in tests/test_asis_recipes.py")
    monkeypatch.chdir(REPO)  # recipes name paths relative to the repository root
    overrides = FAMILIES[family](config, tmp_path, image_folder)
    code = main(["run", str(recipe), *FAST, f"--trainer.default_root_dir={tmp_path / 'run'}", *overrides])
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    assert "Run directory:" in out.out


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
