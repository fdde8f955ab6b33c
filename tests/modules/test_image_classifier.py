from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from lightning_recipes import ImageClassifier, ImageDataModule
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
