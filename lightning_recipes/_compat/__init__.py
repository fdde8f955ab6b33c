"""Every use of another library's private API, in one place: named, dated, tested.

The callbacks, schedulers and loggers of ``lightning_recipes`` reach into Lightning, torch and timm
where no public API does what they need (a mid-fit LR sweep, a re-wrapped DDP model, a scheduler
resized to new parameter groups...). Each such use is a small function or constant here, with the
versions it was checked against, and one test in ``tests/_compat/`` that fails with a message
naming the library and version when an upgrade breaks it. Where a private method of a parent class
is *overridden* (the override has to stay in the subclass), a constant here lists the names relied
upon and the test checks that the parent still has them with the expected signature.

"Checked" means: this module's tests pass on **lightning 2.6.6, torch 2.15, timm 1.0.31** and on the
lower bounds in ``pyproject.toml`` (``.ci/oldest``); a release older than a lower bound (lightning
2.4.0, 2.5.5) named by an entry was read, not run.

Modules: ``_lightning`` (loops, LR finder, evaluation loaders, callback order, ``EarlyStopping``, DDP,
mixed precision, weight averaging), ``_integrations`` (Lightning's ``WandbLogger`` and default loggers,
FSDP, tracing for export), ``_libraries`` (torch LR schedulers and BatchNorm, timm parameter groups,
datasets fingerprints, huggingface_hub offline mode). Everything is reached from here, ``_compat.<name>``;
a module is imported when one of its names is first used, so a class loads only the modules it uses.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Where each name lives.
_MODULES: dict[str, tuple[str, ...]] = {
    "_lightning": (
        "all_loops",
        "average_model",
        "checks_on_train_epoch_end",
        "clip_unchecked",
        "EARLY_STOPPING_OVERRIDES",
        "EarlyStoppingReason",
        "evaluation_dataloaders",
        "fit_combined_loaders",
        "fresh_fit_loop",
        "LOOP_RESTART_FLAGS",
        "lr_range_test",
        "optimizer_unscales_itself",
        "rewrap_ddp",
        "run_before_tuner_callbacks",
        "set_patience_exhausted",
        "sharded_sampler",
        "TUNER_CALLBACK_TYPES",
        "unscale_fused_for_clipping",
    ),
    "_integrations": (
        "FSDP_STRATEGY_OVERRIDES",
        "jit_tracing_lightning_modules",
        "lightning_wandb_experiment",
        "set_default_logger_version",
        "set_fsdp_activation_checkpointing",
        "unwrapped_name",
        "wandb_checkpoint_artifact_name",
        "wandb_init_kwargs",
        "wandb_logged_model_times",
        "WANDB_LOGGER_OVERRIDES",
        "wandb_run_pending",
    ),
    "_libraries": (
        "dataset_fingerprint",
        "hub_offline",
        "is_batch_norm",
        "SCHEDULER_LAST_LR",
        "set_last_lr",
        "sub_schedulers",
        "timm_group_parameters",
    ),
}
_HOME = {name: module for module, names in _MODULES.items() for name in names}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    """``_compat.<name>``, from its module (imported on first use; not cached here, so a reloaded module
    is read again)."""
    if name in _MODULES:  # the module itself (``_compat._lightning``), as for any package
        return importlib.import_module(f"{__name__}.{name}")
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return __all__
