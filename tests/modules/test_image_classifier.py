from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from lightning_recipes import ImageClassifier, ImageDataModule, zoo
from lightning_recipes._hub import PretrainedLoadError


def tiny(**kwargs) -> ImageClassifier:
    kwargs.setdefault("num_classes", 3)
    return ImageClassifier("test_resnet", pretrained=False, **kwargs)


def test_backbone_head_contract_and_param_groups():
    model = tiny(lr=1e-2, backbone_lr=1e-3, hidden_dim=8)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    groups = {g["name"]: g for g in model.param_groups()}
    assert groups["head"]["lr"] == 1e-2 and groups["backbone"]["lr"] == 1e-3
    assert sum(p.numel() for p in groups["backbone"]["params"]) == sum(
        p.numel() for p in model.backbone.parameters()
    )
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    assert [g["name"] for g in model.param_groups()] == ["head"]
    optimizer = model.configure_optimizers()
    assert [g["lr"] for g in optimizer.param_groups] == [1e-2]


def test_scheduler_and_custom_optimizer_from_callables():
    model = tiny(
        optimizer=lambda params: torch.optim.SGD(params, momentum=0.9),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5),
        scheduler_interval="step",
    )
    config = model.configure_optimizers()
    assert isinstance(config["optimizer"], torch.optim.SGD)
    assert config["lr_scheduler"]["interval"] == "step"
    plateau = tiny(lr_scheduler=lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt))
    assert plateau.configure_optimizers()["lr_scheduler"]["monitor"] == "val/loss"


def test_losses_match_torch_definitions():
    logits, target = torch.randn(4, 3), torch.tensor([0, 2, 1, 2])
    model = tiny(label_smoothing=0.1, class_weights=[1.0, 2.0, 0.5])
    expected = F.cross_entropy(logits, target, weight=torch.tensor([1.0, 2.0, 0.5]), label_smoothing=0.1)
    assert torch.allclose(model.loss(logits, target), expected)
    multi = tiny(task="multilabel")
    labels = torch.tensor([[1, 0, 1], [0, 0, 1], [1, 1, 0], [0, 1, 0]])
    assert torch.allclose(
        multi.loss(logits, labels), F.binary_cross_entropy_with_logits(logits, labels.float())
    )
    assert torch.allclose(multi.probabilities(logits), logits.sigmoid())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task": "ranking"}, "task='ranking'"),
        ({"class_weights": [1.0]}, "class_weights has 1"),
        ({"activation": "swish"}, "activation='swish'"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"agc_clip_factor": -1.0}, "agc_clip_factor"),
    ],
)
def test_bad_arguments_name_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        tiny(**kwargs)


def test_unknown_backbone_suggests_names():
    with pytest.raises(ValueError, match=r"Unknown backbone 'resnet1800'.*Did you mean"):
        ImageClassifier("resnet1800", pretrained=False)


def test_missing_local_dir_and_weights_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="folder not found"):
        ImageClassifier(f"local-dir:{tmp_path / 'nope'}")
    with pytest.raises(FileNotFoundError, match="is not a file"):
        ImageClassifier("test_resnet", pretrained=str(tmp_path / "nope.safetensors"))


def test_unreachable_hub_weights_give_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedLoadError, match=r"resnet18\.a1_in1k.*local-dir:"):
        ImageClassifier("resnet18.a1_in1k", pretrained=True)


def test_fit_logs_metrics_and_learns(image_folder, tiny_trainer_kwargs):
    root = image_folder(splits=("train", "val"), per_class=8)
    data = ImageDataModule(root=str(root), batch_size=8, num_workers=0, image_size=32, augment=False)
    L.seed_everything(0)
    model = tiny(lr=1e-2)
    trainer = L.Trainer(
        **{**tiny_trainer_kwargs, "max_epochs": 8, "limit_train_batches": None, "limit_val_batches": None}
    )
    trainer.fit(model, datamodule=data)
    metrics = trainer.callback_metrics
    for key in (
        "train/loss",
        "train/acc",
        "val/loss",
        "val/acc",
        "val/f1",
        "val/precision",
        "val/recall",
        "val/mcc",
    ):
        assert key in metrics, key
    assert metrics["val/acc"] >= 0.9  # three colours: a trivially separable task
    probs = torch.cat(
        [out["probabilities"] for out in trainer.predict(model, dataloaders=data.val_dataloader())]
    )
    assert probs.shape == (24, 3) and torch.allclose(probs.sum(-1), torch.ones(24), atol=1e-5)


