"""The zoo's image backbones (lightning_recipes/zoo/image.py): ImageClassifier trained on DigitsDataModule
by a Trainer, the caller's random state untouched; the core loads them once built, and `lightning run`
builds the ones a recipe names before the run."""

from __future__ import annotations

import os
import random
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lightning_recipes import DigitsDataModule, ImageClassifier, connect, registry, zoo
from lightning_recipes._random_state import SEED_ENV_VARS
from lightning_recipes.registry import ZooNotBuiltError
from lightning_recipes.zoo.image import source_model


def test_zoo_backbone_is_pretrained_on_the_source_task():
    """resnet10t.digits04 is built once (trained on digits 0-4) and cached; pretrained=False: random."""
    zoo.build("resnet10t.digits04")
    pretrained = ImageClassifier("resnet10t.digits04", num_classes=5, pretrained=True)
    scratch = ImageClassifier("resnet10t.digits04", num_classes=5, pretrained=False)
    assert pretrained.data_config["input_size"] == (3, 32, 32)
    differs = [
        not torch.equal(a, b)
        for a, b in zip(
            pretrained.backbone.state_dict().values(), scratch.backbone.state_dict().values(), strict=True
        )
    ]
    assert any(differs)
    assert Path(pretrained.backbone.pretrained_cfg["file"]).is_file()


@pytest.fixture
def tiny_zoo(tmp_path, monkeypatch) -> str:
    """A zoo entry that builds in seconds (test_resnet, digits 0 and 1, one epoch), in a cold cache."""
    monkeypatch.setenv("LIGHTNING_RECIPES_CACHE", str(tmp_path / "cache"))
    entry = registry.DigitsWeights("test_resnet", (0, 1), epochs=1)
    monkeypatch.setitem(registry.ZOO, "test_resnet.digits01", entry)
    for name in SEED_ENV_VARS:  # put back after the test whatever seed_everything sets in it
        monkeypatch.delenv(name, raising=False)
    return "test_resnet.digits01"


def test_the_core_never_builds_a_zoo_name(tiny_zoo):
    """A constructor asked for weights that are not built says how to build them, and builds nothing."""
    path = registry.ZOO[tiny_zoo].path()
    with pytest.raises(
        ZooNotBuiltError, match=r"lightning-recipes zoo build test_resnet.digits01.*lightning run"
    ):
        ImageClassifier(tiny_zoo, num_classes=2)
    assert not path.exists() and not path.parent.exists()
    assert ImageClassifier(tiny_zoo, num_classes=2, pretrained=False).data_config["input_size"] == (3, 32, 32)


def random_state() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "env": {name: os.environ.get(name) for name in SEED_ENV_VARS},
    }


def assert_same_random_state(before: dict, after: dict) -> None:
    assert torch.equal(before["torch"], after["torch"])
    assert len(before["cuda"]) == len(after["cuda"])
    assert all(torch.equal(a, b) for a, b in zip(before["cuda"], after["cuda"], strict=True))
    (kind, keys, pos, gauss, cached), (kind2, keys2, pos2, gauss2, cached2) = before["numpy"], after["numpy"]
    assert (kind, pos, gauss, cached) == (kind2, pos2, gauss2, cached2) and np.array_equal(keys, keys2)
    assert before["python"] == after["python"]
    assert before["env"] == after["env"]


@pytest.mark.parametrize("seeded", [True, False], ids=["after-seed_everything", "unseeded"])
def test_zoo_build_leaves_the_random_state_untouched(tiny_zoo, seeded):
    if seeded:
        L.seed_everything(3, workers=True)  # sets PL_GLOBAL_SEED and PL_SEED_WORKERS
    torch.rand(3), np.random.rand(3), random.random()  # somewhere in the streams
    before = random_state()
    assert before["env"]["PL_GLOBAL_SEED"] == ("3" if seeded else None)
    weights = registry.ZOO[tiny_zoo]
    assert not weights.path().exists()
    said: list[str] = []
    assert zoo.build(tiny_zoo, say=said.append) == weights.path() and weights.path().is_file()
    (line,) = said
    assert line.startswith("lightning_recipes: building zoo model test_resnet.digits01")
    assert "random state is left untouched" in line and str(weights.path()) in line
    assert_same_random_state(before, random_state())
    assert (
        zoo.build(tiny_zoo, say=said.append) == weights.path() and len(said) == 1
    )  # built: returned at once
    assert_same_random_state(before, random_state())


