"""Adapters (LoRA, IA3, LoHa, ...) from ``peft`` on a module's backbone: defaults, wrapping, merging, errors.

A module with ``adapter=<peft config>`` injects the adapter layers into its pretrained model in place
(``peft.get_peft_model``), so ``self.backbone`` keeps its forward and now also holds the adapter weights;
peft freezes every pretrained weight, and the new head stays trainable. The ``peft.PeftModel`` wrapper
is kept beside the module (unregistered, so no weight is stored twice) for ``save_pretrained`` and merging.
"""

from __future__ import annotations

import copy
import enum
import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torch import nn

if TYPE_CHECKING:
    from peft import PeftConfig, PeftModel

#: Default ``target_modules`` per transformers ``model_type`` (LoRA-like adapters): attention projections.
#: GPT-2's ``c_proj`` names both the attention output and the MLP output projection (``Conv1D`` layers).
DEFAULT_TARGETS: dict[str, list[str]] = {
    "bert": ["query", "key", "value"],
    "distilbert": ["q_lin", "k_lin", "v_lin"],
    "gpt2": ["c_attn", "c_proj"],
}
#: What a recipe can write instead of the adapter's fields, as a reminder in error messages.
EXAMPLE = "adapter: {class_path: peft.LoraConfig, init_args: {r: 8, target_modules: [...]}}"


def adapter_config(adapter: PeftConfig | Mapping[str, Any]) -> PeftConfig:
    """A fresh ``peft.PeftConfig`` from a config, a ``{class_path, init_args}`` dict or a
    :func:`config_to_dict` dict.

    Example::

        >>> adapter_config({"class_path": "peft.LoraConfig", "init_args": {"r": 4}}).r
        4
        >>> adapter_config({"peft_type": "IA3"}).__class__.__name__
        'IA3Config'
    """
    import peft

    if isinstance(adapter, peft.PeftConfig):
        return copy.deepcopy(adapter)
    if not isinstance(adapter, Mapping):
        raise TypeError(f"adapter must be a peft.PeftConfig (e.g. peft.LoraConfig(r=8)) or {EXAMPLE}")
    if "class_path" in adapter:
        module, _, name = str(adapter["class_path"]).rpartition(".")
        cls = getattr(importlib.import_module(module) if module.startswith("peft.") else peft, name, None)
        if not (isinstance(cls, type) and issubclass(cls, peft.PeftConfig)):
            raise ValueError(
                f"adapter class_path {adapter['class_path']!r} is not a peft config class: {EXAMPLE}"
            )
        return cls(**dict(adapter.get("init_args") or {}))
    if "peft_type" in adapter:
        return peft.PeftConfig.from_peft_type(**dict(adapter))
    raise ValueError(f"adapter {dict(adapter)!r} names no peft config class: {EXAMPLE}")


def config_to_dict(config: PeftConfig) -> dict[str, Any]:
    """``{"class_path", "init_args"}`` of a config, as in a recipe: the fields that differ from the defaults,
    in plain Python (lists for sets, strings for enums) that a weights-only ``torch.load`` and the CLI read
    back; :func:`adapter_config` rebuilds the config from it.

    Example::

        >>> import peft
        >>> plain = config_to_dict(peft.LoraConfig(r=4, target_modules={"q", "v"}))
        >>> plain
        {'class_path': 'peft.LoraConfig', 'init_args': {'r': 4, 'target_modules': ['q', 'v']}}
        >>> adapter_config(plain).r
        4
    """
    import peft

    def plain(value: Any) -> Any:
        if isinstance(value, enum.Enum):
            return value.value
        if isinstance(value, Mapping):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, set):
            return sorted(plain(v) for v in value)
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    cls = type(config)
    defaults = plain(cls().to_dict())
    values = plain(config.to_dict())
    skip = ("peft_type", "peft_version")  # set by the config class itself
    init_args = {k: v for k, v in values.items() if k not in skip and defaults.get(k, object()) != v}
    module = "peft" if getattr(peft, cls.__name__, None) is cls else cls.__module__
    return {"class_path": f"{module}.{cls.__name__}", "init_args": init_args}


