"""One test per entry of lightning_recipes/_compat/: an upgrade breaking a private API fails here, loudly.

Each failure message names the library, its installed version, the private name and the version the
entry was checked against; the fix goes in ``lightning_recipes/_compat/`` (and its docstring).
"""

from __future__ import annotations

import inspect
from importlib.metadata import version
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping
from lightning.pytorch.callbacks import LearningRateFinder
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from torch import nn
from torch.optim import lr_scheduler as sched
from torch.utils.data import DataLoader, TensorDataset

from lightning_recipes import _compat

CHECKED = {"lightning": "2.6.6", "torch": "2.15", "timm": "1.0.31", "wandb": "0.31"}


def broken(library: str, what: str) -> str:
    """The assertion message: which library and version broke which private API."""
    return (
        f"{library} {version(library)} changed a private API lightning_recipes relies on: {what} "
        f"(checked against {library} {CHECKED[library]}); update lightning_recipes/_compat/"
    )


def params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


class Tiny(L.LightningModule):
    def __init__(self, lr: float = 0.01) -> None:
        super().__init__()
        self.lr = lr
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return F.mse_loss(self.layer(batch[0]), batch[0].sum(1, keepdim=True))

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", F.mse_loss(self.layer(batch[0]), batch[0].sum(1, keepdim=True)))

    test_step = validation_step

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def data(n: int = 64) -> DataLoader:
    return DataLoader(
        TensorDataset(torch.randn(n, 4, generator=torch.Generator().manual_seed(0))), batch_size=8
    )


def tiny_trainer(tmp_path, callbacks=(), **kwargs) -> L.Trainer:
    options = dict(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
    )
    options.update(kwargs)
    return L.Trainer(callbacks=list(callbacks), **options)


# ================================================================================================
# Lightning: loops and the LR range test
# ================================================================================================


def test_lr_range_test_runs_lightnings_private_lr_find(tmp_path):
    from lightning.pytorch.tuner import lr_finder

    assert hasattr(lr_finder, "_lr_find"), broken(
        "lightning", "lightning.pytorch.tuner.lr_finder._lr_find is gone"
    )
    expected = [
        "trainer",
        "model",
        "min_lr",
        "max_lr",
        "num_training",
        "mode",
        "early_stop_threshold",
        "update_attr",
    ]
    assert params(lr_finder._lr_find)[: len(expected)] == expected, broken(
        "lightning", f"_lr_find's parameters are {params(lr_finder._lr_find)}, expected {expected}"
    )
    seen = {}

    class Sweep(L.Callback):
        def on_fit_start(self, trainer, pl_module):
            kwargs = dict(
                min_lr=1e-4, max_lr=1.0, num_training=12, mode="exponential", early_stop_threshold=None
            )
            seen["finder"] = _compat.lr_range_test(trainer, pl_module, **kwargs)
            seen["step"] = trainer.global_step

    model = Tiny(lr=0.01)
    tiny_trainer(tmp_path, [Sweep()], max_steps=1).fit(model, data(160))
    results = getattr(seen["finder"], "results", None)
    assert isinstance(results, dict) and set(results) >= {"lr", "loss"}, broken(
        "lightning", f"_lr_find returned {seen['finder']!r} without results {{'lr', 'loss'}}"
    )
    assert len(results["lr"]) == len(results["loss"]) == 12, broken("lightning", "_lr_find's sweep length")
    assert seen["step"] == 0 and model.lr == 0.01, broken(
        "lightning",
        "_lr_find no longer restores the trainer or updates the LR attribute with update_attr=False",
    )


def test_all_loops_finds_the_fit_loops_children():
    from lightning.pytorch.loops import loop

    assert hasattr(loop, "_Loop"), broken("lightning", "lightning.pytorch.loops.loop._Loop is gone")
    trainer = L.Trainer(accelerator="cpu", logger=False)
    names = [type(found).__name__ for found in _compat.all_loops(trainer.fit_loop)]
    assert names[0] == "_FitLoop" and {"_TrainingEpochLoop", "_EvaluationLoop"} <= set(names), broken(
        "lightning", f"the fit loop's child loops (subclasses of _Loop) are {names}"
    )


