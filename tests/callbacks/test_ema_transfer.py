"""EMA with what transfer learning brings: a backbone FreezeUnfreeze unfreezes mid-run (with and without the
feature cache) and a LoRA adapter with trainable-only checkpoints."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import peft
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from test_ema import Live, assert_state, hand_ema
from torch.utils.data import DataLoader, TensorDataset

from lightning_recipes import ImageClassifier
from lightning_recipes.callbacks import EMA, FreezeUnfreeze
from lightning_recipes.modules._adapters import BASE_KEY


def images(n: int = 24, seed: int = 0) -> TensorDataset:
    x = torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    return TensorDataset(x, (x.mean((1, 2, 3)) > 0).long())


def fit(tmp_path: Path, model, callbacks, epochs: int = 2, ckpt_path=None) -> tuple[Live, Path]:
    live = Live()
    folder = tmp_path / "ckpt"
    checkpoints = ModelCheckpoint(folder, "{epoch}", save_top_k=-1, save_last=True)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        callbacks=[*callbacks, live, EMA(decay=0.5), checkpoints],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
    )
    train, val = DataLoader(images(), batch_size=8), DataLoader(images(16, seed=1), batch_size=8)
    trainer.fit(model, train, val, ckpt_path=ckpt_path)
    return live, folder


def unfreezing_run(tmp_path: Path, cache: bool):
    torch.manual_seed(0)
    model = ImageClassifier("test_resnet", num_classes=2, pretrained=False, lr=0.05)
    initial = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("backbone.")}
    unfreeze = FreezeUnfreeze(unfreeze_at_epoch=1, cache_features=cache, cache_dir=str(tmp_path / "fc"))
    live, folder = fit(tmp_path, model, [unfreeze])
    return model, initial, live, folder


def test_a_backbone_unfrozen_mid_run_is_averaged_from_its_pretrained_values_on(tmp_path):
    model, initial, live, folder = unfreezing_run(tmp_path, cache=False)
    first = torch.load(folder / "epoch=0.ckpt", weights_only=True)
    # frozen in epoch 0: the average is the pretrained backbone, bit for bit (BatchNorm statistics too),
    # and the live copy of the checkpoint leaves it out
    for k, v in initial.items():
        assert torch.equal(first["state_dict"][k], v), k
    assert not any(k.startswith("backbone.") for k in first["current_model_state"])
    assert any(k.startswith("head.") for k in first["current_model_state"])
    # from epoch 1 it trains and the average follows it: the EMA of the 6 steps' weights
    assert len(live.states) == 6
    assert_state(model.state_dict(), hand_ema(live.states, 0.5))
    weight = "backbone.conv1.0.weight"
    assert not torch.equal(model.state_dict()[weight], initial[weight])


def test_the_feature_cache_gives_the_same_average(tmp_path):
    cached, *_ = unfreezing_run(tmp_path / "cached", cache=True)
    uncached, *_ = unfreezing_run(tmp_path / "uncached", cache=False)
    for (k, a), b in zip(cached.state_dict().items(), uncached.state_dict().values(), strict=True):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=k)


def test_adapter_run_averages_the_adapter_and_its_trainable_only_checkpoints_load_and_resume(tmp_path):
    import timm
    from timm.models import save_for_hf

    torch.manual_seed(0)
    base = tmp_path / "base"
    save_for_hf(timm.create_model("test_resnet", pretrained=False), str(base), safe_serialization=True)

    def build() -> ImageClassifier:
        torch.manual_seed(1)
        return ImageClassifier(f"local-dir:{base}", num_classes=2, adapter=peft.LoraConfig(r=4), lr=0.05)

    model = build()
    live, folder = fit(tmp_path / "a", model, [])
    expected = hand_ema(live.states, 0.5)
    assert_state(model.state_dict(), expected)
    lora = [k for k in expected if "lora_B" in k]
    assert lora and not torch.equal(expected[lora[0]], live.states[-1][lora[0]])

    state = torch.load(folder / "last.ckpt", weights_only=True)
    assert BASE_KEY in state  # trainable only: the frozen base weights are left out ...
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and not frozen & (set(state["state_dict"]) | set(state["current_model_state"]))
    assert torch.equal(state["current_model_state"][lora[0]], live.states[-1][lora[0]])
    # ... and their fingerprint, taken from the average, matches the rebuilt base: it loads
    loaded = ImageClassifier.load_from_checkpoint(folder / "last.ckpt")
    assert_state(loaded.state_dict(), expected)

    resumed = build()
    resumed_live, _ = fit(tmp_path / "a", resumed, [], epochs=3, ckpt_path=folder / "last.ckpt")
    straight = build()
    straight_live, _ = fit(tmp_path / "b", straight, [], epochs=3)
    assert_state(resumed_live.states[-1], straight_live.states[-1])
    assert_state(resumed.state_dict(), straight.state_dict())
