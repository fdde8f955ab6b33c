"""Lightning's loops and LR range test in lightning_recipes/_compat/_lightning.py, one test each.

An upgrade breaking a private API fails here, loudly, naming the library, its installed version, the
private name and the version the entry was checked against (``compat_helpers.broken``).
"""

from __future__ import annotations

import lightning as L
import torch
from compat_helpers import Tiny, broken, data, params, tiny_trainer
from torch.utils.data import DataLoader, TensorDataset

from lightning_recipes import _compat


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


def test_sharded_sampler_is_the_sampler_lightnings_distributed_wrapper_shards():
    from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
    from torch.utils.data import DistributedSampler

    from lightning_recipes.eval_samples import dataset_indices

    order = [6, 0, 3, 5, 1, 2, 4]  # a length order, as TextDataModule's evaluation sampler
    wrapper = DistributedSamplerWrapper(order, num_replicas=2, rank=1, shuffle=False)
    assert _compat.sharded_sampler(wrapper) is order, broken(
        "lightning", "DistributedSamplerWrapper.dataset._sampler is no longer the wrapped sampler"
    )
    assert dataset_indices(DataLoader(list(range(7)), batch_size=2, sampler=wrapper)) == [0, 5, 2, 6]
    assert _compat.sharded_sampler(DistributedSampler(list(range(7)), 2, 0)) is None