def test_loop_restart_flags_exist_and_are_set_by_load_state_dict():
    trainer = L.Trainer(accelerator="cpu", logger=False)
    loops = _compat.all_loops(trainer.fit_loop)
    for found in loops:
        for flag in _compat.LOOP_RESTART_FLAGS[:3]:
            assert hasattr(found, flag), broken("lightning", f"{type(found).__name__}.{flag} is gone")
    fit_loop, val_loop = trainer.fit_loop, trainer.fit_loop.epoch_loop.val_loop
    for found in (fit_loop, val_loop):
        assert hasattr(found, "_restart_stage"), broken("lightning", f"{type(found).__name__}._restart_stage")
    fit_loop.load_state_dict(fit_loop.state_dict())
    for found in loops:  # (`_restarting` goes through the `restarting` setter, which the fit loop overrides)
        flags = {flag: getattr(found, flag) for flag in _compat.LOOP_RESTART_FLAGS[1:3]}
        assert all(flags.values()), broken(
            "lightning",
            f"_Loop.load_state_dict no longer sets the restart flags of {type(found).__name__}: {flags}",
        )
    val_loop.restarting = True
    assert val_loop._restarting is True, broken("lightning", "_Loop.restarting no longer stores _restarting")


def test_fresh_fit_loop_resets_progress_and_restores_the_loops(tmp_path):
    seen = {}

    class Probe(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch != 1:
                return
            fit_loop = trainer.fit_loop
            epoch_loop = fit_loop.epoch_loop
            before = (fit_loop.state_dict(), [vars(x).copy() for x in _compat.all_loops(fit_loop)])
            with _compat.fresh_fit_loop(trainer):
                seen["inside"] = (
                    epoch_loop.batch_progress.current.ready,
                    epoch_loop.automatic_optimization.optim_progress.optimizer_steps,
                    epoch_loop.manual_optimization.optim_step_progress.total.completed,
                    fit_loop._combined_loader,
                )
                fit_loop.setup_data()  # what the nested fit_loop.run() of a sweep does first
            flags = [
                {k: vars(x)[k] for k in _compat.LOOP_RESTART_FLAGS if k in vars(x)}
                for x in _compat.all_loops(fit_loop)
            ]
            seen["restored"] = fit_loop.state_dict() == before[0] and flags == [
                {k: v[k] for k in _compat.LOOP_RESTART_FLAGS if k in v} for v in before[1]
            ]
            seen["steps_before"] = epoch_loop.automatic_optimization.optim_progress.optimizer_steps

    tiny_trainer(tmp_path, [Probe()], max_epochs=2, limit_train_batches=3, limit_val_batches=0).fit(
        Tiny(), data()
    )
    assert seen["steps_before"] == 3, broken(
        "lightning", "optim_progress.optimizer_steps of the training epoch loop"
    )
    assert seen["inside"] == (0, 0, 0, None), broken(
        "lightning",
        "epoch_loop.batch_progress.reset_on_run / automatic_optimization.optim_progress.reset / "
        f"manual_optimization.optim_step_progress.reset / fit_loop._combined_loader: got {seen['inside']}",
    )
    assert seen["restored"], broken("lightning", "fit_loop.load_state_dict no longer restores the progress")


def test_evaluation_dataloaders_are_those_of_the_running_loop(tmp_path):
    seen = []

    class Probe(L.Callback):
        def on_validation_epoch_start(self, trainer, pl_module):
            seen.append(_compat.evaluation_dataloaders(trainer))

        on_test_epoch_start = on_validation_epoch_start

    trainer = tiny_trainer(tmp_path, [Probe()])
    assert _compat.evaluation_dataloaders(trainer) is None  # no evaluation running
    val, test = data(16), data(24)
    trainer.validate(Tiny(), val)
    trainer.test(Tiny(), test)
    datasets = [[loader.dataset for loader in loaders] if loaders else loaders for loaders in seen]
    assert datasets == [[val.dataset], [test.dataset]], broken(
        "lightning", f"trainer._evaluation_loop._combined_loader.flattened gave {seen}"
    )


def test_fit_combined_loaders_are_the_loops_and_setting_flattened_changes_later_iterators(tmp_path):
    """What the feature cache relies on: the loops' CombinedLoaders exist at ``on_train_epoch_start`` and a
    new ``flattened`` list (same lengths) is what later training and validation iterators read."""
    train, val = data(16), data(8)
    seen, read = [], {"train": [], "val": []}

    class Swap(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            loaders = _compat.fit_combined_loaders(trainer)
            seen.append([c.flattened[0].dataset for c in loaders])
            for combined in loaders:
                n = len(combined.flattened[0].dataset)
                combined.flattened = [DataLoader(TensorDataset(torch.full((n, 4), 5.0)), batch_size=8)]

    class Read(Tiny):
        def training_step(self, batch, batch_idx):
            read["train"].append(bool((batch[0] == 5).all()))
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch, batch_idx):
            read["val"].append(bool((batch[0] == 5).all()))

    tiny_trainer(tmp_path, [Swap()], max_epochs=2).fit(Read(), train, val)
    what = f"fit_loop._combined_loader / epoch_loop.val_loop._combined_loader gave {seen}"
    assert seen[0] == [train.dataset, val.dataset], broken("lightning", what)
    # Epoch 0's training iterator was made in setup_data (before the hook); the rest read the new loaders.
    expected = {"train": [False, False, True, True], "val": [True, True]}
    assert read == expected, broken("lightning", f"after setting flattened the loops read {read}")


# ================================================================================================
# Lightning: callback order
# ================================================================================================


def test_tuner_callbacks_run_first_unless_moved(tmp_path):
    order = []

    class Record(L.Callback):
        def __init__(self, name):
            self.name = name

        def on_train_epoch_start(self, trainer, pl_module):
            order.append(self.name)

    class Finder(LearningRateFinder):
        def on_fit_start(self, trainer, pl_module):
            pass

        def on_train_epoch_start(self, trainer, pl_module):
            order.append("finder")

    first, finder, last = Record("first"), Finder(), Record("last")

    class Mover(Record):
        def setup(self, trainer, pl_module, stage):
            _compat.run_before_tuner_callbacks(trainer, self)

    mover = Mover("mover")
    trainer = tiny_trainer(tmp_path, [first, mover, finder, last], limit_train_batches=1, limit_val_batches=0)
    assert trainer.callbacks[:4] == [finder, first, mover, last], broken(
        "lightning", "_CallbackConnector._reorder_callbacks no longer moves LearningRateFinder to the front"
    )
    trainer.fit(Tiny(), data())
    assert trainer.callbacks[:4] == [mover, finder, first, last], broken(
        "lightning", "trainer.callbacks can no longer be reordered in setup"
    )
    assert order == ["mover", "finder", "first", "last"], broken(
        "lightning", f"callback hooks no longer run in trainer.callbacks order: {order}"
    )
    trainer = tiny_trainer(tmp_path, [first, last])
    callbacks = trainer.callbacks
    _compat.run_before_tuner_callbacks(trainer, last)  # no tuner callback: nothing moves
    assert trainer.callbacks is callbacks


# ================================================================================================
# Lightning: EarlyStopping
# ================================================================================================


def test_early_stopping_reason_exists_from_lightning_2_6():
    assert _compat.EarlyStoppingReason is not None, broken(
        "lightning",
        "lightning.pytorch.callbacks.early_stopping.EarlyStoppingReason (added in 2.6.0) is missing",
    )
    callback = LightningEarlyStopping(monitor="val/loss")
    assert callback.stopping_reason == _compat.EarlyStoppingReason.NOT_STOPPED, broken(
        "lightning", "EarlyStopping.stopping_reason"
    )
    _compat.set_patience_exhausted(callback)
    assert callback.stopping_reason == _compat.EarlyStoppingReason.PATIENCE_EXHAUSTED
    state = callback.state_dict()
    assert state.get("stopping_reason") == _compat.EarlyStoppingReason.PATIENCE_EXHAUSTED.value, broken(
        "lightning", f"EarlyStopping.state_dict() no longer stores the stopping reason: {state}"
    )


def test_early_stopping_reason_is_optional_before_lightning_2_6(monkeypatch):
    """lightning 2.4 and 2.5 lack EarlyStoppingReason: _compat falls back to None, no reason is set."""
    import importlib

    def reload_compat() -> None:  # the module that imports it, then the package that re-exports it
        importlib.reload(_compat._lightning)
        importlib.reload(_compat)

    import lightning.pytorch.callbacks.early_stopping as lightning_early_stopping

    monkeypatch.delattr(lightning_early_stopping, "EarlyStoppingReason")
    try:
        reload_compat()
        assert _compat.EarlyStoppingReason is None
        callback = SimpleNamespace()
        _compat.set_patience_exhausted(callback)
        assert not hasattr(callback, "stopping_reason")
    finally:
        monkeypatch.undo()
        reload_compat()
    assert _compat.EarlyStoppingReason is lightning_early_stopping.EarlyStoppingReason


def test_early_stopping_private_overrides_keep_their_contract(tmp_path):
    for name, expected in _compat.EARLY_STOPPING_OVERRIDES.items():
        method = getattr(LightningEarlyStopping, name, None)
        assert callable(method), broken("lightning", f"EarlyStopping.{name} is gone")
        assert tuple(params(method)) == expected, broken(
            "lightning", f"EarlyStopping.{name}{inspect.signature(method)}, expected parameters {expected}"
        )
    callback = LightningEarlyStopping(monitor="val/loss", patience=1)
    first, second = callback._evaluate_stopping_criteria(torch.tensor(1.0)), None
    second = callback._evaluate_stopping_criteria(torch.tensor(2.0))
    assert first[0] is False and second[0] is True and isinstance(second[1], str), broken(
        "lightning", f"_evaluate_stopping_criteria returned {first}, {second}, expected (should_stop, reason)"
    )
    assert callback.best_score.item() == 1.0 and callback.wait_count == 1, broken(
        "lightning", "_evaluate_stopping_criteria no longer updates best_score / wait_count"
    )
    calls = []

    class Probe(LightningEarlyStopping):
        def _evaluate_stopping_criteria(self, current):
            calls.append(float(current))
            return super()._evaluate_stopping_criteria(current)

    trainer = tiny_trainer(tmp_path, [Probe(monitor="val/loss")], max_epochs=2, limit_train_batches=1)
    trainer.fit(Tiny(), data(), data(16))
    assert len(calls) == 2, broken(
        "lightning", "EarlyStopping no longer calls _evaluate_stopping_criteria per check"
    )


def test_checks_on_train_epoch_end_reads_the_resolved_setting(tmp_path):
    assert (
        _compat.checks_on_train_epoch_end(LightningEarlyStopping("m", check_on_train_epoch_end=True)) is True
    )
    for every_n_epochs, expected in ((1, True), (2, False)):
        callback = LightningEarlyStopping("m")
        assert _compat.checks_on_train_epoch_end(callback) is None, broken(
            "lightning", "EarlyStopping._check_on_train_epoch_end is not the argument as given"
        )
        trainer = tiny_trainer(tmp_path, [callback], check_val_every_n_epoch=every_n_epochs)
        callback.setup(trainer, Tiny(), "fit")
        assert _compat.checks_on_train_epoch_end(callback) is expected, broken(
            "lightning", "EarlyStopping.setup no longer resolves _check_on_train_epoch_end"
        )


# ================================================================================================
# Lightning: WandbLogger
# ================================================================================================


@pytest.fixture
def fake_wandb_init(monkeypatch):
    """``wandb.init`` returning a stand-in run (no wandb process); the kwargs of each call are recorded."""
    import wandb

    calls = []

    def init(**kwargs):
        calls.append(kwargs)
        return SimpleNamespace(id="run123", name="fake", _attach_id="attach123")

    monkeypatch.setattr(wandb, "init", init)
    monkeypatch.setattr(wandb, "run", None)
    return calls


@pytest.fixture
def wandb_logger(fake_wandb_init, tmp_path) -> LightningWandbLogger:
    return LightningWandbLogger(project="p", save_dir=str(tmp_path), tags=["t"])


def test_wandb_init_kwargs(wandb_logger):
    init_kwargs = _compat.wandb_init_kwargs(wandb_logger)
    assert (
        isinstance(init_kwargs, dict) and init_kwargs.get("project") == "p" and init_kwargs["tags"] == ["t"]
    ), broken("lightning", f"WandbLogger._wandb_init (the wandb.init kwargs) is {init_kwargs!r}")
    assert init_kwargs is _compat.wandb_init_kwargs(wandb_logger)  # the live dict, edits reach wandb.init


def test_wandb_run_pending_and_lightning_experiment(wandb_logger, fake_wandb_init):
    assert _compat.wandb_run_pending(wandb_logger), broken(
        "lightning", "WandbLogger._experiment is not None before use"
    )
    _compat.wandb_init_kwargs(wandb_logger)["mode"] = "offline"
    run = _compat.lightning_wandb_experiment(wandb_logger)
    assert run.id == "run123" and fake_wandb_init == [_compat.wandb_init_kwargs(wandb_logger)], broken(
        "lightning", "WandbLogger.experiment.fget no longer starts the run with the _wandb_init kwargs"
    )
    assert fake_wandb_init[0]["mode"] == "offline"
    assert not _compat.wandb_run_pending(wandb_logger) and wandb_logger.experiment is run, broken(
        "lightning", "WandbLogger._experiment does not hold the run"
    )
    # spawn: the pickled logger attaches to the parent's run instead of starting one (_attach_id)
    state = wandb_logger.__getstate__()
    child = LightningWandbLogger.__new__(LightningWandbLogger)
    child.__dict__.update(state)
    assert getattr(child, "_attach_id", None) == "attach123" and not _compat.wandb_run_pending(child), broken(
        "lightning", f"WandbLogger.__getstate__ no longer stores _attach_id: {sorted(state)}"
    )


def test_wandb_logged_model_times(wandb_logger):
    times = _compat.wandb_logged_model_times(wandb_logger)
    assert times == {} and times is _compat.wandb_logged_model_times(wandb_logger), broken(
        "lightning", "WandbLogger._logged_model_time (path -> mtime of uploaded checkpoints)"
    )


def test_wandb_checkpoint_artifact_name(wandb_logger, tmp_path):
    assert _compat.wandb_checkpoint_artifact_name(wandb_logger) == "model-run123", broken(
        "lightning", "WandbLogger._checkpoint_name"
    )
    assert wandb_logger._checkpoint_name == "model-run123"  # kept
    named = LightningWandbLogger(project="p", save_dir=str(tmp_path), checkpoint_name="mine")
    assert _compat.wandb_checkpoint_artifact_name(named) == "mine", broken(
        "lightning", "WandbLogger(checkpoint_name=...) no longer stored in _checkpoint_name"
    )


def test_wandb_logger_private_overrides_keep_their_contract(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    for name, expected in _compat.WANDB_LOGGER_OVERRIDES.items():
        method = getattr(LightningWandbLogger, name, None)
        assert callable(method), broken("lightning", f"WandbLogger.{name} is gone")
        assert tuple(params(method)) == expected, broken(
            "lightning", f"WandbLogger.{name}{inspect.signature(method)}, expected parameters {expected}"
        )
    calls = []

    class Probe(LightningWandbLogger):
        def _scan_and_log_checkpoints(self, checkpoint_callback):
            calls.append(checkpoint_callback)

    checkpoint = ModelCheckpoint(dirpath=tmp_path)
    Probe(project="p", save_dir=str(tmp_path), log_model="all").after_save_checkpoint(checkpoint)
    assert calls == [checkpoint], broken(
        "lightning", "after_save_checkpoint(log_model='all') no longer scans"
    )
    logger = Probe(project="p", save_dir=str(tmp_path), log_model=True)
    logger.after_save_checkpoint(checkpoint)
    logger._experiment = SimpleNamespace(id="x")  # a run exists
    logger.finalize("success")
    assert calls == [checkpoint, checkpoint], broken("lightning", "finalize(log_model=True) no longer scans")


# ================================================================================================
# Lightning + torch: DDP re-wrapping
# ================================================================================================


def test_rewrap_ddp_builds_a_new_wrapper_of_the_same_module(tmp_path):
    """One process (gloo): the wrapper is replaced; that it reduces the unfrozen parameters is tested by
    test_freeze_unfreeze.py::test_ddp_ranks_hold_identical_weights_after_unfreeze (slow, 2 processes)."""
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


# ================================================================================================
# torch
# ================================================================================================


def optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)


SCHEDULERS = {
    "LambdaLR": lambda o: sched.LambdaLR(o, lambda e: 0.5),
    "CosineAnnealingLR": lambda o: sched.CosineAnnealingLR(o, T_max=4),
    "OneCycleLR": lambda o: sched.OneCycleLR(o, max_lr=0.1, total_steps=4),
    "ReduceLROnPlateau": lambda o: sched.ReduceLROnPlateau(o),
    "SequentialLR": lambda o: sched.SequentialLR(o, [sched.ConstantLR(o), sched.ExponentialLR(o, 0.9)], [2]),
    "ChainedScheduler": lambda o: sched.ChainedScheduler([sched.ConstantLR(o), sched.ExponentialLR(o, 0.9)]),
}


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_scheduler_last_lr_is_what_get_last_lr_returns(name):
    scheduler = SCHEDULERS[name](optimizer())
    last = getattr(scheduler, _compat.SCHEDULER_LAST_LR, None)
    assert isinstance(last, list) and last == scheduler.get_last_lr(), broken(
        "torch", f"{name}.{_compat.SCHEDULER_LAST_LR} is {last!r}, get_last_lr() {scheduler.get_last_lr()!r}"
    )
    _compat.set_last_lr(scheduler, [0.123])
    assert scheduler.get_last_lr() == [0.123], broken(
        "torch", f"{name}.get_last_lr() no longer reads _last_lr"
    )


def test_sub_schedulers_of_sequential_and_chained():
    for name in ("SequentialLR", "ChainedScheduler"):
        scheduler = SCHEDULERS[name](optimizer())
        subs = _compat.sub_schedulers(scheduler)
        assert [type(s).__name__ for s in subs] == ["ConstantLR", "ExponentialLR"], broken(
            "torch", f"{name}._schedulers is {subs!r}"
        )
        assert all(s.optimizer is scheduler.optimizer for s in subs)
    assert _compat.sub_schedulers(SCHEDULERS["CosineAnnealingLR"](optimizer())) == []


def test_is_batch_norm_covers_every_batch_norm_class():
    from timm.layers import BatchNormAct2d

    norms = [
        nn.BatchNorm1d(2),
        nn.BatchNorm2d(2),
        nn.BatchNorm3d(2),
        nn.SyncBatchNorm(2),
        nn.LazyBatchNorm2d(),
    ]
    for module in [*norms, BatchNormAct2d(2)]:
        assert _compat.is_batch_norm(module), broken(
            "torch", f"{type(module).__name__} no longer derives from torch.nn.modules.batchnorm._BatchNorm"
        )
    for module in (nn.LayerNorm(2), nn.GroupNorm(1, 2), nn.InstanceNorm2d(2), nn.Linear(2, 2)):
        assert not _compat.is_batch_norm(module), broken("torch", f"{type(module).__name__} is a _BatchNorm")


# ================================================================================================
# timm
# ================================================================================================


def test_timm_group_parameters_gives_coarse_layer_groups():
    import timm
    from timm.models import group_parameters

    assert params(group_parameters)[:2] == ["module", "group_matcher"], broken(
        "timm", f"timm.models.group_parameters{inspect.signature(group_parameters)}"
    )
    model = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    grouped = _compat.timm_group_parameters(model)
    names = [name for _, group in sorted(grouped.items()) for name in group]
    assert list(sorted(grouped)) == [0, 1, 2, 3, 4], broken(
        "timm", f"coarse groups of a ResNet: {sorted(grouped)}"
    )
    assert sorted(names) == sorted(n for n, _ in model.named_parameters()), broken(
        "timm", "group_parameters no longer returns every parameter name once"
    )
    assert names[0].startswith("conv1"), broken("timm", f"the first group is not the stem: {grouped[0]}")


# -- datasets -----------------------------------------------------------------------------------------


def test_dataset_fingerprint_names_the_data_and_its_transforms():
    import datasets

    ds = datasets.Dataset.from_dict({"text": ["a", "b"]})
    fingerprint = _compat.dataset_fingerprint(ds)
    assert isinstance(fingerprint, str) and fingerprint, (
        f"datasets {datasets.__version__}: Dataset._fingerprint is gone or empty "
        "(checked with datasets 5.2.0)"
    )
    mapped = ds.map(lambda row: {"text": row["text"] * 2})
    assert _compat.dataset_fingerprint(mapped) != fingerprint, (
        f"datasets {datasets.__version__}: Dataset._fingerprint no longer changes with a transform"
    )


# -- huggingface_hub / datasets offline constants ------------------------------------------------------


def test_hub_offline_sets_and_restores_the_libraries_offline_constants(monkeypatch):
    import datasets
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    with _compat.hub_offline():
        assert huggingface_hub.is_offline_mode(), (
            f"huggingface_hub {huggingface_hub.__version__}: is_offline_mode() no longer reads "
            "constants.HF_HUB_OFFLINE (checked with 2.4.0)"
        )
        assert datasets.config.HF_HUB_OFFLINE is True
    assert not huggingface_hub.is_offline_mode() and datasets.config.HF_HUB_OFFLINE is False
