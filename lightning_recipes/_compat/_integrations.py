"""Lightning's private API around its loggers, strategies and module tracing, as the application and
:mod:`lightning_recipes.strategies` use it (see :mod:`lightning_recipes._compat`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from torch import nn

if TYPE_CHECKING:
    from lightning.pytorch.loggers import WandbLogger

# -- WandbLogger (used by loggers/wandb.py) -------------------------------------------------------
# Lightning's ``WandbLogger`` keeps the ``wandb.init`` arguments, the run, the attach id of a run
# created in a parent process, and the bookkeeping of uploaded checkpoints in private attributes.
# Checked: lightning 2.6.6 with wandb 0.31 (same attribute names in the 2.4.0 source).


def wandb_init_kwargs(logger: WandbLogger) -> dict[str, Any]:
    """The (mutable) dict of ``wandb.init`` arguments the logger will start its run with (``_wandb_init``)."""
    return logger._wandb_init


def wandb_run_pending(logger: WandbLogger) -> bool:
    """Whether reading ``logger.experiment`` would start a new run: none yet (``_experiment``) and no run
    of a parent process to attach to (``_attach_id``, set when the logger was pickled to a child)."""
    return logger._experiment is None and getattr(logger, "_attach_id", None) is None


def lightning_wandb_experiment(logger: WandbLogger) -> Any:
    """Lightning's own ``WandbLogger.experiment`` getter (rank-zero wrapped), for a subclass that
    overrides the property and delegates to it (``WandbLogger.experiment.fget``)."""
    from lightning.pytorch.loggers import WandbLogger

    return WandbLogger.experiment.fget(logger)  # type: ignore[attr-defined]


def wandb_logged_model_times(logger: WandbLogger) -> dict[str, float]:
    """Path -> modification time of each checkpoint already uploaded (``_logged_model_time``, mutable)."""
    return logger._logged_model_time


def wandb_checkpoint_artifact_name(logger: WandbLogger) -> str:
    """The artifact name of uploaded checkpoints (``_checkpoint_name``); like Lightning, it defaults to
    ``model-<run id>`` the first time and is then kept."""
    if not logger._checkpoint_name:
        logger._checkpoint_name = f"model-{logger.experiment.id}"
    return logger._checkpoint_name


# Private methods of ``lightning.pytorch.loggers.WandbLogger`` that
# ``lightning_recipes.loggers.WandbLogger`` overrides, with their parameters.
# ``_scan_and_log_checkpoints(checkpoint_callback)`` is what Lightning's ``after_save_checkpoint``
# (``log_model="all"``) and ``finalize`` (``log_model=True``) call to upload checkpoints.
# Checked: lightning 2.6.6 (same in 2.4.0, where ``finalize`` handles one checkpoint callback only).
WANDB_LOGGER_OVERRIDES: dict[str, tuple[str, ...]] = {
    "_scan_and_log_checkpoints": ("self", "checkpoint_callback")
}


# -- tracing (used by export/) ---------------------------------------------------------------------


@contextmanager
def jit_tracing_lightning_modules() -> Iterator[None]:
    """While ``torch.jit.trace`` runs: a LightningModule without a Trainer lets tracing read its attributes.

    The tracer checks every submodule for exported methods with ``hasattr``, which reads the ``trainer``
    property, and that raises outside a Trainer unless the class-level flag ``_jit_is_scripting`` is set,
    as Lightning's own ``to_torchscript`` does (with ``lightning.pytorch.core.module._jit_is_scripting``).
    Checked: lightning 2.6.6.
    """
    from lightning.pytorch.core.module import _jit_is_scripting

    with _jit_is_scripting():
        yield


# -- loggers (used by cluster.py) -------------------------------------------------------------------


def set_default_logger_version(logger: Any, version: str) -> bool:
    """Give a ``CSVLogger``/``TensorBoardLogger`` built without ``version`` this one; return whether it did.

    Both keep the constructor's ``version`` in ``_version`` and, while it is ``None``, pick the next
    ``version_N`` when ``version`` (or ``log_dir``) is first read; setting ``_version`` before that is
    what ``version=...`` does. Checked: lightning 2.6.6.
    """
    if getattr(logger, "_version", "unset") is not None:
        return False
    logger._version = version
    return True


# -- FSDP (used by strategies.py) ----------------------------------------------------------------


# ``TransformerFSDP._setup_model`` overrides FSDPStrategy's private ``_setup_model(self, model)`` to wrap
# on CPU processes (Lightning gives torch ``device_id=None`` there), then calls it: it must skip a model
# already wrapped and apply activation checkpointing. Checked: lightning 2.6.6 (same in 2.6.0).
FSDP_STRATEGY_OVERRIDES: dict[str, tuple[str, ...]] = {"_setup_model": ("self", "model")}


def set_fsdp_activation_checkpointing(strategy: Any, block_classes: set[type[nn.Module]]) -> None:
    """Have Lightning's ``FSDPStrategy`` checkpoint the activations of every module of ``block_classes``.

    ``FSDPStrategy(activation_checkpointing_policy=...)`` only takes the classes when it is built; the
    block classes of a recipe's model are known once the model is (``TransformerFSDP.setup``). This
    sets what the constructor would: ``strategy._activation_checkpointing_kwargs``, computed by
    Lightning's ``_activation_checkpointing_kwargs(None, block_classes)`` (``{"auto_wrap_policy":
    ModuleWrapPolicy(block_classes)}``), which ``_setup_model`` hands to torch's
    ``apply_activation_checkpointing`` after wrapping. Checked: lightning 2.6.6, torch 2.15.
    """
    from lightning.fabric.strategies.fsdp import _activation_checkpointing_kwargs

    strategy._activation_checkpointing_kwargs = _activation_checkpointing_kwargs(None, set(block_classes))


def unwrapped_name(name: str) -> str:
    """``name`` (of a parameter or buffer) without the infixes FSDP and activation checkpointing add.

    Inside an FSDP-wrapped model a block's weight is ``h.0._fsdp_wrapped_module.attn.c_attn.weight``
    (``._checkpoint_wrapped_module.`` too with activation checkpointing); the state dict FSDP saves
    uses the plain name. torch's private ``clean_tensor_name`` strips both. Checked: torch 2.15, 2.5.

    Example::

        >>> unwrapped_name("h.0._fsdp_wrapped_module._checkpoint_wrapped_module.attn.bias")
        'h.0.attn.bias'
    """
    from torch.distributed.fsdp._common_utils import clean_tensor_name

    return clean_tensor_name(name)
