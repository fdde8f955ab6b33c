"""Lightning's private API, as ``lightning_recipes`` uses it (see :mod:`lightning_recipes._compat`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from copy import deepcopy
from typing import TYPE_CHECKING, Any

from lightning.pytorch.callbacks import BatchSizeFinder, Callback, LearningRateFinder

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from lightning.pytorch.tuner.lr_finder import _LRFinder

# -- loops and the LR range test (used by callbacks/lr_finder.py) --------------------------------


def lr_range_test(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    *,
    min_lr: float,
    max_lr: float,
    num_training: int,
    mode: str,
    early_stop_threshold: float | None,
) -> _LRFinder | None:
    """Run Lightning's LR range test (``lightning.pytorch.tuner.lr_finder._lr_find``) inside a fit.

    The sweep ``LearningRateFinder`` runs: a checkpoint of the trainer, ``num_training`` steps of the
    real fit loop with an exponential/linear LR ramp, the checkpoint restored. Returns Lightning's
    ``_LRFinder`` (``.results`` holds ``{"lr": [...], "loss": [...]}``) or ``None`` (``fast_dev_run``).
    The module's LR attribute is never touched (``update_attr=False``); the caller applies the result.

    Checked: lightning 2.6.6. Same signature in the 2.4.0, 2.5.5 and 2.6.0 sources.
    """
    from lightning.pytorch.tuner.lr_finder import _lr_find

    return _lr_find(
        trainer,
        pl_module,
        min_lr=min_lr,
        max_lr=max_lr,
        num_training=num_training,
        mode=mode,
        early_stop_threshold=early_stop_threshold,
        update_attr=False,
    )


def all_loops(loop: Any) -> list[Any]:
    """``loop`` and its child loops (fit -> training epoch -> validation ...), found as attributes that
    are instances of Lightning's private loop base class ``lightning.pytorch.loops.loop._Loop``.

    Checked: lightning 2.6.6 (``_Loop`` is the base of every loop since 2.0; same in the 2.4.0 source).
    """
    from lightning.pytorch.loops.loop import _Loop

    found = [loop]
    for value in vars(loop).values():
        if isinstance(value, _Loop):
            found.extend(all_loops(value))
    return found


# Loop attributes that ``_Loop.load_state_dict`` (called when Lightning restores its checkpoint after
# a sweep) sets, and that a mid-fit sweep must put back so the interrupted epoch carries on as if no
# checkpoint had been loaded. Checked: lightning 2.6.6 (``_restarting``, ``_loaded_from_state_dict``,
# ``_resuming_from_checkpoint`` on every loop, ``_restart_stage`` on the fit and evaluation loops).
# The 2.4.0 source has only ``_restarting``; absent names are skipped (``hasattr``).
LOOP_RESTART_FLAGS = ("_restarting", "_loaded_from_state_dict", "_resuming_from_checkpoint", "_restart_stage")


@contextmanager
def fresh_fit_loop(trainer: pl.Trainer) -> Iterator[None]:
    """Give a nested run of ``trainer.fit_loop`` (a mid-fit LR sweep) a fresh epoch; put it back after.

    Inside: the training epoch loop's batch progress and the optimizer step progress (automatic and
    manual optimization) are reset, and ``fit_loop._combined_loader`` is dropped so the nested run
    builds a new data iterator. On exit: the fit loop's ``state_dict`` (all progress counters) and
    the :data:`LOOP_RESTART_FLAGS` of every loop are restored, so the interrupted epoch then trains
    exactly as it would have.

    Private names used: ``fit_loop._combined_loader``, ``epoch_loop.batch_progress.reset_on_run()``,
    ``epoch_loop.automatic_optimization.optim_progress.reset()``,
    ``epoch_loop.manual_optimization.optim_step_progress.reset()`` (attributes of private loop classes)
    and the flags above. Checked: lightning 2.6.6.
    """
    loops = all_loops(trainer.fit_loop)
    saved_state = deepcopy(trainer.fit_loop.state_dict())
    saved_flags = [{k: getattr(loop, k) for k in LOOP_RESTART_FLAGS if hasattr(loop, k)} for loop in loops]
    epoch_loop = trainer.fit_loop.epoch_loop
    epoch_loop.batch_progress.reset_on_run()
    epoch_loop.automatic_optimization.optim_progress.reset()
    epoch_loop.manual_optimization.optim_step_progress.reset()
    trainer.fit_loop._combined_loader = None
    try:
        yield
    finally:
        trainer.fit_loop.load_state_dict(saved_state)
        for loop, flags in zip(loops, saved_flags, strict=True):
            for key, value in flags.items():
                setattr(loop, key, value)


def evaluation_dataloaders(trainer: pl.Trainer) -> list[Any] | None:
    """The DataLoaders of the evaluation loop running now, or ``None`` when there is none.

    ``trainer._evaluation_loop`` is the loop of the current stage (fit's validation loop, the validate
    or the test loop; it raises ``RuntimeError`` outside them) and its ``_combined_loader`` the loaders
    it iterates (``None`` before its data is set up). Unlike ``trainer.val_dataloaders``, which prefers
    fit's loaders also under ``validate()``, these are the loaders being evaluated.

    Checked: lightning 2.6.6 (for ``CurveLogger``).
    """
    try:
        return list(trainer._evaluation_loop._combined_loader.flattened)
    except (AttributeError, RuntimeError):
        return None


def sharded_sampler(sampler: Any) -> Any:
    """The sampler that Lightning's ``DistributedSamplerWrapper`` shards (its ``dataset._sampler``: the
    evaluation loader's own sampler, e.g. a list of indices in length order), else ``None``.

    Lightning gives an evaluation loader whose sampler is neither sequential nor random a
    ``DistributedSamplerWrapper`` under DDP; its ``dataset`` is a private ``_DatasetSamplerWrapper``
    whose items are the indices the wrapped sampler draws. Read by
    :func:`lightning_recipes.eval_samples.dataset_indices` (the test table of the ``PredictionWriter``).

    Checked: lightning 2.6.6.
    """
    from lightning.fabric.utilities.distributed import DistributedSamplerWrapper, _DatasetSamplerWrapper

    wrapped = getattr(sampler, "dataset", None)
    if isinstance(sampler, DistributedSamplerWrapper) and isinstance(wrapped, _DatasetSamplerWrapper):
        return wrapped._sampler
    return None


def fit_combined_loaders(trainer: pl.Trainer) -> tuple[Any, Any]:
    """The ``CombinedLoader`` s that ``fit``'s training and validation loops iterate (``None`` where absent).

    ``trainer.fit_loop._combined_loader`` is set up before ``on_train_epoch_start``, and so is the
    validation loop's (``fit_loop.epoch_loop.val_loop._combined_loader``) when validation runs in the
    first epoch (else when it first runs). Setting a loader's ``flattened`` list (public
    ``CombinedLoader`` API) in ``on_train_epoch_start`` changes what the loops iterate from the next
    iterator they create: the validation loop's at each validation run; the training loop's at the
    start of each epoch except the first one of a ``fit`` (and the resumed one), whose iterator was
    created in ``setup_data``.

    Checked: lightning 2.6.6 (for the feature cache of ``FreezeUnfreeze``).
    """
    return trainer.fit_loop._combined_loader, trainer.fit_loop.epoch_loop.val_loop._combined_loader


# -- callback order (used by callbacks/freeze_unfreeze.py) ----------------------------------------

# Callbacks that Lightning moves to the front of ``trainer.callbacks`` (its
# ``_CallbackConnector._reorder_callbacks``, at ``Trainer`` creation and when the module's
# ``configure_callbacks`` adds callbacks), so that their hooks run before every other callback's.
# Checked: lightning 2.6.6 (same rule in the 2.4.0 source).
TUNER_CALLBACK_TYPES: tuple[type[Callback], ...] = (BatchSizeFinder, LearningRateFinder)


def run_before_tuner_callbacks(trainer: pl.Trainer, callback: Callback) -> None:
    """Move ``callback`` just ahead of the first tuner callback in ``trainer.callbacks``.

    Lightning calls every callback hook in ``trainer.callbacks`` order; this undoes, for one callback,
    the tuners-first rule above. The list is replaced, not mutated, so a hook loop iterating the old
    list (this is called from ``setup``) is not disturbed. No-op when there is no tuner callback or
    ``callback`` already comes first. Call it in ``setup``: Lightning re-sorts the list earlier in
    ``Trainer.fit`` when the module has ``configure_callbacks``.

    Checked: lightning 2.6.6.
    """
    callbacks = list(trainer.callbacks)
    first_tuner = next((i for i, cb in enumerate(callbacks) if isinstance(cb, TUNER_CALLBACK_TYPES)), None)
    if first_tuner is None or callbacks.index(callback) < first_tuner:
        return
    callbacks.remove(callback)
    callbacks.insert(first_tuner, callback)
    trainer.callbacks = callbacks


# -- EarlyStopping (used by callbacks/early_stopping.py) ------------------------------------------

try:
    from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
except ImportError:  # lightning < 2.6.0
    EarlyStoppingReason = None  # type: ignore[assignment,misc]
"""Lightning's enum of why ``EarlyStopping`` stopped (``EarlyStopping.stopping_reason``), or ``None``.