def test_zoo_backbone_gives_the_same_model_on_a_cold_and_a_warm_cache(tiny_zoo):
    """A build inside a seeded run (`lightning run` builds after seeding) changes nothing the run draws."""

    def seeded_model() -> tuple[ImageClassifier, torch.Tensor]:
        L.seed_everything(7)
        zoo.build_missing([tiny_zoo, "resnet18", 3])  # only zoo names are built
        model = ImageClassifier(tiny_zoo, num_classes=3, pretrained=True)
        return model, torch.rand(4)  # the next draw (the run's data order, dropout...)

    assert not registry.ZOO[tiny_zoo].path().exists()
    cold, cold_next = seeded_model()
    assert registry.ZOO[tiny_zoo].path().is_file()
    warm, warm_next = seeded_model()
    for a, b in zip(cold.state_dict().values(), warm.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(cold.head[-1].weight, warm.head[-1].weight)
    assert torch.equal(cold_next, warm_next)


def test_zoo_weights_are_image_classifier_trained_on_the_digits(tiny_zoo):
    """The zoo trains ImageClassifier(arch, pretrained=False, lr=2e-3) itself: the cached file is the
    backbone and the head of that model trained by hand, seeded alike, on the same digits."""
    entry = registry.ZOO[tiny_zoo]
    L.seed_everything(0, verbose=False)
    source = source_model(entry)
    L.seed_everything(0, verbose=False)
    reference = ImageClassifier("test_resnet", num_classes=2, pretrained=False, lr=2e-3)
    assert isinstance(source, ImageClassifier) and list(source.state_dict()) == list(reference.state_dict())
    for a, b in zip(source.state_dict().values(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert [g["lr"] for g in source.param_groups()] == [g["lr"] for g in reference.param_groups()]
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(source.eval()(x), reference.eval()(x))

    saved = load_file(str(zoo.build(tiny_zoo)))
    L.seed_everything(0, verbose=False)
    reference = ImageClassifier("test_resnet", num_classes=2, pretrained=False, lr=2e-3)
    data = DigitsDataModule(digits=[0, 1], data_config=dict(entry.data_cfg))
    connect(reference, data)
    quiet = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    L.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_val_batches=0, **quiet).fit(reference, data)
    state = reference.backbone.state_dict()
    assert set(saved) == set(state) | {"fc.weight", "fc.bias"}
    assert all(torch.equal(saved[k], v) for k, v in state.items())
    assert torch.equal(saved["fc.weight"], reference.head[-1].weight)


def test_lightning_run_builds_a_missing_zoo_backbone_once_before_the_run(tiny_zoo, tmp_path, capsys):
    from lightning_recipes.cli import main

    recipe = tmp_path / "digits.yaml"
    recipe.write_text(
        f"""
model:
  class_path: lightning_recipes.ImageClassifier
  init_args: {{model_name_or_path: {tiny_zoo}, num_classes: 2}}
data:
  class_path: lightning_recipes.DigitsDataModule
  init_args: {{digits: [0, 1], batch_size: 16, root: {tmp_path / "digits"}}}
trainer: {{max_epochs: 1, limit_train_batches: 2, limit_val_batches: 1, limit_test_batches: 1, logger: false,
  enable_progress_bar: false, default_root_dir: {tmp_path / "runs"}}}
"""
    )
    path = registry.ZOO[tiny_zoo].path()
    assert main(["run", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert out.count("building zoo model") == 1 and f"building zoo model {tiny_zoo} " in out
    assert path.is_file() and out.index("building zoo model") < out.index("Run directory:")
    assert main(["run", str(recipe)]) == 0
    assert "building zoo model" not in capsys.readouterr().out  # built: the run starts at once
