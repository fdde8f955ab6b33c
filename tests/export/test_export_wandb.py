"""``lightning-recipes export`` of a run that logged to W&B (lightning_recipes/export/_wandb.py): the export
is logged as a ``model`` artifact, with its card, to the run its checkpoint names (resumed, offline here:
``WANDB_MODE=offline`` in conftest); ``--no-wandb`` and a disabled W&B log nothing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from export_helpers import image_folders, run_tiny_recipe

from lightning_recipes.cli import main
from lightning_recipes.loggers import run_id_from_checkpoint

sys.path.insert(0, str(Path(__file__).parents[1] / "loggers"))
from offline_wandb_runs import _finish_wandb, offline_runs, read_offline_run  # noqa: E402, F401


@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run directory of a `lightning run` of a tiny ResNet logging to W&B (offline)."""
    import wandb

    tmp = tmp_path_factory.mktemp("wandb_run")
    model = {
        "class_path": "lightning_recipes.ImageClassifier",
        "init_args": {"model_name_or_path": "test_resnet", "pretrained": False, "num_classes": 3},
    }
    data = {
        "class_path": "lightning_recipes.ImageDataModule",
        "init_args": {"root": str(image_folders(tmp)), "batch_size": 6, "num_workers": 0, "image_size": 32},
    }
    logger = {"class_path": "lightning_recipes.loggers.WandbLogger", "init_args": {"project": "pets"}}
    run = run_tiny_recipe(tmp, model, data, epochs=1, logger=logger)
    wandb.finish()  # each `lightning run` is its own process
    return run


def test_the_export_is_logged_as_a_model_artifact_to_the_run(wandb_run, tmp_path, capsys) -> None:
    (first,) = offline_runs(wandb_run.parent.parent)
    run_id = read_offline_run(first)["id"]
    assert run_id_from_checkpoint(wandb_run / "checkpoints" / "last.ckpt") == run_id

    out = tmp_path / "pets-timm"
    assert main(["export", str(wandb_run), "--to", str(out)]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert f"W&B: artifact pets-timm:timm (model) logged to run {run_id}, offline in" in printed
    runs = offline_runs(wandb_run.parent.parent)
    assert len(runs) == 2  # the run, resumed offline by the export
    resumed = read_offline_run(runs[-1])
    assert resumed["id"] == run_id
    (artifact,) = [a for a in resumed["artifacts"] if a["name"] == "pets-timm"]
    assert artifact["type"] == "model" and "timm" in artifact["aliases"]
    # the export's files, the card among them and as the artifact's description; export.json as metadata
    assert {"README.md", "export.json", "config.json", "model.safetensors"} <= set(artifact["files"])
    assert artifact["description"] == (out / "README.md").read_text()
    assert artifact["metadata"]["format"] == "timm" and artifact["metadata"]["label_names"] == ["a", "b", "c"]


def test_no_wandb_and_a_disabled_wandb_log_nothing(wandb_run, tmp_path, monkeypatch, capsys) -> None:
    before = offline_runs(wandb_run.parent.parent)
    assert main(["export", str(wandb_run), "--to", str(tmp_path / "a"), "--no-wandb"]) == 0
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert main(["export", str(wandb_run), "--to", str(tmp_path / "b")]) == 0
    assert "W&B:" not in capsys.readouterr().out
    assert offline_runs(wandb_run.parent.parent) == before


def test_a_failing_wandb_is_one_line_and_the_export_stays(wandb_run, tmp_path, monkeypatch, capsys) -> None:
    import wandb

    def refuse(*args, **kwargs):
        raise RuntimeError("artifact storage quota exceeded\nsee the billing page")

    monkeypatch.setattr(wandb.Artifact, "add_dir", refuse)
    out = tmp_path / "out"
    assert main(["export", str(wandb_run), "--to", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()  # the W&B logger's offline notice, then the error
    assert err[-1].startswith(
        "error: W&B: logging the export to W&B failed (RuntimeError: artifact storage quota exceeded); "
        f"the export is complete in {out} (--no-wandb skips W&B)"
    )
    assert {"README.md", "export.json", "model.safetensors"} <= {p.name for p in out.iterdir()}
    assert wandb.run is None  # the resumed run is finished
