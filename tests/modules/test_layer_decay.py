"""Layer-wise LR decay (``TransferModule(layer_decay=)``): one grouping of the backbone for every family,
the same groups and ratios that FreezeUnfreeze unfreezes."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_recipes.callbacks import FreezeUnfreeze
from lightning_recipes.modules._base import TransferModule, backbone_layer_groups
from lightning_recipes.modules.image import ImageClassifier


class Blocks(TransferModule):
    """A backbone of three blocks given by ``layer_groups()`` and a linear head."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.backbone = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 8))
        self.head = nn.Linear(8, 2)

    def layer_groups(self) -> list[nn.Module]:
        return [self.backbone[0:2], self.backbone[2], self.backbone[3]]

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.head(self.backbone(x)), y)


def image_model(**kwargs) -> ImageClassifier:
    return ImageClassifier("test_resnet", num_classes=2, pretrained=False, lr=0.1, **kwargs)


def test_timm_backbone_is_grouped_by_stage():
    model = image_model()
    groups = backbone_layer_groups(model)
    assert len(groups) == 5  # stem + 4 stages
    assert sum(len(g) for g in groups) == len(list(model.backbone.parameters()))


def test_image_classifier_layer_decay_gives_one_group_per_stage():
    model = image_model(backbone_lr=0.01, layer_decay=0.5)
    groups = model.param_groups()
    assert [g["name"] for g in groups] == ["head"] + [f"backbone.{i}" for i in range(5)]
    assert [g["lr"] for g in groups] == pytest.approx([0.1, 0.01 / 16, 0.01 / 8, 0.01 / 4, 0.01 / 2, 0.01])
    for group, block in zip(groups[1:], backbone_layer_groups(model), strict=True):
        assert [id(p) for p in group["params"]] == [id(p) for p in block]
    assert [g["name"] for g in image_model().param_groups()] == ["head", "backbone"]


def test_layer_decay_outside_0_1_is_refused():
    with pytest.raises(ValueError, match=r"layer_decay must be in \(0, 1\].*got 0"):
        Blocks(layer_decay=0.0)


@pytest.mark.parametrize("make, shape", [(Blocks, (4,)), (image_model, (3, 32, 32))], ids=["blocks", "timm"])
def test_unfrozen_groups_are_the_groups_and_lr_ratios_of_the_modules_layer_decay(tmp_path, make, shape):
    """Once all is unfrozen the optimizer holds the groups that the module's layer_decay gives without the
    callback: same names, same parameters in the same order, same LRs relative to the head."""
    model = make(layer_decay=0.5)
    names = {id(p): n for n, p in model.named_parameters()}
    own = {g["name"]: ([names[id(p)] for p in g["params"]], g["lr"]) for g in model.param_groups()}
    assert list(own) == ["head"] + [f"backbone.{i}" for i in range(len(own) - 1)]
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=2,
        limit_train_batches=1,
        callbacks=[FreezeUnfreeze(milestones=[1], backbone_lr_ratio=1.0)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    x = torch.randn(8, *shape)
    trainer.fit(model, DataLoader(TensorDataset(x, torch.randint(0, 2, (8,))), batch_size=4))
    unfrozen = {
        g["name"]: ([names[id(p)] for p in g["params"]], g["lr"]) for g in trainer.optimizers[0].param_groups
    }
    assert sorted(unfrozen) == sorted(own)
    for name, (params, lr) in own.items():
        assert unfrozen[name][0] == params, name
        assert unfrozen[name][1] / unfrozen["head"][1] == pytest.approx(lr / own["head"][1]), name
