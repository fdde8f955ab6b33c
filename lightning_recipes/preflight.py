"""Options of a recipe that cannot work together, refused before anything is built.

Lightning finds most of these only when it builds the Trainer, after the model (minutes of loading
weights for a large one), or at the first step. :func:`check` reads the parsed recipe instead, and
:class:`~lightning_recipes.recipe_cli.LightningRecipesCLI` calls it before it instantiates anything. Each
refusal is one line naming the options and the fix.

Example::

    >>> from jsonargparse import Namespace
    >>> recipe = Namespace(trainer=Namespace(strategy="fsdp", callbacks=[
    ...     Namespace(class_path="lightning_recipes.callbacks.FreezeUnfreeze")]))
    >>> problems(recipe)[0].split(":")[0]
    'trainer.callbacks FreezeUnfreeze with trainer.strategy=fsdp'
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

MIXED = ("16-mixed", "bf16-mixed", "16", "bf16")


class IncompatibleOptions(ValueError):
    """Options of a recipe that cannot work together; the message names them and the fix."""


def _get(config: Any, key: str, default: Any = None) -> Any:
    value = config.get(key, default) if hasattr(config, "get") else getattr(config, key, default)
    return default if value is None else value


def _class(spec: Any) -> type | None:
    """The class of a ``class_path`` entry (a Namespace or dict), or ``None``."""
    path = _get(spec, "class_path") if not isinstance(spec, str) else None
    if not path:
        return None if not isinstance(spec, type) else spec
    module, _, name = str(path).rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None  # the parser reports an unknown class_path in its own words


def strategy_class(strategy: Any) -> type | None:
    """The Lightning strategy class a recipe's ``trainer.strategy`` names (``None`` for ``auto``)."""
    if isinstance(strategy, str):
        from lightning.pytorch.strategies import StrategyRegistry

        return StrategyRegistry[strategy]["strategy"] if strategy in StrategyRegistry else None
    return type(strategy) if hasattr(strategy, "setup_environment") else _class(strategy)


def problems(config: Any) -> list[str]:
    """Every incompatibility in a parsed recipe (``trainer``, ``model`` sections), one line each."""
    trainer = _get(config, "trainer", {})
    found: list[str] = []

    accelerator, precision = (
        str(_get(trainer, "accelerator", "auto")),
        str(_get(trainer, "precision", "32-true")),
    )
    cuda = torch.cuda.is_available()
    if accelerator in ("gpu", "cuda") and not cuda:
        found.append(
            f"trainer.accelerator={accelerator}: this machine has no CUDA GPU (torch.cuda.is_available() is "
            "False); use --trainer.accelerator=cpu (or auto), with --trainer.devices=1"
        )
    devices = _get(trainer, "devices", "auto")
    if (
        accelerator in ("gpu", "cuda")
        and cuda
        and isinstance(devices, int)
        and devices > torch.cuda.device_count()
    ):
        found.append(
            f"trainer.devices={devices}: this machine has {torch.cuda.device_count()} CUDA GPUs; use "
            f"--trainer.devices={torch.cuda.device_count()} (or auto)"
        )
    on_cuda = cuda and accelerator in ("gpu", "cuda", "auto")
    if precision.startswith("bf16") and on_cuda and not torch.cuda.is_bf16_supported():
        found.append(
            f"trainer.precision={precision}: {torch.cuda.get_device_name()} has no bfloat16 support; use "
            "--trainer.precision=16-mixed (fp16 with a loss scaler) or 32-true"
        )

    strategy = strategy_class(_get(trainer, "strategy", "auto"))
    for callback in _get(trainer, "callbacks", []) or []:
        cls = _class(callback)
        refusal = getattr(cls, "strategy_refusal", None)
        message = refusal(strategy) if strategy is not None and refusal is not None else None
        if message:
            name = _get(trainer, "strategy")
            name = name if isinstance(name, str) else strategy.__name__
            found.append(f"trainer.callbacks {cls.__name__} with trainer.strategy={name}: {message}")

    model = _get(config, "model", {})
    optimizer = _get(_get(model, "init_args", {}), "optimizer", {})
    fused = (
        bool(_get(_get(optimizer, "init_args", {}), "fused", False))
        if not isinstance(optimizer, str)
        else False
    )
    clip = _get(trainer, "gradient_clip_val", 0)
    if fused and clip and precision in MIXED:
        from lightning_recipes.modules._base import TransferModule

        cls = _class(model)
        if cls is not None and not issubclass(cls, TransferModule):
            found.append(
                f"model.init_args.optimizer fused=true with trainer.gradient_clip_val={clip} under "
                f"trainer.precision={precision}: Lightning cannot clip a fused optimizer's gradients and "
                f"{cls.__name__} does not clip them itself; set fused: false or drop gradient_clip_val (or "
                "subclass lightning_recipes' modules, which clip them)"
            )
    return found


def check(config: Any) -> None:
    """Raise :class:`IncompatibleOptions` naming every incompatibility in a parsed recipe."""
    found = problems(config)
    if found:
        raise IncompatibleOptions("; ".join(found))
