"""lightning_recipes: transfer-learning LightningModules, callbacks and YAML recipes.

Heavy libraries (timm, transformers, peft, wandb) load only when the name that needs them is used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0.dev0"

_EXPORTS = {
    "CausalLM": "lightning_recipes.modules.causal_lm",
    "DataSpec": "lightning_recipes.handshake",
    "DigitsDataModule": "lightning_recipes.data.digits",
    "ImageClassifier": "lightning_recipes.modules.image",
    "ImageDataModule": "lightning_recipes.data.image",
    "InputSpec": "lightning_recipes.handshake",
    "LightningRecipesCLI": "lightning_recipes.cli",
    "TextClassifier": "lightning_recipes.modules.text",
    "TextCorpusDataModule": "lightning_recipes.data.corpus",
    "TextDataModule": "lightning_recipes.data.text",
    "TransferModule": "lightning_recipes.modules._base",
    "WarmupDecay": "lightning_recipes.schedulers",
    "connect": "lightning_recipes.handshake",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lightning_recipes' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
