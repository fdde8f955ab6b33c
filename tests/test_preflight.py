"""Options that cannot work together are refused by ``lightning run`` before the model is built."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lightning_recipes.callbacks import EMA, FreezeUnfreeze, LRFinder
from lightning_recipes.cli import main
from lightning_recipes.preflight import problems, strategy_class

REPO = Path(__file__).resolve().parents[1]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")


@pytest.fixture
def never_built(monkeypatch):
    """Fails the test if an ``ImageClassifier`` builds its backbone (the refusal must come first)."""
    from lightning_recipes.modules import image

    def refuse(*args, **kwargs):
        raise AssertionError("the model was built before the options were checked")

    monkeypatch.setattr(image, "create_backbone", refuse)


def refused(capsys, *overrides: str) -> str:
    code = main(["run", str(REPO / "recipes" / "image" / "freeze_then_unfreeze_resnet.yaml"), *overrides])
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.startswith("error: IncompatibleOptions: "), err
    return err.splitlines()[0]


@NO_CUDA
def test_a_gpu_accelerator_without_a_gpu_is_refused_before_the_model(never_built, capsys):
    line = refused(capsys, "--trainer.accelerator=gpu")
    assert "trainer.accelerator=gpu: this machine has no CUDA GPU" in line
    assert "use --trainer.accelerator=cpu" in line


@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed_stage_2"])
def test_a_strategy_a_callback_refuses_is_refused_before_the_model(never_built, capsys, strategy):
    """The recipe's FreezeUnfreeze and LRFinder both refuse sharded strategies: one line names each."""
    line = refused(capsys, f"--trainer.strategy={strategy}")
    assert f"FreezeUnfreeze with trainer.strategy={strategy}: FreezeUnfreeze supports single-device" in line
    assert f"LRFinder with trainer.strategy={strategy}: LRFinder does not run under" in line
    assert "--trainer.strategy=ddp" in line


def test_a_strategy_class_path_is_checked_too(never_built, capsys):
    fsdp = json.dumps({"class_path": "lightning_recipes.strategies.TransformerFSDP"})
    line = refused(capsys, f"--trainer.strategy={fsdp}")
    assert "FreezeUnfreeze with trainer.strategy=TransformerFSDP" in line


def test_the_refusal_is_the_callbacks_own():
    """Preflight asks the callbacks (``strategy_refusal``); their ``setup`` raises the same text."""
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, SingleDeviceStrategy

    for cls in (FreezeUnfreeze, LRFinder, EMA):
        assert (
            cls.strategy_refusal(DDPStrategy) is None and cls.strategy_refusal(SingleDeviceStrategy) is None
        )
        assert cls.strategy_refusal(FSDPStrategy).startswith(cls.__name__)
    assert strategy_class("ddp") is DDPStrategy and strategy_class("auto") is None


def test_fused_optimizer_with_clipping_under_mixed_precision():
    """Refused for a module that does not clip fused optimizers itself; accepted for this library's."""
    from jsonargparse import Namespace

    def recipe(model: str, precision: str = "bf16-mixed", clip: float = 1.0) -> Namespace:
        optimizer = Namespace(class_path="torch.optim.AdamW", init_args=Namespace(fused=True))
        return Namespace(
            trainer=Namespace(precision=precision, gradient_clip_val=clip, accelerator="cpu"),
            model=Namespace(class_path=model, init_args=Namespace(optimizer=optimizer)),
        )

    (line,) = problems(recipe("lightning.pytorch.demos.boring_classes.BoringModel"))
    assert line.startswith("model.init_args.optimizer fused=true with trainer.gradient_clip_val=1.0 under")
    assert "set fused: false or drop gradient_clip_val" in line
    assert problems(recipe("lightning_recipes.TextClassifier")) == []
    assert problems(recipe("lightning.pytorch.demos.boring_classes.BoringModel", precision="32-true")) == []
    assert problems(recipe("lightning.pytorch.demos.boring_classes.BoringModel", clip=0.0)) == []
