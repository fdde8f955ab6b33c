"""TransformerFSDP: Lightning's FSDP with the policies a transformer recipe needs, read from the model.

``--trainer.strategy=fsdp`` wraps the whole model in one FSDP unit, which gathers every parameter at
once and saves no memory. :class:`TransformerFSDP` makes each transformer block (BERT ``BertLayer``,
GPT-2 ``GPT2Block``, ...) an FSDP unit of its own, found in the recipe's model when training starts,
and optionally checkpoints their activations. Mixed precision follows ``trainer.precision``
(``bf16-mixed``: parameters, gradients and buffers in bfloat16 inside FSDP, Lightning's
``FSDPPrecision``). Everything else is Lightning's ``FSDPStrategy`` (its arguments pass through).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn
from typing_extensions import override

from lightning_recipes import _compat
from lightning_recipes.modules._layers import transformer_blocks


def transformer_block_classes(pl_module: nn.Module) -> set[type[nn.Module]]:
    """The classes of the transformer blocks of ``pl_module``'s ``backbone`` (else of ``pl_module``).

    The blocks are the longest ``nn.ModuleList`` (BERT ``encoder.layer``, DistilBERT
    ``transformer.layer``, GPT-2 ``h``); see :func:`~lightning_recipes.modules._layers.transformer_blocks`.

    Example::

        >>> from transformers import GPT2Config, GPT2Model
        >>> model = nn.Module()
        >>> model.backbone = GPT2Model(GPT2Config(n_layer=2, n_embd=8, n_head=2, vocab_size=16))
        >>> sorted(c.__name__ for c in transformer_block_classes(model))
        ['GPT2Block']
    """
    body = getattr(pl_module, "backbone", None)
    found = transformer_blocks(body if isinstance(body, nn.Module) else pl_module)
    if found is None or len(found[1]) < 2:
        raise ValueError(
            f"TransformerFSDP shards transformer blocks, and {type(pl_module).__name__} has none (no "
            "nn.ModuleList of blocks in its backbone): use --trainer.strategy=ddp, or Lightning's "
            "FSDPStrategy with an auto_wrap_policy of your own"
        )
    return {type(block) for block in found[1]}


class TransformerFSDP(FSDPStrategy):
    """Lightning's ``FSDPStrategy`` with one FSDP unit per transformer block of the model, found at setup.

    Use it for ``TextClassifier`` and ``CausalLM`` recipes whose model (with optimizer state) outgrows
    one GPU. In a recipe::

        trainer:
          accelerator: gpu
          devices: 4
          precision: bf16-mixed          # FSDP mixed precision: bf16 params, grads and buffers
          strategy:
            class_path: lightning_recipes.strategies.TransformerFSDP
            init_args: {activation_checkpointing: true, sharding_strategy: FULL_SHARD}

    Needs CUDA GPUs: torch's FSDP refuses CPU devices ("FSDP needs a non-CPU accelerator device"),
    so on CPU it stops at once and says to use ``--trainer.strategy=ddp``.
    :class:`~lightning_recipes.callbacks.FreezeUnfreeze` and
    :class:`~lightning_recipes.callbacks.LRFinder` refuse it, each saying what to do instead. Adapters
    (``adapter=``) are wrapped like the full model: each block holds its frozen pretrained weights and
    its trainable adapter weights in one unit, which FSDP allows with Lightning's default
    ``use_orig_params=True`` (``False`` is refused here).

    Args:
        activation_checkpointing: recompute each block's activations in the backward pass (less
            memory, about a third more compute); use it instead of the module's own
            ``gradient_checkpointing``, not with it.
        **kwargs: Lightning's ``FSDPStrategy`` arguments (``sharding_strategy``, ``cpu_offload``,
            ``state_dict_type``, ``limit_all_gathers``...). An ``auto_wrap_policy`` given here is
            used instead of the block policy.

    Example::

        >>> from transformers import GPT2Config, GPT2Model
        >>> model = nn.Module()
        >>> model.backbone = GPT2Model(GPT2Config(n_layer=2, n_embd=8, n_head=2, vocab_size=16))
        >>> strategy = TransformerFSDP(activation_checkpointing=True)
        >>> sorted(c.__name__ for c in strategy.configure_policies(model))
        ['GPT2Block']
        >>> type(strategy.kwargs["auto_wrap_policy"]).__name__
        'ModuleWrapPolicy'
    """

    def __init__(self, activation_checkpointing: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.activation_checkpointing = activation_checkpointing
        self._own_wrap_policy = "auto_wrap_policy" in self.kwargs

    def configure_policies(self, pl_module: nn.Module) -> set[type[nn.Module]]:
        """Wrap (and checkpoint, if asked) each transformer block of ``pl_module``; return their classes."""
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        classes = transformer_block_classes(pl_module)
        frozen = [name for name, p in pl_module.named_parameters() if not p.requires_grad]
        if frozen and self.kwargs.get("use_orig_params") is False:
            raise ValueError(
                f"TransformerFSDP(use_orig_params=False) with frozen parameters ({len(frozen)}, e.g. "
                f"{frozen[0]}): an adapter's or a frozen layer's FSDP unit would mix trainable and frozen "
                "weights in one flat parameter, which FSDP refuses. Remove use_orig_params=False "
                "(Lightning's default is True)"
            )
        if not self._own_wrap_policy:
            self.kwargs["auto_wrap_policy"] = ModuleWrapPolicy(classes)
        if self.activation_checkpointing:
            _compat.set_fsdp_activation_checkpointing(self, classes)
        return classes

    @override
    def setup_environment(self) -> None:
        if self.root_device.type != "cuda":
            raise RuntimeError(
                f"TransformerFSDP needs CUDA GPUs, got device {self.root_device}: torch's FSDP refuses CPU "
                'devices ("FSDP needs a non-CPU accelerator device"). Use --trainer.strategy=ddp on CPU'
            )
        super().setup_environment()

    @override
    def setup(self, trainer: pl.Trainer) -> None:
        assert self.lightning_module is not None
        self.configure_policies(self.lightning_module)
        super().setup(trainer)
