"""TransformerFSDP: Lightning's FSDP with the policies a transformer recipe needs, read from the model.

``--trainer.strategy=fsdp`` wraps the whole model in one FSDP unit, which gathers every parameter at
once and saves no memory. :class:`TransformerFSDP` makes each transformer block (BERT ``BertLayer``,
GPT-2 ``GPT2Block``, ...) an FSDP unit of its own, found in the recipe's model when training starts,
and optionally checkpoints their activations. Mixed precision follows ``trainer.precision``
(``bf16-mixed``: parameters, gradients and buffers in bfloat16 inside FSDP, Lightning's
``FSDPPrecision``). Everything else is Lightning's ``FSDPStrategy`` (its arguments pass through).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn
from typing_extensions import override

from lightning_recipes import _compat
from lightning_recipes.modules._adapters import BASE_KEY, check_frozen
from lightning_recipes.modules._hf import transformer_blocks


def transformer_block_classes(pl_module: nn.Module) -> set[type[nn.Module]]:
    """The classes of the transformer blocks of ``pl_module``'s ``backbone`` (else of ``pl_module``).

    The blocks are the longest ``nn.ModuleList`` (BERT ``encoder.layer``, DistilBERT
    ``transformer.layer``, GPT-2 ``h``); see :func:`~lightning_recipes.modules._hf.transformer_blocks`.

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


def _has_frozen(module: nn.Module) -> bool:
    return any(not p.requires_grad for p in module.parameters())


def _tied_frozen(module: nn.Module) -> str | None:
    """The first name of a frozen parameter that ``module`` holds under two names, else ``None``."""
    seen: dict[int, str] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        if not p.requires_grad and seen.setdefault(id(p), name) != name:
            return seen[id(p)]
    return None


