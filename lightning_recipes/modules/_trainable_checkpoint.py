"""Checkpoints that hold only what trained: adapter runs and frozen-backbone (linear probing) runs alike.

The state dict keeps the trainable parameters and the buffers (running statistics move in training
mode); the frozen weights are left out and replaced by where they come from, ``{"source", "revision"}``,
and a SHA-256 fingerprint of their values. Loading rebuilds the module from its pretrained source, checks
the fingerprint of the frozen weights it got, and fills them in, so the loaded model equals the saved one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from lightning_recipes import _compat

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
