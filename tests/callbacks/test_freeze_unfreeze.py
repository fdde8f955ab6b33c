"""FreezeUnfreeze: trainable sets and LRs per epoch, BN policy, resume, schedulers.

The same under DDP (ranks in sync): test_freeze_unfreeze_ddp.py.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_recipes.callbacks import FreezeUnfreeze
from lightning_recipes.modules._base import TransferModule


class Toy(TransferModule):
    """Three backbone layer groups (the first with BatchNorm) and a linear head."""

    def __init__(self, lr: float = 0.1, **kwargs) -> None:
        kwargs.setdefault("optimizer", partial(torch.optim.SGD, momentum=0.9))
        super().__init__(lr=lr, **kwargs)
        self.backbone = nn.Sequential(
            nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8)
        )
        self.head = nn.Linear(8, 2)

    def layer_groups(self) -> list[nn.Module]:
        return [self.backbone[0:3], self.backbone[3:5], self.backbone[5:]]

    def forward(self, x):
        return self.head(self.backbone(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", F.cross_entropy(self(x), y))


def loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=g)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=8)


def trainer(tmp_path: Path, callbacks: list, max_epochs: int, **kwargs) -> L.Trainer:
    options = dict(
        accelerator="cpu",
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        num_sanity_val_steps=0,
    )
    options.update(kwargs)
    return L.Trainer(callbacks=callbacks, **options)


class Recorder(L.Callback):
    """Per epoch, after FreezeUnfreeze ran: trainable flag of each layer group, LR of each named group."""

    def __init__(self) -> None:
        self.trainable: list[list[bool]] = []
        self.lrs: list[dict[str, float]] = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.trainable.append(
            [all(p.requires_grad for p in g.parameters()) for g in pl_module.layer_groups()]
        )
        self.lrs.append({g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups})


def test_gradual_unfreeze_trainable_groups_and_discriminative_lrs(tmp_path):
    rec = Recorder()
    cb = FreezeUnfreeze(unfreeze_at_epoch=1, gradual_every=1, backbone_lr_ratio=0.5)
    trainer(tmp_path, [cb, rec], max_epochs=4, limit_train_batches=1, limit_val_batches=0).fit(
        Toy(layer_decay=0.5), loader()
    )
    assert rec.trainable == [
        [False, False, False],
        [False, False, True],
        [False, True, True],
        [True, True, True],
    ]
    assert rec.lrs[0] == {"head": 0.1}
    assert rec.lrs[1] == {"head": 0.1, "backbone.2": 0.05}
    assert rec.lrs[2] == {"head": 0.1, "backbone.2": 0.05, "backbone.1": 0.025}
    assert rec.lrs[3] == {"head": 0.1, "backbone.2": 0.05, "backbone.1": 0.025, "backbone.0": 0.0125}


def test_unfreeze_at_epoch_single_backbone_group_and_milestones(tmp_path):
    rec = Recorder()
    trainer(
        tmp_path,
        [FreezeUnfreeze(unfreeze_at_epoch=2), rec],
        max_epochs=3,
        limit_train_batches=1,
        limit_val_batches=0,
    ).fit(Toy(), loader())
    assert [all(t) for t in rec.trainable] == [False, False, True]
    assert [sorted(lrs) for lrs in rec.lrs] == [["head"], ["head"], ["backbone", "head"]]
    assert rec.lrs[2]["backbone"] == pytest.approx(0.01)

    rec = Recorder()
    trainer(
        tmp_path,
        [FreezeUnfreeze(milestones=[1, 2]), rec],
        max_epochs=3,
        limit_train_batches=1,
        limit_val_batches=0,
    ).fit(Toy(), loader())
    assert rec.trainable == [[False, False, False], [False, False, True], [True, True, True]]


def test_frozen_step_has_no_backbone_gradients_and_bn_stays_eval(tmp_path):
    seen = []

    class Check(L.Callback):
        def on_after_backward(self, trainer, pl_module):
            bn = pl_module.backbone[1]
            seen.append(
                (
                    trainer.current_epoch,
                    any(p.grad is not None for p in pl_module.backbone.parameters()),
                    all(p.grad is not None for p in pl_module.head.parameters()),
                    bn.training,
                )
            )

    model = Toy()
    bn = model.backbone[1]
    bn.running_mean.fill_(0.25)
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    cb = FreezeUnfreeze(unfreeze_at_epoch=1)
    trainer(
        tmp_path,
        [cb, Check()],
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=1,
    ).fit(model, loader(), loader())
    # Lightning calls model.train() after the sanity check and every validation: BN stays in eval mode.
    assert seen == [(0, False, True, False), (0, False, True, False)]
    for k, v in bn.state_dict().items():
        assert torch.equal(v, before[k]), k

    seen.clear()
    model = Toy()
    trainer(
        tmp_path,
        [FreezeUnfreeze(unfreeze_at_epoch=0), Check()],
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=0,
    ).fit(model, loader())
    assert seen == [(0, True, True, True)]
    assert model.backbone[1].num_batches_tracked.item() == 1


def test_train_bn_keeps_batchnorm_trainable(tmp_path):
    model = Toy()
    trainer(
        tmp_path,
        [FreezeUnfreeze(unfreeze_at_epoch=None, train_bn=True)],
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=0,
    ).fit(model, loader())
    bn = model.backbone[1]
    assert bn.training and bn.weight.requires_grad and bn.num_batches_tracked.item() == 2
    assert not model.backbone[0].weight.requires_grad


def test_user_module_with_plain_optimizer(tmp_path):
    class User(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Linear(4, 8)
            self.classifier = nn.Linear(8, 2)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self.classifier(self.backbone(x)), y)

        def configure_optimizers(self):
            return torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=0.01)

    model = User()
    w0 = model.backbone.weight.detach().clone()
    t = trainer(
        tmp_path,
        [FreezeUnfreeze(unfreeze_at_epoch=1, backbone_lr_ratio=0.2)],
        max_epochs=2,
        limit_train_batches=2,
    )
    t.fit(model, loader())
    groups = t.optimizers[0].param_groups
    assert [g.get("name") for g in groups] == [None, "backbone"]
    assert groups[1]["lr"] == pytest.approx(0.002)
    assert not torch.equal(model.backbone.weight, w0)

    class Layered(User):  # not a TransferModule: a `layer_decay` attribute is the module's decay
        layer_decay = 0.5

        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8))

    t = trainer(tmp_path, [FreezeUnfreeze(unfreeze_at_epoch=1, backbone_lr_ratio=0.2)], max_epochs=2)
    t.fit(Layered(), loader())
    lrs = [(g.get("name"), g["lr"]) for g in t.optimizers[0].param_groups]
    assert lrs == [(None, 0.01), ("backbone.1", pytest.approx(0.002)), ("backbone.0", pytest.approx(0.001))]


def test_bad_arguments_and_missing_backbone(tmp_path):
    with pytest.raises(ValueError, match="milestones"):
        FreezeUnfreeze(milestones=[3, 1])
    with pytest.raises(ValueError, match="not both"):
        FreezeUnfreeze(milestones=[1], gradual_every=1)
    with pytest.raises(ValueError, match="layer_decay must be in"):
        Toy(layer_decay=2.0)

    class NoBackbone(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(4, 2)

        def training_step(self, batch, batch_idx):
            return self.net(batch[0]).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    with pytest.raises(ValueError, match="backbone"):
        trainer(tmp_path, [FreezeUnfreeze()], max_epochs=1).fit(NoBackbone(), loader())


@pytest.mark.parametrize("kind", ["cosine", "onecycle", "plateau"])
def test_lr_schedulers_keep_working_across_unfreeze(tmp_path, kind):
    epochs, steps = 4, 2
    if kind == "cosine":
        sched = partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=epochs)
        interval = "epoch"
    elif kind == "onecycle":
        sched = partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.1, total_steps=epochs * steps)
        interval = "step"
    else:
        sched = partial(torch.optim.lr_scheduler.ReduceLROnPlateau, factor=0.5, patience=0, threshold=10.0)
        interval = "epoch"
    rec = Recorder()
    model = Toy(lr=0.1, lr_scheduler=sched, scheduler_interval=interval)
    t = trainer(
        tmp_path,
        [FreezeUnfreeze(unfreeze_at_epoch=1, backbone_lr_ratio=0.1), rec],
        max_epochs=epochs,
        limit_train_batches=steps,
        limit_val_batches=1,
    )
    t.fit(model, loader(), loader())
    heads = [lrs["head"] for lrs in rec.lrs]
    for lrs in rec.lrs[1:]:
        assert lrs["backbone"] == pytest.approx(0.1 * lrs["head"])
    final = {g["name"]: g["lr"] for g in t.optimizers[0].param_groups}
    assert final["backbone"] == pytest.approx(0.1 * final["head"])
    assert len(set(heads)) > 1  # the schedule really moved the head's LR
    if kind == "plateau":
        assert heads == [0.1 * 0.5**e for e in range(epochs)]


def _fit(tmp_path, max_epochs, ckpt_in=None, ckpt_out=None, unfreeze_at=2):
    torch.manual_seed(0)
    model = Toy(
        lr=0.05, lr_scheduler=partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=4), layer_decay=0.5
    )
    cb = FreezeUnfreeze(unfreeze_at_epoch=unfreeze_at, backbone_lr_ratio=0.5)
    t = trainer(tmp_path, [cb], max_epochs=max_epochs, limit_train_batches=3, limit_val_batches=0)
    t.fit(model, loader(), ckpt_path=ckpt_in)
    if ckpt_out:
        t.save_checkpoint(ckpt_out)
    return model, t, cb


@pytest.mark.parametrize("stop_after", [1, 3], ids=["before_unfreeze", "after_unfreeze"])
def test_resume_continues_with_same_stage_groups_lrs_and_scheduler(tmp_path, stop_after):
    full, t_full, cb_full = _fit(tmp_path / "full", 4)
    ckpt = tmp_path / "stop.ckpt"
    _fit(tmp_path / "a", stop_after, ckpt_out=ckpt)
    resumed, t_res, cb_res = _fit(tmp_path / "b", 4, ckpt_in=str(ckpt))

    assert cb_res.stage == cb_full.stage == 3
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    g_full, g_res = t_full.optimizers[0].param_groups, t_res.optimizers[0].param_groups
    assert [(g["name"], g["lr"], len(g["params"])) for g in g_full] == [
        (g["name"], g["lr"], len(g["params"])) for g in g_res
    ]
    assert (
        t_full.lr_scheduler_configs[0].scheduler.state_dict()
        == t_res.lr_scheduler_configs[0].scheduler.state_dict()
    )
    opt_full, opt_res = t_full.optimizers[0].state_dict()["state"], t_res.optimizers[0].state_dict()["state"]
    assert opt_full.keys() == opt_res.keys()
    for k in opt_full:
        assert torch.equal(opt_full[k]["momentum_buffer"], opt_res[k]["momentum_buffer"])


@pytest.mark.slow
def test_real_efficientnet_frozen_epoch_keeps_pretrained_weights_and_bn_stats(shared_dir, tmp_path):
    from lightning_recipes.modules._base import backbone_layer_groups
    from lightning_recipes.modules.image import ImageClassifier

    weights = shared_dir / "models" / "efficientnet_lite0"
    model = ImageClassifier(f"local-dir:{weights}", num_classes=3, pretrained=True, lr=0.01, layer_decay=0.5)
    assert len(backbone_layer_groups(model)) == 8  # stem + 7 stages
    start = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    ends = []

    class Keep(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            ends.append({k: v.clone() for k, v in pl_module.backbone.state_dict().items()})

    x, y = torch.randn(16, 3, 64, 64), torch.randint(0, 3, (16,))
    cb = FreezeUnfreeze(unfreeze_at_epoch=1, gradual_every=1)
    trainer(tmp_path, [cb, Keep()], max_epochs=2, limit_train_batches=2).fit(
        model, DataLoader(TensorDataset(x, y), batch_size=8)
    )
    for k, v in start.items():  # weights and BatchNorm running statistics, bitwise
        assert torch.equal(v, ends[0][k]), k
    changed = {k.split(".")[0] for k, v in start.items() if not torch.equal(v, ends[1][k])}
    assert changed and changed <= {"blocks", "conv_head", "bn2"}  # only the top group trained at epoch 1
    assert all(
        torch.equal(start[k], ends[1][k]) for k in start if k.startswith(("conv_stem", "bn1", "blocks.0."))
    )
