from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lightning_recipes import ImageClassifier, zoo
from lightning_recipes.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_recipe(tmp_path, image_folder) -> Path:
    root = image_folder(splits=("train", "val", "test"), per_class=4)
    recipe = {
        "seed_everything": 0,
        "stages": ["fit", "test"],
        "trainer": {
            "accelerator": "cpu",
            "max_epochs": 2,
            "default_root_dir": str(tmp_path / "run"),
            "enable_progress_bar": False,
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(tmp_path / "run")},
            },
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"monitor": "val/acc", "mode": "max", "save_last": True},
                }
            ],
        },
        "model": {
            "class_path": "lightning_recipes.ImageClassifier",
            "init_args": {"backbone": "test_resnet", "pretrained": False, "num_classes": 3, "lr": 0.01},
        },
        "data": {
            "class_path": "lightning_recipes.ImageDataModule",
            "init_args": {"root": str(root), "batch_size": 6, "num_workers": 0, "image_size": 32},
        },
    }
    path = tmp_path / "tiny.yaml"
    path.write_text("# A tiny recipe for tests.\n" + yaml.safe_dump(recipe))
    return path


def test_lightning_run_subprocess_end_to_end(tiny_recipe, tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(
        [str(Path(sys.executable).with_name("lightning")), "run", str(tiny_recipe), "--trainer.max_epochs=1"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Best checkpoint:" in out.stdout and "test/acc=" in out.stdout
    printed = dict(line.split(":", 1) for line in out.stdout.splitlines() if line.endswith(".ckpt"))
    best, last = printed["Best checkpoint"].strip(), printed["Last checkpoint"].strip()
    assert Path(best).is_file() and Path(last).name == "last.ckpt" and Path(last).is_file()
    model = ImageClassifier.load_from_checkpoint(best).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    run_dir = next(
        line.split(":", 1)[1].strip() for line in out.stdout.splitlines() if line.startswith("Run directory:")
    )
    metrics = (Path(run_dir) / "metrics.csv").read_text()
    assert "val/acc" in metrics and "test/acc" in metrics
    assert (Path(run_dir) / "config.yaml").is_file()


def test_print_config_runs_again_unchanged(tiny_recipe, tmp_path, capsys):
    assert main(["run", str(tiny_recipe), "--trainer.max_epochs=1", "--print_config"]) == 0
    printed = capsys.readouterr().out
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(printed)
    assert yaml.safe_load(printed)["trainer"]["max_epochs"] == 1
    assert main(["run", str(resolved), "--print_config"]) == 0
    assert capsys.readouterr().out == printed
    assert main(["run", str(resolved), "--stages=[validate]"]) == 0
    assert "val/acc=" in capsys.readouterr().out


def test_subcommands_and_resume(tiny_recipe, tmp_path, capsys):
    assert main(["fit", "--config", str(tiny_recipe), "--trainer.max_epochs=1"]) == 0
    last = sorted((tmp_path / "run").rglob("last.ckpt"))[-1]
    assert torch.load(last, weights_only=False)["epoch"] == 0
    assert (
        main(["run", str(tiny_recipe), f"--ckpt_path={last}", "--trainer.max_epochs=2", "--stages=[fit]"])
        == 0
    )
    newest = sorted((tmp_path / "run").rglob("last.ckpt"), key=os.path.getmtime)[-1]
    assert torch.load(newest, weights_only=False)["epoch"] == 1  # resumed at epoch 1, not restarted
    assert main(["list"]) == 0
    assert "quickstart" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("--model.init_args.foo=3", "Option 'foo' is not accepted"),
        ("--model.init_args.backbone=resnet1800", "Unknown backbone 'resnet1800'"),
        ("--data.init_args.root=/no/such/folder", "/no/such/folder does not exist"),
        ("--trainer.max_epochs=abc", "trainer.max_epochs"),
    ],
)
def test_bad_input_gives_a_short_error(tiny_recipe, capsys, override, expected):
    assert main(["run", str(tiny_recipe), override]) != 0
    err = capsys.readouterr().err
    assert expected in err
    assert "Traceback" not in err and len(err.splitlines()) <= 8


def test_malformed_and_missing_recipe(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  init_args: [1,\n")
    assert main(["run", str(bad)]) != 0
    assert "Problems parsing config" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "nope.yaml")]) != 0
    assert "not found" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2


@pytest.fixture
def tiny_zoo(tmp_path, monkeypatch) -> zoo.DigitsWeights:
    """A cold cache and a zoo entry that builds in seconds (test_resnet, digits 0 and 1, one epoch)."""
    monkeypatch.setenv("LIGHTNING_RECIPES_CACHE", str(tmp_path / "cache"))
    weights = zoo.DigitsWeights("test_resnet", (0, 1), epochs=1)
    monkeypatch.setitem(zoo.ZOO, "test_resnet.digits01", weights)
    for name in zoo.SEED_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    return weights