Added in lightning 2.6.0 (Lightning-AI/pytorch-lightning#21188): absent from the 2.4.0 and 2.5.5
sources, present in 2.6.0. Checked: lightning 2.6.6. With ``None`` the reason is simply not recorded.
"""


def set_patience_exhausted(callback: Any) -> None:
    """Record ``EarlyStoppingReason.PATIENCE_EXHAUSTED`` as ``callback.stopping_reason`` (lightning >= 2.6;
    a no-op before, where the attribute does not exist). Checked: lightning 2.6.6."""
    if EarlyStoppingReason is not None:
        callback.stopping_reason = EarlyStoppingReason.PATIENCE_EXHAUSTED


def checks_on_train_epoch_end(callback: Any) -> bool | None:
    """Whether an ``EarlyStopping`` checks its monitor at train epoch end (``_check_on_train_epoch_end``).

    The ``check_on_train_epoch_end`` argument as given, resolved in ``setup`` when ``None`` (``True``
    when validation runs once per epoch). Checked: lightning 2.6.6 (same in the 2.4.0 source).
    """
    return callback._check_on_train_epoch_end


# Private methods of ``lightning.pytorch.callbacks.EarlyStopping`` that
# ``lightning_recipes.callbacks.EarlyStopping`` overrides, with their parameters. The override
# must keep Lightning's contract: ``(current: Tensor) -> (should_stop: bool, reason: str | None)``,
# called by ``_run_early_stopping_check`` with the monitored value; it also sets ``best_score``,
# ``wait_count`` and (2.6+) ``stopping_reason``. Checked: lightning 2.6.6 (same signature in 2.4.0).
EARLY_STOPPING_OVERRIDES: dict[str, tuple[str, ...]] = {"_evaluate_stopping_criteria": ("self", "current")}


# -- DDP (used by callbacks/freeze_unfreeze.py) ---------------------------------------------------


def rewrap_ddp(strategy: Any) -> bool:
    """Wrap the LightningModule in a new ``DistributedDataParallel``; return whether it did.

    Only for a ``DDPStrategy`` whose model is already wrapped (i.e. after ``Trainer`` set up the
    strategy). DDP's reducer only covers parameters that required grad when the wrapper was built; a
    new wrapper (built by the strategy's own ``configure_ddp``, with its ``ddp_kwargs`` and comm hooks)
    covers exactly the parameters trainable now, and broadcasts rank 0's state.

    Relies on ``strategy.model`` being settable to the bare LightningModule and ``configure_ddp()``
    wrapping ``strategy.model`` (public names, but not documented for calling mid-fit).
    Checked: lightning 2.6.6, torch 2.15.
    """
    from lightning.pytorch.strategies import DDPStrategy
    from torch.nn.parallel import DistributedDataParallel

    if not (isinstance(strategy, DDPStrategy) and isinstance(strategy.model, DistributedDataParallel)):
        return False
    strategy.model = strategy.lightning_module
    strategy.configure_ddp()
    return True


# -- mixed precision (used by callbacks/gradient_monitor.py) --------------------------------------


def optimizer_unscales_itself(optimizer: Any) -> bool:
    """Whether ``optimizer`` (``fused=True`` AdamW/SGD) applies the fp16 loss scale in its own ``step``.

    Then ``16-mixed`` skips ``scaler.unscale_`` (``on_before_optimizer_step`` sees scaled gradients).
    Asks Lightning's private ``_optimizer_handles_unscaling``, so the two agree. Checked: lightning 2.6.6.
    """
    from lightning.pytorch.plugins.precision.amp import _optimizer_handles_unscaling

    return bool(_optimizer_handles_unscaling(optimizer))


def unscale_fused_for_clipping(precision: Any, optimizer: Any) -> bool:
    """For a ``fused=True`` optimizer under ``16-mixed``/``bf16-mixed``: unscale its fp16 gradients now, so
    they can be clipped, and return ``True``; ``False`` (nothing done) for any other optimizer or precision.

    Lightning's ``MixedPrecision.clip_gradients`` refuses any optimizer that unscales in its own step
    ("does not allow for gradient clipping ... Are you using a 'fused' optimizer?"), for bf16 too, where
    there is no loss scale at all. Under fp16 the gradients are unscaled with the scaler's public
    ``unscale_``: torch's ``GradScaler.step`` then gives the fused step no scale and still skips the step
    on inf/NaN. Then :func:`clip_unchecked` clips them. Checked: lightning 2.6.6, torch 2.5 and 2.15.
    """
    from lightning.pytorch.plugins.precision import MixedPrecision

    if not (isinstance(precision, MixedPrecision) and optimizer_unscales_itself(optimizer)):
        return False
    if precision.scaler is not None:
        precision.scaler.unscale_(optimizer)
    return True


def clip_unchecked(precision: Any, optimizer: Any, clip_val: float, algorithm: str | None) -> None:
    """Lightning's clipping (``Precision.clip_gradients``: by norm or value over the optimizer's
    parameters) without ``MixedPrecision``'s refusal of fused optimizers; for gradients that
    :func:`unscale_fused_for_clipping` unscaled. Relies on ``MixedPrecision.clip_gradients`` adding
    nothing but that refusal to its parent's. Checked: lightning 2.6.6."""
    from lightning.pytorch.plugins.precision import Precision
    from lightning.pytorch.utilities import GradClipAlgorithmType

    Precision.clip_gradients(precision, optimizer, clip_val, GradClipAlgorithmType(algorithm or "norm"))


# -- weight averaging (used by callbacks/ema.py) ---------------------------------------------------


def average_model(callback: Any) -> Any:
    """The ``torch.optim.swa_utils.AveragedModel`` a ``WeightAveraging`` callback keeps (``_average_model``):
    built in ``setup("fit")``, ``None`` before. Checked: lightning 2.6.6 (``WeightAveraging`` is new in 2.6.0;
    the attribute is the same in the repository's source read since)."""
    return callback._average_model