def timm_targets(model: nn.Module) -> list[str]:
    """Names of the layers of a timm model that LoRA adapts and merges: ``Linear`` and ungrouped ``Conv2d``.

    Example::

        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, groups=8), nn.Linear(8, 2))
        >>> timm_targets(net)
        ['0', '2']
    """
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)
    ]


def _supported_layers(model: nn.Module) -> list[str]:
    kinds = ("Linear", "Conv1d", "Conv2d", "Conv3d", "Conv1D", "Embedding")
    return [name for name, m in model.named_modules() if type(m).__name__ in kinds and name]


def wrap(model: nn.Module, adapter: PeftConfig | Mapping[str, Any], source: str | None = None) -> PeftModel:
    """Inject ``adapter`` into ``model`` in place and return the ``peft.PeftModel`` around it.

    Without ``target_modules``, LoRA-like adapters get :data:`DEFAULT_TARGETS` for the model's
    ``model_type`` (transformers) or :func:`timm_targets` (timm); other adapters and model types use
    peft's own defaults. Prompt-learning adapters (prompt/prefix tuning) are refused: they change the
    input sequence, not the layers, and do not fit a backbone + head.

    Raises:
        ValueError: the targets match no layer, the model type has no default, the layer type is not
            supported by the adapter, or the adapter is a prompt-learning one; the message names the
            model's layers that would work.
    """
    import peft

    config = adapter_config(adapter)
    name = type(config).__name__
    if config.is_prompt_learning:
        raise ValueError(
            f"adapter {name} is a prompt-learning method, which lightning_recipes modules do not support: "
            "use an adapter on layers (peft.LoraConfig, IA3Config, LoHaConfig, LoKrConfig, ...)"
        )
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    is_timm = hasattr(model, "pretrained_cfg")
    if getattr(config, "target_modules", "absent") is None and not hasattr(config, "feedforward_modules"):
        if model_type in DEFAULT_TARGETS:
            config.target_modules = list(DEFAULT_TARGETS[model_type])
            if model_type == "gpt2" and hasattr(config, "fan_in_fan_out"):
                config.fan_in_fan_out = True  # GPT-2's Conv1D stores weights as (in, out)
        elif is_timm:
            config.target_modules = timm_targets(model)
    if source is not None:
        config.base_model_name_or_path = source
    described = f"model_type={model_type!r}" if model_type else f"{type(model).__name__} (timm)"
    try:
        wrapped = peft.get_peft_model(model, config)
    except (ValueError, TypeError, NotImplementedError) as exc:
        layers = _supported_layers(model)
        shown = ", ".join(layers[:12]) + (", ..." if len(layers) > 12 else "")
        targets = getattr(config, "target_modules", None)
        targets = sorted(targets) if isinstance(targets, set) else targets
        raise ValueError(
            f"adapter {name}(target_modules={targets!r}) cannot be applied to {described}: "
            f"{str(exc).rstrip('.')}. Layers of this model that adapters usually support: [{shown}]; set "
            f"adapter.init_args.target_modules to some of them (names or suffixes), or use peft.LoraConfig, "
            f"which has defaults for {sorted(DEFAULT_TARGETS)} and timm models"
        ) from exc
    wrapped.peft_config["default"].base_model_name_or_path = source  # peft resets it for non-transformers
    return wrapped


def merged_copies(peft_model: PeftModel, *others: nn.Module) -> tuple[nn.Module, ...]:
    """Copies of ``peft_model``'s base model with the adapter merged in, and of ``others`` (which may contain
    it: they are copied together, so they hold the merged layers); the originals are left as they are."""
    copies = copy.deepcopy((peft_model, *others))
    try:
        merged = copies[0].merge_and_unload(safe_merge=True)
    except (NotImplementedError, ValueError, AttributeError) as exc:
        name = type(peft_model.peft_config["default"]).__name__
        raise ValueError(
            f"merge=True cannot merge this {name} adapter into the pretrained weights ({exc}). Save it "
            "with merge=False (a peft adapter folder), or train an adapter that merges: peft.LoraConfig on "
            "Linear/Conv1D/ungrouped Conv2d layers, IA3Config, LoHaConfig, LoKrConfig"
        ) from exc
    return (merged, *copies[1:])