def test_zoo_list_and_build(tiny_zoo, capsys):
    def listed() -> dict[str, list[str]]:
        assert main(["zoo", "list"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].split() == ["name", "arch", "digits", "cached", "path"]
        return {line.split()[0]: line.split()[1:] for line in lines[1:]}

    path = tiny_zoo.path()
    rows = listed()
    assert rows["test_resnet.digits01"] == ["test_resnet", "0,1", "no", str(path)]
    assert rows["resnet10t.digits04"][:2] == ["resnet10t", "0,1,2,3,4"]
    assert main(["zoo", "build", "test_resnet.digits01"]) == 0
    assert capsys.readouterr().out.strip() == f"test_resnet.digits01: built {path}"
    assert path.is_file()
    assert listed()["test_resnet.digits01"] == ["test_resnet", "0,1", "yes", str(path)]
    assert main(["zoo", "build", "test_resnet.digits01", "test_resnet.digits01"]) == 0
    assert capsys.readouterr().out.strip() == f"test_resnet.digits01: already cached at {path}"


def test_zoo_build_of_an_unknown_name_builds_nothing(tiny_zoo, capsys):
    assert main(["zoo", "build", "test_resnet.digits01", "resnet10t.digit04"]) == 2
    err = capsys.readouterr().err
    assert "unknown zoo name 'resnet10t.digit04'; did you mean: resnet10t.digits04" in err
    assert not tiny_zoo.path().exists()
    assert main(["zoo", "build", "zzz"]) == 2
    assert "known: resnet10t.digits04" in capsys.readouterr().err
    for argv in (["zoo"], ["zoo", "build"], ["zoo", "frobnicate"], ["zoo", "list", "extra"]):
        assert main(argv) == 2
        assert "lightning-recipes zoo build NAME" in capsys.readouterr().err
    assert main(["zoo", "--help"]) == 0
    assert "zoo list" in capsys.readouterr().out


@pytest.mark.slow
def test_lightning_run_under_ddp_on_two_cpu_processes(tiny_recipe, tmp_path):
    """Lightning's launcher re-runs `lightning run ...` in a second process; the summary prints once."""
    out = subprocess.run(
        [
            str(Path(sys.executable).with_name("lightning")),
            "run",
            str(tiny_recipe),
            "--trainer.max_epochs=1",
            "--trainer.devices=2",
            "--trainer.strategy=ddp",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        cwd=tmp_path,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("Best checkpoint:") == 1 and "test/acc=" in out.stdout


def test_predict_stage_writes_paths_class_names_and_probabilities(
    tiny_recipe, tmp_path, image_folder, capsys
):
    unlabelled = image_folder(splits=("",), classes=("p", "q"), per_class=3, root=tmp_path / "unlabelled")
    args = ["run", str(tiny_recipe), "--trainer.max_epochs=1", f"--data.init_args.predict_root={unlabelled}"]
    assert main([*args, "--stages=[fit, predict]"]) == 0
    out = capsys.readouterr().out
    path = Path(
        next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Predictions:"))
    )
    run_dir = next(
        line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Run directory:")
    )
    assert path == Path(run_dir) / "predictions.csv"
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == ["index", "path", "label", "prob_a", "prob_b", "prob_c"]  # the data's class names
    assert [r["path"] for r in rows] == [str(p) for p in sorted(unlabelled.rglob("*.png"))]
    probs = torch.tensor([[float(r[f"prob_{c}"]) for c in "abc"] for r in rows])
    assert torch.allclose(probs.sum(-1), torch.ones(6), atol=1e-5)
    assert [r["label"] for r in rows] == ["abc"[i] for i in probs.argmax(-1)]
    saved = torch.load(path.with_suffix(".pt"))
    assert torch.allclose(saved["probabilities"], probs, atol=1e-6) and saved["index"].tolist() == list(
        range(6)
    )
    assert saved["label_names"] == ["a", "b", "c"] and saved["meta"]["path"] == [r["path"] for r in rows]

    # Without predict_root the test split is predicted, its paths in the rows.
    assert main(["run", str(tiny_recipe), "--stages=[predict]"]) == 0
    out = capsys.readouterr().out
    path = Path(
        next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Predictions:"))
    )
    rows = list(csv.DictReader(path.open()))
    test_root = Path(yaml.safe_load(tiny_recipe.read_text())["data"]["init_args"]["root"]) / "test"
    assert [r["path"] for r in rows] == [str(p) for c in "abc" for p in sorted((test_root / c).glob("*.png"))]
