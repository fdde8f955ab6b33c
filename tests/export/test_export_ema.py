"""``lightning-recipes export`` of a run trained with EMA from its YAML recipe: the exported weights are the
average (the checkpoint's ``state_dict``), the parity check covers them and the export says so."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from export_helpers import image_folders, reload_probabilities, run_tiny_recipe
from test_export import best_checkpoint, export, probabilities

from lightning_recipes import ImageClassifier
from lightning_recipes.callbacks.ema import CHECKPOINT_KEY


def test_an_ema_run_exports_its_average_and_says_so(tmp_path: Path, capsys) -> None:
    model = {
        "class_path": "lightning_recipes.ImageClassifier",
        "init_args": {"model_name_or_path": "test_resnet", "pretrained": False, "num_classes": 3, "lr": 0.05},
    }
    data = {
        "class_path": "lightning_recipes.ImageDataModule",
        "init_args": {
            "root": str(image_folders(tmp_path)),
            "batch_size": 4,
            "num_workers": 0,
            "image_size": 32,
        },
    }
    ema = {"class_path": "lightning_recipes.callbacks.EMA", "init_args": {"decay": 0.5}}
    run = run_tiny_recipe(tmp_path, model, data, callbacks=(ema,))
    ckpt = best_checkpoint(run)
    state = torch.load(ckpt, weights_only=True)
    assert state[CHECKPOINT_KEY] == {
        "decay": 0.5,
        "updates": state["global_step"],
        "update_starting_at_step": 0,
    }
    assert any(k.startswith("head.") for k in state["current_model_state"])  # live weights, not the average

    code, out, err = export(capsys, run, "--to", tmp_path / "out", "--format", "timm", "--no-wandb")
    assert code == 0, err
    record = json.loads((tmp_path / "out" / "export.json").read_text())
    assert record["weights"] == "ema" and record["ema"] == state[CHECKPOINT_KEY]
    assert (
        "exponential moving average of the trained weights (EMA, decay 0.5"
        in (tmp_path / "out" / "README.md").read_text()
    )
    # exported = the checkpoint's average, as ImageClassifier.load_from_checkpoint gives it
    average = ImageClassifier.load_from_checkpoint(ckpt, map_location="cpu").eval()
    inputs = {"images": torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))}
    got = reload_probabilities("timm", tmp_path / "out", inputs, tmp_path)
    torch.testing.assert_close(got, probabilities(average, inputs), atol=1e-4, rtol=0)
    live = ImageClassifier.load_from_checkpoint(ckpt, map_location="cpu").eval()
    live.load_state_dict({**state["state_dict"], **state["current_model_state"]})
    assert (got - probabilities(live, inputs)).abs().max() > 1e-4
