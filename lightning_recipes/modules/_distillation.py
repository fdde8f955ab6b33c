"""Knowledge distillation's two pieces inside the modules: the loss (Hinton et al. 2015) and DistilBERT's
student initialisation (every other transformer block of the teacher).

The teacher itself is run by :class:`~lightning_recipes.callbacks.Distillation`, which hands its logits
to the module per training batch (:class:`~lightning_recipes.handshake.TeacherLogits`);
``TransferModule.training_loss`` mixes them in with :func:`distillation_loss`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["check_distillation", "distillation_loss", "keep_every_other_block"]


def check_distillation(temperature: float, alpha: float) -> None:
    """Refuse a temperature <= 0 or an ``alpha`` outside ``[0, 1]``, naming the value and what fits.

    Example::

        >>> check_distillation(0.0, 0.5)
        Traceback (most recent call last):
        ValueError: temperature must be > 0 (logits are divided by it; e.g. 2.0), got 0.0
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (logits are divided by it; e.g. 2.0), got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(
            f"alpha must be in [0, 1] (the label loss's weight; the teacher's is 1 - alpha), got {alpha}"
        )


def distillation_loss(
    label_loss: Tensor,
    student: Tensor,
    teacher: Tensor,
    temperature: float,
    alpha: float,
    mask: Tensor | None = None,
) -> Tensor:
    """``alpha * label_loss + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))``.

    The KL divergence is summed over the last dimension (classes, or the vocabulary) and averaged over
    the rows (examples, or the tokens where ``mask`` is true). ``T^2`` keeps the soft term's gradients
    the size of the label term's whatever ``T`` (Hinton et al. 2015, section 2).

    Args:
        label_loss: the loss on the labels (cross-entropy), a scalar.
        student: the student's logits, ``[..., classes]``.
        teacher: the teacher's logits, the same shape.
        temperature: ``T`` > 0.
        alpha: the label loss's weight in ``[0, 1]``.
        mask: which rows count (``[...]``: a causal LM's predicted positions); ``None``: all.

    Example::

        >>> import torch
        >>> logits = torch.tensor([[2.0, 0.0]])
        >>> round(float(distillation_loss(torch.tensor(0.7), logits, logits, temperature=2.0, alpha=0.5)), 4)
        0.35
    """
    check_distillation(temperature, alpha)
    student, teacher = student.float().flatten(0, -2), teacher.float().flatten(0, -2)
    if mask is not None:
        keep = mask.flatten().bool()
        student, teacher = student[keep], teacher[keep]
    kl = F.kl_div(
        F.log_softmax(student / temperature, -1),
        F.log_softmax(teacher / temperature, -1),
        reduction="sum",
        log_target=True,
    ) / max(student.shape[0], 1)
    return alpha * label_loss + (1.0 - alpha) * temperature**2 * kl


def keep_every_other_block(model: nn.Module) -> list[int]:
    """Keep transformer blocks 0, 2, 4, ... of ``model`` (a transformers model) and drop the others, in
    place: DistilBERT's student, initialised from its teacher's layers (Sanh et al. 2019). Embeddings,
    final norm and head stay as they are; the config's layer count follows. Returns the kept indices.

    Example::

        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> lm = GPT2LMHeadModel(GPT2Config(n_layer=4, n_embd=16, n_head=2, vocab_size=50))
        >>> keep_every_other_block(lm), lm.config.n_layer, len(lm.transformer.h)
        ([0, 2], 2, 2)
    """
    from lightning_recipes.modules._hf import (
        transformer_blocks,
    )  # text and LM only: image code never loads it

    found = transformer_blocks(model)
    if found is None or len(found[1]) < 2:
        raise ValueError(
            f"every_other_block needs a transformer with 2 or more blocks; {type(model).__name__} has "
            f"{0 if found is None else len(found[1])}"
        )
    name, blocks = found
    kept = list(range(0, len(blocks), 2))
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, nn.ModuleList(blocks[i] for i in kept))
    config = getattr(model, "config", None)
    for key in ("num_hidden_layers", "n_layer", "n_layers"):
        if config is not None and isinstance(getattr(config, key, None), int):
            setattr(config, key, len(kept))
    for new, block in enumerate(getattr(parent, attr)):
        attention = getattr(block, "attn", None) or getattr(block, "self_attn", None)
        if attention is not None and hasattr(attention, "layer_idx"):
            attention.layer_idx = new  # GPT-2/Llama index their key/value cache by it
    return kept
