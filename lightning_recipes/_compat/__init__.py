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

Modules: ``_lightning`` (loops, LR finder, callback order, ``EarlyStopping``, ``WandbLogger``, DDP,
FSDP, mixed precision), ``_libraries`` (torch LR schedulers and BatchNorm, timm parameter groups, datasets
fingerprints, huggingface_hub offline mode). Everything is imported from here: ``_compat.<name>``.
"""

from lightning_recipes._compat._libraries import (
    SCHEDULER_LAST_LR,
    dataset_fingerprint,
    hub_offline,
    is_batch_norm,
    set_last_lr,
    sub_schedulers,
    timm_group_parameters,
)
from lightning_recipes._compat._lightning import (
    EARLY_STOPPING_OVERRIDES,
    FSDP_STRATEGY_OVERRIDES,
    LOOP_RESTART_FLAGS,
    TUNER_CALLBACK_TYPES,
    WANDB_LOGGER_OVERRIDES,
    EarlyStoppingReason,
    all_loops,
    average_model,
    checks_on_train_epoch_end,
    clip_unchecked,
    evaluation_dataloaders,
    fit_combined_loaders,
    fresh_fit_loop,
    jit_tracing_lightning_modules,
    lightning_wandb_experiment,
    lr_range_test,
    optimizer_unscales_itself,
    rewrap_ddp,
    run_before_tuner_callbacks,
    set_default_logger_version,
    set_fsdp_activation_checkpointing,
    set_patience_exhausted,
    sharded_sampler,
    unscale_fused_for_clipping,
    unwrapped_name,
    wandb_checkpoint_artifact_name,
    wandb_init_kwargs,
    wandb_logged_model_times,
    wandb_run_pending,
)

__all__ = [
    "EarlyStoppingReason",
    "EARLY_STOPPING_OVERRIDES",
    "FSDP_STRATEGY_OVERRIDES",
    "LOOP_RESTART_FLAGS",
    "SCHEDULER_LAST_LR",
    "TUNER_CALLBACK_TYPES",
    "WANDB_LOGGER_OVERRIDES",
    "all_loops",
    "average_model",
    "checks_on_train_epoch_end",
    "clip_unchecked",
    "dataset_fingerprint",
    "evaluation_dataloaders",
    "fit_combined_loaders",
    "fresh_fit_loop",
    "jit_tracing_lightning_modules",
    "hub_offline",
    "is_batch_norm",
    "lightning_wandb_experiment",
    "lr_range_test",
    "optimizer_unscales_itself",
    "rewrap_ddp",
    "run_before_tuner_callbacks",
    "set_default_logger_version",
    "set_fsdp_activation_checkpointing",
    "set_last_lr",
    "set_patience_exhausted",
    "sharded_sampler",
    "sub_schedulers",
    "timm_group_parameters",
    "unscale_fused_for_clipping",
    "unwrapped_name",
    "wandb_checkpoint_artifact_name",
    "wandb_init_kwargs",
    "wandb_logged_model_times",
    "wandb_run_pending",
]
