"""EMA (lightning_recipes/callbacks/ema.py): the average against a hand-computed EMA of the trained weights,
validation on the average and training on the live weights, checkpoints and resume, evaluation stages after
fit, and bad input. FreezeUnfreeze, the feature cache and adapters: test_ema_transfer.py."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy, SingleDeviceStrategy
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_recipes import _compat
from lightning_recipes.callbacks import EMA
from lightning_recipes.callbacks.ema import CHECKPOINT_KEY


class Net(L.LightningModule):
    """A BatchNorm (float and integer buffers) and a linear layer; records the weights each step sees."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(4)
        self.layer = nn.Linear(4, 1)
        self.trained_on: list[torch.Tensor] = []
        self.validated_on: list[torch.Tensor] = []

    def forward(self, x):
        return self.layer(self.norm(x))

    def training_step(self, batch, batch_idx):
        self.trained_on.append(self.layer.weight.detach().clone())
        return F.mse_loss(self(batch[0]), batch[0].sum(1, keepdim=True))

    def validation_step(self, batch, batch_idx):
        self.validated_on.append(self.layer.weight.detach().clone())
        self.log("val/loss", F.mse_loss(self(batch[0]), batch[0].sum(1, keepdim=True)))

    test_step = validation_step

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Live(L.Callback):
    """The module's state after each optimizer step (placed before EMA: it sees the live weights)."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.states.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})


def loader(n: int = 40) -> DataLoader:
    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(x), batch_size=8)


def trainer(tmp_path, callbacks, epochs: int = 2, **kwargs) -> L.Trainer:
    options = dict(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1,
        default_root_dir=str(tmp_path),
    )
    return L.Trainer(callbacks=callbacks, **{**options, **kwargs})


def hand_ema(states: list[dict[str, torch.Tensor]], decay: float, start: int = 0) -> dict[str, torch.Tensor]:
    """avg = w after each of the first ``start`` steps (and the first), then decay * avg + (1 - decay) * w;
    integer tensors are the live ones."""
    avg: dict[str, torch.Tensor] = {}
    for step, state in enumerate(states, 1):
        for k, w in state.items():
            copy = step == 1 or step <= start or not w.is_floating_point()
            avg[k] = w.clone() if copy else decay * avg[k] + (1 - decay) * w
    return avg


def assert_state(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(expected)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], atol=1e-6, rtol=0, msg=k)


def test_the_model_after_fit_holds_the_ema_of_the_trained_weights(tmp_path):
    torch.manual_seed(0)
    model, live, ema = Net(), Live(), EMA(decay=0.7, update_starting_at_step=3)
    trainer(tmp_path, [live, ema]).fit(model, loader(), loader(8))
    assert len(live.states) == 10 and ema.updates == 10
    expected = hand_ema(live.states, 0.7, start=3)
    assert_state(model.state_dict(), expected)
    assert not torch.allclose(expected["layer.weight"], live.states[-1]["layer.weight"])
    # BatchNorm's running mean is averaged, its integer step count is the live one
    assert int(model.norm.num_batches_tracked) == 10


def test_validation_runs_on_the_average_and_training_goes_on_from_the_live_weights(tmp_path):
    torch.manual_seed(0)
    model, live = Net(), Live()
    trainer(tmp_path, [live, EMA(decay=0.5)]).fit(model, loader(), loader(8))
    # epoch 0 ends after step 5: its validation saw the average of steps 1-5
    first, second = model.validated_on
    torch.testing.assert_close(first, hand_ema(live.states[:5], 0.5)["layer.weight"], atol=1e-6, rtol=0)
    torch.testing.assert_close(second, hand_ema(live.states, 0.5)["layer.weight"], atol=1e-6, rtol=0)
    # step 6 trained on the live weights of step 5, not on the average swapped in for validation
    assert torch.equal(model.trained_on[5], live.states[4]["layer.weight"])


def fit_with_checkpoints(tmp_path, epochs: int, ckpt_path=None):
    torch.manual_seed(0)
    model, live = Net(), Live()
    checkpoints = ModelCheckpoint(tmp_path / "ckpt", "{epoch}", save_top_k=-1, save_last=True)
    run = trainer(tmp_path, [live, EMA(decay=0.6), checkpoints], epochs=epochs, enable_checkpointing=True)
    run.fit(model, loader(), loader(8), ckpt_path=ckpt_path)
    return model, live, run


def test_checkpoints_hold_the_average_and_resume_restores_average_and_live_weights(tmp_path):
    _, live, _ = fit_with_checkpoints(tmp_path / "a", epochs=2)
    state = torch.load(tmp_path / "a" / "ckpt" / "last.ckpt", weights_only=True)
    assert_state(state["state_dict"], hand_ema(live.states, 0.6))
    # the live weights, less those equal to the average (the integer step count)
    floats = sorted(k for k in state["state_dict"] if k != "norm.num_batches_tracked")
    assert sorted(state["current_model_state"]) == floats
    assert torch.equal(state["current_model_state"]["layer.weight"], live.states[-1]["layer.weight"])
    assert state[CHECKPOINT_KEY] == {"decay": 0.6, "updates": 10, "update_starting_at_step": 0}

    resumed, resumed_live, _ = fit_with_checkpoints(
        tmp_path / "a", epochs=3, ckpt_path=tmp_path / "a" / "ckpt" / "last.ckpt"
    )
    straight, straight_live, _ = fit_with_checkpoints(tmp_path / "b", epochs=3)
    assert_state(resumed.state_dict(), straight.state_dict())  # the average
    assert_state(resumed_live.states[-1], straight_live.states[-1])  # the live weights
    assert_state(resumed.state_dict(), hand_ema(straight_live.states, 0.6))


def test_evaluation_after_fit_uses_the_checkpoints_average(tmp_path):
    model, live, run = fit_with_checkpoints(tmp_path, epochs=2)
    first = torch.load(tmp_path / "ckpt" / "epoch=0.ckpt", weights_only=True)
    for stage in (run.validate, run.test):
        model.validated_on.clear()
        stage(model, loader(8), ckpt_path=tmp_path / "ckpt" / "epoch=0.ckpt")
        # Lightning's own callback loads current_model_state (the live weights) here
        (seen,) = model.validated_on
        assert torch.equal(seen, first["state_dict"]["layer.weight"])
        assert torch.equal(model.layer.weight, first["state_dict"]["layer.weight"])
    assert not torch.equal(first["state_dict"]["layer.weight"], live.states[4]["layer.weight"])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"decay": 1.0}, "EMA decay must be in (0, 1)"),
        ({"decay": 0.0}, "EMA decay must be in (0, 1)"),
        ({"decay": -0.5}, "EMA decay must be in (0, 1)"),
        ({"update_starting_at_step": -1}, "update_starting_at_step must be >= 0, got -1"),
    ],
)
def test_bad_options_are_one_line_errors(options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        EMA(**options)


def test_sharding_strategies_are_refused():
    assert EMA.strategy_refusal(SingleDeviceStrategy) is None and EMA.strategy_refusal(DDPStrategy) is None
    for strategy in (FSDPStrategy, DeepSpeedStrategy):
        assert f"EMA supports single-device and DDP strategies, not {strategy.__name__}" in (
            EMA.strategy_refusal(strategy) or ""
        )


def test_what_cannot_work_is_refused_before_training(tmp_path):
    model = Net()
    with pytest.raises(ValueError, match=r"trainer.precision=bf16-true.*use one of 32-true, 16-mixed"):
        trainer(tmp_path, [EMA()], precision="bf16-true").fit(model, loader())
    weights_only = ModelCheckpoint(dirpath=tmp_path, save_weights_only=True)
    with pytest.raises(ValueError, match=r"save_weights_only=True.*hold the live weights"):
        trainer(tmp_path, [EMA(), weights_only], enable_checkpointing=True).fit(model, loader())

    class Grows(Net):
        def setup(self, stage):
            self.extra = nn.Linear(2, 2)

    with pytest.raises(RuntimeError, match=r"Grows's weights changed after EMA copied it.*build every layer"):
        trainer(tmp_path, [EMA()]).fit(Grows(), loader())
    assert model.trained_on == []


def test_yaml_class_path_builds_it():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--callback", type=L.Callback)
    config = parser.parse_args(
        ["--callback", '{"class_path": "lightning_recipes.callbacks.EMA", "init_args": {"decay": 0.99}}']
    )
    callback = parser.instantiate_classes(config).callback
    assert isinstance(callback, EMA) and callback.decay == 0.99 and callback.update_starting_at_step == 0
    assert _compat.average_model(callback) is None and callback.updates == 0