def test_checkpoint_reload_gives_identical_logits(tmp_path, tiny_trainer_kwargs, image_folder):
    weights = tmp_path / "backbone.safetensors"
    save_file(ImageClassifier("test_resnet", pretrained=False).backbone.state_dict(), str(weights))
    model = ImageClassifier("test_resnet", num_classes=3, pretrained=str(weights), hidden_dim=4)
    data = ImageDataModule(
        root=str(image_folder(splits=("train", "val"))), batch_size=4, num_workers=0, image_size=32
    )
    trainer = L.Trainer(**tiny_trainer_kwargs)
    trainer.fit(model, datamodule=data)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    weights.unlink()  # reloading must not need the pretrained weights again
    reloaded = ImageClassifier.load_from_checkpoint(path)
    x = torch.randn(2, 3, 32, 32)
    model.eval(), reloaded.eval()
    assert torch.equal(model(x), reloaded(x))
    assert reloaded.hparams.pretrained is False and reloaded.hparams.hidden_dim == 4


def test_class_names_from_connect_survive_the_checkpoint(tmp_path, image_folder):
    """Plain Python: label_names not given (so not in hparams) but adopted by connect() are saved."""
    from lightning_recipes import connect

    model = tiny()
    connect(model, ImageDataModule(root=str(image_folder(splits=("",))), val_fraction=0.0))
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    assert ImageClassifier.load_from_checkpoint(tmp_path / "model.ckpt").label_names == ["a", "b", "c"]


def test_zoo_backbone_is_pretrained_on_the_source_task():
    """resnet10t.digits04 is built once (trained on digits 0-4) and cached; pretrained=False: random."""
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
    monkeypatch.setitem(zoo.ZOO, "test_resnet.digits01", zoo.DigitsWeights("test_resnet", (0, 1), epochs=1))
    for name in zoo.SEED_ENV_VARS:  # put back after the test whatever seed_everything sets in it
        monkeypatch.delenv(name, raising=False)
    return "test_resnet.digits01"


def random_state() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "env": {name: os.environ.get(name) for name in zoo.SEED_ENV_VARS},
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
def test_zoo_build_leaves_the_random_state_untouched(tiny_zoo, seeded, caplog):
    if seeded:
        L.seed_everything(3, workers=True)  # sets PL_GLOBAL_SEED and PL_SEED_WORKERS
    torch.rand(3), np.random.rand(3), random.random()  # somewhere in the streams
    before = random_state()
    assert before["env"]["PL_GLOBAL_SEED"] == ("3" if seeded else None)
    weights = zoo.ZOO[tiny_zoo]
    assert not weights.path().exists()
    with caplog.at_level(logging.INFO):
        assert weights.build() == weights.path() and weights.path().is_file()
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("lightning_recipes:")]
    assert "random state is left untouched" in line and str(weights.path()) in line
    assert_same_random_state(before, random_state())
    assert weights.build() == weights.path()  # cached: returned at once
    assert_same_random_state(before, random_state())


