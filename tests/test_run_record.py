"""What a finished ``lightning run`` writes about itself (lightning_recipes/run_record.py): ``run.json`` (the
hardware, versions and wall time of each stage) and ``README.md``, the run's model card, whose "Use it" code
loads the checkpoint it names; a run that trained nothing says so. An export's card repeats the hardware."""

from __future__ import annotations

import json
import os
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
import yaml
from export_helpers import image_folders, run_tiny_recipe

from lightning_recipes import ImageClassifier
from lightning_recipes.cli import main

MODEL = {
    "class_path": "lightning_recipes.ImageClassifier",
    "init_args": {"model_name_or_path": "test_resnet", "pretrained": False, "num_classes": 3, "lr": 0.01},
}


def data(root: Path) -> dict:
    return {
        "class_path": "lightning_recipes.ImageDataModule",
        "init_args": {"root": str(root), "batch_size": 6, "num_workers": 0, "image_size": 32},
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("documented")
    return run_tiny_recipe(tmp, MODEL, data(image_folders(tmp)), epochs=1)


def card_of(folder: Path) -> tuple[dict, str]:
    text = (folder / "README.md").read_text()
    return yaml.safe_load(text.split("---")[1]), text


def test_a_run_records_its_hardware_versions_and_the_time_of_each_stage(run) -> None:
    record = json.loads((run / "run.json").read_text())
    hw = record["hardware"]
    assert (hw["accelerator"], hw["devices"], hw["nodes"], hw["precision"]) == ("cpu", 1, 1, "32-true")
    assert (
        hw["strategy"] == "SingleDeviceStrategy" and hw["device_name"] and hw["cpu_cores"] == os.cpu_count()
    )
    assert hw["torch_threads"] == torch.get_num_threads()
    assert list(record["seconds"]) == ["fit", "test"] and all(s > 0 for s in record["seconds"].values())
    assert record["versions"]["torch"] == version("torch") and record["versions"]["lightning"] == version(
        "lightning"
    )


def test_a_run_has_a_model_card_whose_code_loads_its_checkpoint(run, monkeypatch) -> None:
    front, card = card_of(run)
    assert (front["library_name"], front["pipeline_tag"]) == ("pytorch", "image-classification")
    assert "checkpoint" in front["tags"] and "accuracy" in front["metrics"]
    logged = {r["name"]: r["value"] for r in front["model-index"][0]["results"][0]["metrics"]}
    with open(run / "metrics.csv") as f:
        header, *rows = [line.rstrip("\n").split(",") for line in f]
    test_acc = next(float(r[header.index("test/acc")]) for r in rows if r[header.index("test/acc")])
    assert logged["test/acc"] == pytest.approx(test_acc, abs=1e-6)

    assert "## Training" in card and "- Hardware: 1 x " in card and "- Wall time: fit " in card
    assert "`a`, `b`, `c`" in card and "Resolved config.yaml" in card
    assert "input size [3, 32, 32]" in card  # the run's transform (image_size: 32), not the model's default
    links = [line.split("](")[1].rstrip(")") for line in card.splitlines() if line.startswith("![")]
    assert links and all((run / link).is_file() for link in links)  # the run's own curves, not copies
    assert not (run / "images").exists()

    code = card.split("## Use it")[1].split("```python\n")[1].split("```")[0]
    monkeypatch.chdir(run)
    scope: dict = {}
    exec(code, scope)  # the card's own snippet, run from the run directory
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    best = next(
        v["best_model_path"] for k, v in state["callbacks"].items() if k.startswith("ModelCheckpoint")
    )
    assert f'"checkpoints/{Path(best).name}"' in code
    expected = ImageClassifier.load_from_checkpoint(best).state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in scope["model"].state_dict().items())
    assert "lightning-recipes export RUN_DIR --to DIR" in card


def test_a_run_that_trains_nothing_says_so_in_its_card(tmp_path, capsys) -> None:
    recipe = {
        "seed_everything": 0,
        "stages": ["test"],
        "trainer": {
            "accelerator": "cpu",
            "enable_progress_bar": False,
            "logger": {"class_path": "CSVLogger", "init_args": {"save_dir": str(tmp_path / "run")}},
        },
        "model": MODEL,
        "data": data(image_folders(tmp_path)),
    }
    (tmp_path / "asis.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["run", str(tmp_path / "asis.yaml")]) == 0
    run = tmp_path / "run" / "lightning_logs" / "version_0"
    assert f"Model card:      {run / 'README.md'}" in capsys.readouterr().out
    _, card = card_of(run)
    assert "used as built by its recipe (as-is: no checkpoint, nothing trained)" in card
    assert "Nothing was trained" in card and "load_from_checkpoint" not in card
    assert list(json.loads((run / "run.json").read_text())["seconds"]) == ["test"]


def test_an_export_card_carries_the_runs_hardware_and_time(run, tmp_path, capsys) -> None:
    assert main(["export", str(run), "--to", str(tmp_path / "out"), "--no-wandb"]) == 0, (
        capsys.readouterr().err
    )
    _, card = card_of(tmp_path / "out")
    hw = json.loads((run / "run.json").read_text())["hardware"]
    assert f"- Hardware: 1 x {hw['device_name']} (cpu, SingleDeviceStrategy, precision 32-true;" in card
    assert "- Wall time: fit " in card and "## Export check" in card
