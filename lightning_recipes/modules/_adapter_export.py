"""``save_pretrained`` of adapter runs: a peft adapter folder (``merge=False``) or merged weights in the
format of the model's ecosystem (``merge=True``), and the timm folder of an :class:`ImageClassifier`."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from torch import nn

from lightning_recipes.modules._adapters import merged_copies

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
    linears = [m for m in module.head if isinstance(m, nn.Linear)]
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
    backbone.reset_classifier(module.num_classes)
    backbone.get_classifier().load_state_dict(linears[0].state_dict())
    labels = {"label_names": module.label_names}
    save_for_hf(backbone, str(folder), model_config=labels, safe_serialization=True)
    return folder