def _full_state_dict(model: nn.Module, offload_to_cpu: bool, rank0_only: bool) -> Any:
    """torch's FSDP context in which ``model``'s and its optimizers' state dicts are full (unsharded)."""
    from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    return FSDP.state_dict_type(
        model,
        StateDictType.FULL_STATE_DICT,
        FullStateDictConfig(offload_to_cpu=offload_to_cpu, rank0_only=rank0_only),
        FullOptimStateDictConfig(offload_to_cpu=offload_to_cpu, rank0_only=rank0_only),
    )


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

    Runs on CUDA GPUs (NCCL) and on CPU processes (gloo; ``accelerator: cpu``, where it is tested).
    :class:`~lightning_recipes.callbacks.FreezeUnfreeze` and
    :class:`~lightning_recipes.callbacks.LRFinder` refuse it, each saying what to do instead. Adapters
    (``adapter=``) are wrapped like the full model: each block holds its frozen pretrained weights and
    its trainable adapter weights in one unit, which FSDP allows with Lightning's default
    ``use_orig_params=True`` (``False`` is refused here); their trainable-only checkpoints load under
    it (:meth:`load_checkpoint`). Refused, each with what to use: mixed precision with frozen weights
    on CPU processes (no autocast there), and frozen tied weights (a GPT-2 adapter) in float32.

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
        self._sharded_checkpoints = kwargs.get("state_dict_type") == "sharded"
        self.activation_checkpointing = activation_checkpointing
        self._own_wrap_policy = "auto_wrap_policy" in self.kwargs
        self._root: nn.Module | None = None

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
    def _setup_model(self, model: nn.Module) -> nn.Module:
        """Lightning's wrapping, once per model, with ``device_id=cpu`` on CPU processes (gloo).

        Lightning wraps the LightningModule again in each stage; a model already holding FSDP units
        then gets no root unit, and the weights outside the blocks (embeddings) stay the rank's shard
        (garbage in ``lightning run``'s test stage after fit). The model's first wrapper is kept.

        Lightning passes FSDP the device's index, ``None`` on CPU, which torch's FSDP reads as "the
        accelerator" and refuses ("FSDP needs a non-CPU accelerator device"). Wrapped here first, the
        model is found wrapped by Lightning's ``_setup_model``, which does the rest (metrics,
        activation checkpointing). Overrides a private method: ``_compat.FSDP_STRATEGY_OVERRIDES``.
        """
        from torch.distributed.fsdp import FullyShardedDataParallel

        if self._root is not None and self._root.module is model:
            return self._root  # a later stage (fit, then test): the root unit still holds the embeddings
        policy = None
        wrapped = any(isinstance(m, FullyShardedDataParallel) for m in model.modules())
        if self.root_device.type == "cpu" and not wrapped:
            model = FullyShardedDataParallel(
                module=model,
                cpu_offload=self.cpu_offload,
                mixed_precision=self.mixed_precision_config,
                sharding_strategy=self.sharding_strategy,
                device_id=self.root_device,
                **self.kwargs,
            )
            policy = self.kwargs.pop("auto_wrap_policy", None)  # applied: Lightning warns of one it finds
        try:
            self._root = super()._setup_model(model)
        finally:
            if policy is not None:
                self.kwargs["auto_wrap_policy"] = policy
        return self._root

    @override
    def setup(self, trainer: pl.Trainer) -> None:
        module = self.lightning_module
        assert module is not None
        stores_trainable_only = getattr(module, "stores_trainable_only", lambda: False)()
        if self._sharded_checkpoints and stores_trainable_only:
            raise ValueError(
                f"TransformerFSDP(state_dict_type='sharded') with {type(module).__name__}"
                "(checkpoint_weights='trainable'): a trainable-only checkpoint is one file that names its "
                "base, not a sharded folder. Keep state_dict_type='full' (the default; the adapter's "
                "checkpoint is small anyway), or set --model.init_args.checkpoint_weights=all"
            )
        if self.root_device.type == "cpu" and "mixed" in str(trainer.precision) and _has_frozen(module):
            raise ValueError(
                f"TransformerFSDP on CPU processes with trainer.precision={trainer.precision!r} and frozen "
                "weights (an adapter, a frozen backbone): Lightning's FSDP precision autocasts on CUDA only, "
                "and without autocast peft's adapter layers meet bfloat16 and float32 tensors. Use "
                "--trainer.precision=32-true on CPU (mixed precision is for GPUs)"
            )
        tied = _tied_frozen(module)
        if tied and "mixed" not in str(trainer.precision):
            raise ValueError(
                f"TransformerFSDP with trainer.precision={trainer.precision!r} and frozen tied weights "
                f"({tied}, e.g. GPT-2's embeddings and LM head under an adapter): torch's FSDP fails on "
                "them in float32. "
                "Use --trainer.precision=bf16-mixed on GPUs, or --trainer.strategy=ddp"
            )
        self.configure_policies(module)
        super().setup(trainer)

    @override
    def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
        """Lightning's, and on CPU processes the same full state without torch's "offload to CPU".

        torch's FSDP offloads each gathered optimizer state with ``.cpu()`` instead of a copy; on a CPU
        process that is the gather buffer itself, reused for the next state, so Adam's ``exp_avg``
        and ``exp_avg_sq`` would be saved as one tensor and a resumed run would diverge.
        """
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp import OptimStateKeyType

        if self.root_device.type != "cpu" or self._sharded_checkpoints:
            return super().optimizer_state(optimizer)
        optimizer = getattr(optimizer, "_optimizer", optimizer)  # a LightningOptimizer's
        with _full_state_dict(self.model, offload_to_cpu=False, rank0_only=True):  # copies each state
            state = FSDP.optim_state_dict(self.model, optimizer)
        if self.global_rank == 0:  # Lightning's format: keyed by parameter index
            state = FSDP.rekey_optim_state_dict(state, OptimStateKeyType.PARAM_ID, self.model)
        return state

    @override
    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """Lightning's loading, and a trainable-only checkpoint (an adapter's, a frozen backbone's).

        FSDP loads a full state dict only, and a trainable-only checkpoint leaves out the frozen
        weights, which the model rebuilt from its base has. They are gathered from the model (on
        each rank's CPU, as Lightning's loading of a full checkpoint holds it), checked against the
        checkpoint's fingerprint, and loaded with the trained weights; then the optimizer state.
        """
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp import OptimStateKeyType

        path = Path(self.broadcast(str(checkpoint_path)))
        # memory-mapped: a full checkpoint is only peeked at here, then read by Lightning's loading
        checkpoint = (
            torch.load(path, map_location="cpu", mmap=True, weights_only=False) if path.is_file() else {}
        )
        if BASE_KEY not in checkpoint:
            return super().load_checkpoint(checkpoint_path, weights_only)
        module, trained = self.lightning_module, checkpoint.pop("state_dict")
        with _full_state_dict(self.model, offload_to_cpu=True, rank0_only=False):
            own = self.model.state_dict()
            frozen = check_frozen(own, checkpoint, trained)  # the same on every rank: all raise alike
            self.model.load_state_dict(
                {**trained, **{k: own[k] for k in frozen}}, strict=module.strict_loading
            )
            states = checkpoint.get("optimizer_states")
            if states is None or module.trainer.state.fn != "fit":
                return checkpoint
            if len(states) != len(self.optimizers):
                raise RuntimeError(
                    f"The checkpoint holds the state of {len(states)} optimizer(s), the model configures "
                    f"{len(self.optimizers)}: resume with the configuration it was trained with"
                )
            for optimizer, state in zip(self.optimizers, states, strict=True):
                if state["state"] and isinstance(next(iter(state["state"])), int):  # saved without FSDP
                    state = FSDP.rekey_optim_state_dict(state, OptimStateKeyType.PARAM_NAME, self.model)
                optimizer.load_state_dict(FSDP.optim_state_dict_to_load(self.model, optimizer, state))
        return checkpoint
