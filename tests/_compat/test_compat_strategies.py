"""DDP, FSDP and fused optimizers in lightning_recipes/_compat/_lightning.py, one test each.

An upgrade breaking a private API fails here, loudly, naming the library, its installed version, the
private name and the version the entry was checked against (``compat_helpers.broken``).
"""

from __future__ import annotations

import inspect

import lightning as L
import torch
from compat_helpers import Tiny, broken, params
from torch import nn
from torch.utils.data import DataLoader

from lightning_recipes import _compat


def test_rewrap_ddp_builds_a_new_wrapper_of_the_same_module(tmp_path):
    """One process (gloo): the wrapper is replaced; that it reduces the unfrozen parameters is tested by
    test_freeze_unfreeze_ddp.py::test_ddp_ranks_hold_identical_weights_after_unfreeze (slow, 2 processes)."""
    import torch.distributed as dist
    from lightning.pytorch.accelerators import CPUAccelerator
    from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
    from torch.nn.parallel import DistributedDataParallel

    assert params(DDPStrategy.configure_ddp) == ["self"], broken("lightning", "DDPStrategy.configure_ddp()")
    assert not _compat.rewrap_ddp(SingleDeviceStrategy(device="cpu"))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        module = Tiny()
        frozen = nn.Linear(2, 2).requires_grad_(False)
        module.extra = frozen
        strategy = DDPStrategy(accelerator=CPUAccelerator(), parallel_devices=[torch.device("cpu")])
        strategy.connect(module)
        assert not _compat.rewrap_ddp(strategy)  # not wrapped yet: nothing to do
        strategy.configure_ddp()
        old = strategy.model
        assert isinstance(old, DistributedDataParallel)
        frozen.requires_grad_(True)
        assert _compat.rewrap_ddp(strategy)
        new = strategy.model
        assert isinstance(new, DistributedDataParallel) and new is not old and new.module is module, broken(
            "lightning",
            "setting DDPStrategy.model to the LightningModule and calling configure_ddp() re-wraps it",
        )
        assert strategy.lightning_module is module
    finally:
        dist.destroy_process_group()


def test_optimizer_unscales_itself_for_fused_optimizers_only():
    params = [nn.Parameter(torch.zeros(2))]
    assert _compat.optimizer_unscales_itself(torch.optim.AdamW(params, fused=True)), broken(
        "torch", "a fused AdamW takes the grad scaler's scale into its step (_step_supports_amp_scaling)"
    )
    assert not _compat.optimizer_unscales_itself(torch.optim.AdamW(params))
    assert not _compat.optimizer_unscales_itself(torch.optim.SGD(params, lr=0.1))


def test_fsdp_activation_checkpointing_is_what_the_constructor_sets():
    from lightning.pytorch.strategies import FSDPStrategy

    built = FSDPStrategy(activation_checkpointing_policy={nn.Linear})
    assert "_activation_checkpointing_kwargs" in vars(built), broken(
        "lightning", "FSDPStrategy._activation_checkpointing_kwargs"
    )
    late = FSDPStrategy()
    _compat.set_fsdp_activation_checkpointing(late, {nn.Linear})
    assert late._activation_checkpointing_kwargs.keys() == built._activation_checkpointing_kwargs.keys()
    policy = late._activation_checkpointing_kwargs["auto_wrap_policy"]
    assert policy(module=nn.Linear(1, 1), recurse=False, nonwrapped_numel=0), broken(
        "lightning", "_activation_checkpointing_kwargs(None, classes) gives a ModuleWrapPolicy of the classes"
    )
    assert not policy(module=nn.ReLU(), recurse=False, nonwrapped_numel=0)


def fsdp_fit(tmp_path, *callbacks: L.Callback):
    """One step of a 2-block GPT-2 under TransformerFSDP (activation checkpointing) on one CPU process:
    ``(model, strategy)``."""
    from lightning_recipes import CausalLM
    from lightning_recipes.strategies import TransformerFSDP

    model = CausalLM(config={"n_layer": 2, "n_embd": 8, "n_head": 2, "n_positions": 8, "vocab_size": 16})
    strategy = TransformerFSDP(activation_checkpointing=True)
    trainer = L.Trainer(accelerator="cpu", devices=1, strategy=strategy, max_steps=1, logger=False,
                        callbacks=list(callbacks), enable_checkpointing=False, enable_progress_bar=False,
                        default_root_dir=tmp_path)  # fmt: skip
    rows = [{"input_ids": row, "attention_mask": torch.ones(8)} for row in torch.randint(0, 16, (4, 8))]
    trainer.fit(model, DataLoader(rows, batch_size=2))
    return model, strategy


def test_fsdp_strategy_private_override_keeps_its_contract(tmp_path, in_process_group):
    """``_setup_model`` keeps its parameters; a CPU fit under TransformerFSDP wraps and checkpoints."""
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
    from torch.distributed.fsdp import FullyShardedDataParallel

    for name, expected in _compat.FSDP_STRATEGY_OVERRIDES.items():
        method = getattr(FSDPStrategy, name, None)
        assert callable(method), broken("lightning", f"FSDPStrategy.{name} is gone")
        assert tuple(params(method)) == expected, broken(
            "lightning", f"FSDPStrategy.{name}{inspect.signature(method)}, expected parameters {expected}"
        )
    _, strategy = fsdp_fit(tmp_path)
    kinds = [type(m) for m in strategy.model.modules()]
    assert kinds.count(FullyShardedDataParallel) == 3, broken("lightning", "_setup_model of a wrapped model")
    assert kinds.count(CheckpointWrapper) == 2, broken("lightning", "_setup_model's activation checkpointing")


def test_unwrapped_name_matches_the_names_of_the_state_dict_fsdp_saves(tmp_path, in_process_group):
    from torch.distributed.fsdp import FullyShardedDataParallel

    names = []

    class Names(L.Callback):
        def on_train_start(self, trainer, pl_module):
            names.extend(n for n, _ in pl_module.named_parameters(remove_duplicate=False))
            assert any(isinstance(m, FullyShardedDataParallel) for m in pl_module.modules())

    model, _ = fsdp_fit(tmp_path, Names())
    wrapped = [n for n in names if "_fsdp_wrapped_module" in n]
    assert wrapped, "the blocks were not wrapped"
    assert {_compat.unwrapped_name(n) for n in names} == set(model.state_dict()), broken(
        "torch", "torch.distributed.fsdp._common_utils.clean_tensor_name"
    )


def test_jit_tracing_lightning_modules_lets_torch_trace_a_module_without_a_trainer():
    """Lightning 2.6.6: the tracer's ``hasattr`` reads ``trainer``, which raises outside a Trainer unless
    the class-level ``_jit_is_scripting`` flag is set (what ``LightningModule.to_torchscript`` does)."""
    import pytest

    class Unattached(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(3, 2)

        def forward(self, x):
            return self.layer(x)

    wrapper = torch.nn.Sequential(Unattached())
    x = torch.randn(4, 3)
    with pytest.raises(RuntimeError, match="not attached to a `Trainer`"):
        torch.jit.trace(wrapper, (x,))
    with _compat.jit_tracing_lightning_modules():
        traced = torch.jit.trace(wrapper, (x,))
    assert torch.equal(traced(x), wrapper(x))
    assert L.LightningModule._jit_is_scripting is False  # restored after