def test_zoo_backbone_gives_the_same_model_on_a_cold_and_a_warm_cache(tiny_zoo):
    """A build on first use inside a seeded run changes nothing the run draws afterwards."""

    def seeded_model() -> tuple[ImageClassifier, torch.Tensor]:
        L.seed_everything(7)
        model = ImageClassifier(tiny_zoo, num_classes=3, pretrained=True)
        return model, torch.rand(4)  # the next draw (the run's data order, dropout...)

    assert not zoo.ZOO[tiny_zoo].path().exists()
    cold, cold_next = seeded_model()
    assert zoo.ZOO[tiny_zoo].path().is_file()
    warm, warm_next = seeded_model()
    for a, b in zip(cold.state_dict().values(), warm.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(cold.head[-1].weight, warm.head[-1].weight)
    assert torch.equal(cold_next, warm_next)


def test_zoo_source_model_matches_image_classifier():
    """The zoo trains a model built like ImageClassifier(arch, pretrained=False): same draws, same weights."""
    L.seed_everything(0, verbose=False)
    source = zoo._SourceClassifier("test_resnet", num_classes=5, lr=2e-3)
    L.seed_everything(0, verbose=False)
    reference = ImageClassifier("test_resnet", num_classes=5, pretrained=False, lr=2e-3)
    assert list(source.state_dict()) == list(reference.state_dict())
    for a, b in zip(source.state_dict().values(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert [g["lr"] for g in source.configure_optimizers().param_groups] == [
        g["lr"] for g in reference.configure_optimizers().param_groups
    ]
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(source.eval()(x), reference.eval()(x))


@pytest.mark.slow
def test_finetune_real_efficientnet_lite0(shared_dir, tmp_path, tiny_trainer_kwargs):
    """Real ImageNet weights from ../shared load through local-dir: and fine-tune on real digits."""
    from safetensors.torch import load_file

    from lightning_recipes import DigitsDataModule

    folder = shared_dir / "models" / "efficientnet_lite0"
    model = ImageClassifier(f"local-dir:{folder}", num_classes=2, pretrained=True, lr=1e-2, backbone_lr=1e-3)
    stored = load_file(str(folder / "model.safetensors"))
    assert torch.equal(model.backbone.conv_stem.weight, stored["conv_stem.weight"])
    data = DigitsDataModule(
        digits=[0, 1], train_per_class=32, root=str(tmp_path), image_size=64, batch_size=16
    )
    L.seed_everything(0)
    trainer = L.Trainer(
        **{**tiny_trainer_kwargs, "max_epochs": 5, "limit_train_batches": None, "limit_val_batches": None}
    )
    trainer.fit(model, datamodule=data)
    assert not torch.equal(model.backbone.conv_stem.weight, stored["conv_stem.weight"])
    assert trainer.callback_metrics["val/acc"] > 0.8


def test_a_checkpoint_that_does_not_fit_is_one_short_error(tmp_path: Path) -> None:
    model = ImageClassifier("test_resnet", num_classes=3, pretrained=False)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, accelerator="cpu")
    trainer.strategy.connect(model)
    path = tmp_path / "three.ckpt"
    trainer.save_checkpoint(path)
    with pytest.raises(ValueError) as info:
        ImageClassifier.load_from_checkpoint(path, num_classes=5)
    message = str(info.value)
    assert "2 weight(s) have other shapes" in message
    assert (
        "head.1.weight: checkpoint (3, 96) vs model (5, 96)" in message
        and "another backbone or num_classes" in message
    )
    assert len(message.splitlines()) == 1  # one line, not one per tensor


def test_one_nan_batch_makes_the_evaluation_loss_nan_and_stops_the_run(tiny_trainer_kwargs):
    """The epoch's val/test loss is a mean over batches: one NaN batch is not averaged away (torchmetrics'
    default drops NaN with a warning), so NonFiniteGuard sees it and the stage fails."""
    from torch.utils.data import DataLoader

    from lightning_recipes.callbacks import NonFiniteGuard, TrainingDiverged

    torch.manual_seed(0)
    model = ImageClassifier("test_resnet", pretrained=False, num_classes=2)
    images = torch.randn(8, 3, 32, 32)
    images[5] = float("nan")  # the second batch of 4 holds one NaN image
    loader = DataLoader(list(zip(images, torch.tensor([0, 1] * 4), strict=True)), batch_size=4)
    kwargs = {**tiny_trainer_kwargs, "limit_test_batches": 2}
    with pytest.raises(TrainingDiverged, match=r"test/loss = nan"):
        L.Trainer(**kwargs, callbacks=[NonFiniteGuard()]).test(model, loader)
    model.eval_losses["test"].reset()
    model.eval_losses["test"].update(torch.tensor([1.0, 3.0]))
    assert model.eval_losses["test"].compute() == 2.0  # finite losses average as before
