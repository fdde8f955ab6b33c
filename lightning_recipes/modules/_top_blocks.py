"""Add-layers for :class:`~lightning_recipes.CausalLM`: new transformer blocks on top of a pretrained body.

The new blocks go into the model's own block list (its forward, masks, KV cache and ``save_pretrained``
handle them like any other layer, and the export is a plain transformers model with more layers), but
the module's ``backbone`` is a :class:`BodyView` that leaves them out, so freezing the backbone freezes
the pretrained body only and the new blocks train with the head.

Each new block is a copy of the top pretrained block with its output projections (attention and MLP,
the two writes to the residual stream) set to zero, so it starts as the identity and the model starts
exactly where the pretrained one is (block expansion, as in LLaMA Pro: Wu et al., 2024).
"""

from __future__ import annotations

import copy

from torch import nn

#: Names (last component) of the modules that write a block's output into the residual stream:
#: GPT-2 ``attn.c_proj``/``mlp.c_proj``; Llama, Mistral, Qwen ``self_attn.o_proj``/``mlp.down_proj``;
#: GPT-NeoX (Pythia) ``attention.dense``/``mlp.dense_4h_to_h``; GPT-J ``attn.out_proj``/``mlp.fc_out``.
OUTPUT_PROJECTIONS = ("c_proj", "o_proj", "down_proj", "dense", "dense_4h_to_h", "out_proj", "fc_out")


def blocks_of(base_model: nn.Module) -> tuple[str, nn.ModuleList]:
    """``(attribute name, block list)``: the longest ``nn.ModuleList`` that is a child of ``base_model``."""
    lists = [(name, m) for name, m in base_model.named_children() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise ValueError(
            f"new_top_blocks needs the transformer blocks as an nn.ModuleList child of the body; "
            f"{type(base_model).__name__} has none (children: {[n for n, _ in base_model.named_children()]})"
        )
    return max(lists, key=lambda item: len(item[1]))


def identity_copy(block: nn.Module, layer_idx: int) -> nn.Module:
    """A copy of ``block`` whose output projections are zero (so it adds nothing to the residual stream),
    numbered ``layer_idx`` (its KV-cache slot).

    Example::

        >>> from transformers import GPT2Config
        >>> from transformers.models.gpt2.modeling_gpt2 import GPT2Block
        >>> new = identity_copy(GPT2Block(GPT2Config(n_embd=8, n_head=2), layer_idx=0), layer_idx=1)
        >>> new.attn.layer_idx, float(new.attn.c_proj.weight.abs().sum()), float(new.mlp.c_proj.bias.sum())
        (1, 0.0, 0.0)
    """
    new = copy.deepcopy(block)
    zeroed = 0
    for name, module in new.named_modules():
        if name.rsplit(".", 1)[-1] in OUTPUT_PROJECTIONS and getattr(module, "weight", None) is not None:
            nn.init.zeros_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
            zeroed += 1
    if zeroed < 2:
        raise ValueError(
            f"new_top_blocks: cannot find the attention and MLP output projections of {type(block).__name__} "
            f"(modules named one of {OUTPUT_PROJECTIONS}); supported: GPT-2, Llama-style, GPT-NeoX, GPT-J"
        )
    for module in new.modules():
        if hasattr(module, "layer_idx"):
            module.layer_idx = layer_idx
    return new


class BodyView(nn.Module):
    """The pretrained body of ``base_model``: the same child modules under the same names, with the top
    ``new`` blocks left out of its block list. It holds the body's weights for the state dict and the
    freezing contract; the forward pass is the whole model's (``base_model`` runs every block)."""

    def __init__(self, base_model: nn.Module, new: int) -> None:
        super().__init__()
        blocks_name, blocks = blocks_of(base_model)
        body = nn.ModuleList(list(blocks)[: len(blocks) - new])
        for name, child in base_model.named_children():
            self.add_module(name, body if name == blocks_name else child)
        object.__setattr__(self, "base_model", base_model)  # not registered: its weights are ours already

    def train(self, mode: bool = True) -> BodyView:
        super().train(mode)
        self.base_model.training = mode  # the body's own flag (its children are set above)
        return self


class TopHead(nn.Module):
    """The trainable top of an add-layers model: the new ``blocks`` and the untied ``lm_head``."""

    def __init__(self, blocks: list[nn.Module], lm_head: nn.Module) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.lm_head = lm_head


def add_top_blocks(model: nn.Module, count: int) -> tuple[BodyView, TopHead]:
    """Append ``count`` identity-initialised blocks to ``model`` (a transformers causal LM, changed in
    place: its config counts them) and return ``(body, head)``: the pretrained body without them, and the
    new blocks with the output projection, which is untied from the input embeddings (a copy of them).

    Example::

        >>> import torch
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=8, n_head=2, vocab_size=20)).eval()
        >>> ids = torch.arange(6)[None]
        >>> before = model(ids).logits
        >>> body, head = add_top_blocks(model, 1)
        >>> model.config.n_layer, len(body.h), len(head.blocks), torch.allclose(model(ids).logits, before)
        (3, 2, 1, True)
    """
    from lightning_recipes.modules._hf import untie_output_embeddings

    if count < 1:
        raise ValueError(f"new_top_blocks must be >= 0 (0: no new layers), got {count}")
    base = model.base_model
    _, blocks = blocks_of(base)
    top = blocks[len(blocks) - 1]
    new = [identity_copy(top, len(blocks) + i) for i in range(count)]
    for block in new:
        blocks.append(block)
    model.config.num_hidden_layers = len(blocks)
    untie_output_embeddings(model)
    return BodyView(base, count), TopHead(new, model.get_output_embeddings())
