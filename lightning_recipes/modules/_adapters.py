"""Adapters (LoRA, IA3, LoHa, ...) from ``peft`` on a module's backbone, their export, and checkpoints
that hold only what trained.

A module with ``adapter=<peft config>`` injects the adapter layers into its pretrained model in place
(``peft.get_peft_model``), so ``self.backbone`` keeps its forward and now also holds the adapter weights;
peft freezes every pretrained weight, and the new head stays trainable. The ``peft.PeftModel`` wrapper
is kept beside the module (unregistered, so no weight is stored twice) for ``save_pretrained`` and merging.
``save_pretrained`` writes a peft adapter folder (``merge=False``) or merged weights in the format of the
model's ecosystem (``merge=True``), and the timm folder of an :class:`ImageClassifier`.

Trainable-only checkpoints (adapter runs and frozen-backbone runs alike) keep the trainable parameters
and the buffers; the frozen weights are left out and replaced by where they come from,
``{"source", "revision"}``, and a SHA-256 fingerprint of their values. Loading rebuilds the module from
its pretrained source, checks the fingerprint of the frozen weights it got, and fills them in, so the
loaded model equals the saved one.
"""

from __future__ import annotations

import copy
import enum
import hashlib
import importlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lightning_recipes import _compat

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
    # Set after wrapping: peft sets it from the model (None for timm) and warns when that renames a value.
    wrapped.peft_config["default"].base_model_name_or_path = source
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


#: The new head's weights beside a peft adapter folder (the head is not part of the peft model).
HEAD_FILE = "head.safetensors"


def save_adapter(module: Any, folder: Path, head: nn.Module | None) -> Path:
    """Write ``module.peft_model`` as a peft adapter folder (``adapter_config.json`` +
    ``adapter_model.safetensors``, which ``peft.PeftModel.from_pretrained(base, folder)`` loads) and
    ``head``'s weights as :data:`HEAD_FILE` (``None``: the head is inside the peft model)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    module.peft_model.save_pretrained(str(folder))
    if head is not None:
        save_file({k: v.detach().contiguous() for k, v in head.state_dict().items()}, str(folder / HEAD_FILE))
    return folder


def save_image_classifier(module: Any, folder: Path, merge: bool) -> Path:
    """Write an :class:`~lightning_recipes.ImageClassifier`: a peft adapter folder (adapter, ``merge=False``)
    or a timm folder (``config.json`` + ``model.safetensors``) with the head as timm's classifier."""
    from timm.models import save_for_hf

    if module.peft_model is not None and not merge:
        return save_adapter(module, folder, module.head)
    # a new head is a Sequential (dropout, Linear); the pretrained classifier kept as-is is the Linear itself
    head = module.head
    linears = [head] if isinstance(head, nn.Linear) else [m for m in head if isinstance(m, nn.Linear)]
    if len(linears) != 1:
        raise ValueError(
            f"save_pretrained writes the head as timm's classifier, one Linear layer, but this head has "
            f"{len(linears)} (hidden_dim={module.hparams.get('hidden_dim')}): build the model with "
            "hidden_dim=None, or save an adapter run with merge=False"
        )
    if module.peft_model is not None:
        (backbone,) = merged_copies(module.peft_model)
    else:
        backbone = copy.deepcopy(module.backbone)
    # its outputs: the classes, or as-is with class_map the pretrained labels the classes are read from
    backbone.reset_classifier(linears[0].out_features)
    backbone.get_classifier().load_state_dict(linears[0].state_dict())
    labels = {"label_names": module.output_names or module.label_names}
    save_for_hf(backbone, str(folder), model_config=labels, safe_serialization=True)
    return folder


#: Checkpoint key of the base description: ``{"source", "revision", "fingerprint", "frozen_weights"}``.
BASE_KEY = "lightning_recipes_base"


def fingerprint(state: Mapping[str, Tensor], keys: Iterable[str]) -> str:
    """SHA-256 of the named tensors (names, dtypes, shapes and bytes), in sorted name order.

    Example::

        >>> a = {"w": torch.ones(2), "b": torch.zeros(1)}
        >>> fingerprint(a, ["w"]) == fingerprint({"w": torch.ones(2)}, ["w"]) != fingerprint(a, ["w", "b"])
        True
    """
    digest = hashlib.sha256()
    for key in sorted(keys):
        tensor = state[key].detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{key}|{tensor.dtype}|{tuple(state[key].shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def trainable_keys(module: nn.Module, state: Mapping[str, Any]) -> set[str]:
    """State-dict keys of ``module``'s trainable parameters (every tied name) and of its buffers.

    ``module`` may be FSDP-wrapped (its names then hold FSDP's infixes, which its state dict does not).
    """
    kept = {n for n, p in module.named_parameters(remove_duplicate=False) if p.requires_grad}
    kept |= {n for n, _ in module.named_buffers(remove_duplicate=False)}
    return {_compat.unwrapped_name(n) for n in kept} & set(state)


def keep_trainable(module: nn.Module, checkpoint: dict[str, Any], source: Mapping[str, Any]) -> None:
    """Drop the frozen weights from ``checkpoint["state_dict"]``; record ``source`` and their fingerprint."""
    state = checkpoint["state_dict"]
    kept = trainable_keys(module, state)
    frozen = [k for k in state if k not in kept]
    checkpoint[BASE_KEY] = {
        **source,
        "fingerprint": fingerprint(state, frozen),
        "frozen_weights": len(frozen),
    }
    checkpoint["state_dict"] = {k: v for k, v in state.items() if k in kept}


def check_frozen(own: Mapping[str, Tensor], checkpoint: dict[str, Any], trained: Iterable[str]) -> list[str]:
    """The keys of ``own`` (the rebuilt model's full state dict) left out of a trainable-only checkpoint
    whose kept keys are ``trained``, after checking their fingerprint against the checkpoint's.

    Raises:
        ValueError: the rebuilt base has other weights (or another architecture) than the one trained on.
    """
    base = checkpoint[BASE_KEY]
    trained = set(trained)
    frozen = [k for k in own if k not in trained]
    found = fingerprint(own, frozen)
    if len(frozen) != base["frozen_weights"] or found != base["fingerprint"]:
        raise ValueError(
            f"This checkpoint holds only the trained weights; the frozen ones come from its base "
            f"{base['source']!r} (revision {base.get('revision')!r}), which was loaded, but its weights are "
            f"not those the checkpoint was trained on ({len(frozen)} frozen tensors with fingerprint "
            f"{found[:16]}, expected {base['frozen_weights']} with {base['fingerprint'][:16]}). Point the "
            "model at the same base weights (model_name_or_path/backbone and revision) to load it."
        )
    return frozen


def restore_frozen(module: nn.Module, checkpoint: dict[str, Any]) -> None:
    """Fill a trainable-only checkpoint's state dict with ``module``'s (rebuilt) frozen weights, after
    checking their fingerprint (:func:`check_frozen`); a full checkpoint is left as it is, and so is one
    whose state dict FSDP loaded itself (``TransformerFSDP.load_checkpoint`` checks those).
    """
    if BASE_KEY not in checkpoint or "state_dict" not in checkpoint:
        return
    state = checkpoint["state_dict"]
    own = module.state_dict()
    state.update({k: own[k] for k in check_frozen(own, checkpoint, state)})
