"""CausalLM: any ``transformers`` causal language model, fine-tuned, trained from scratch or used as-is."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric
from typing_extensions import override

from lightning_recipes._hub import hub_call, looks_like_local_path
from lightning_recipes.handshake import DataSpec, InputSpec, agree_tokenizer
from lightning_recipes.modules._base import TransferModule
from lightning_recipes.modules._distillation import keep_every_other_block
from lightning_recipes.modules._generation import Generation
from lightning_recipes.modules._hf import (
    HFParts,
    build_config,
    enable_gradient_checkpointing,
    example_length,
    find_tokenizer,
    load_pretrained_causal_lm,
    pretrained_base,
    resolve_model_name,
    transformer_layer_groups,
    untie_output_embeddings,
)
from lightning_recipes.modules._top_blocks import add_top_blocks
from lightning_recipes.tokenizer import restore_tokenizer, store_tokenizer


class CausalLM(Generation, HFParts, TransferModule):
    """A causal (decoder-only) language model from ``transformers``: GPT-2, Pythia, Llama, ...

    Four transfer scenarios, picked by the arguments:

    * **fine-tune**: ``model_name_or_path`` (Hub id, local folder or zoo name such as
      ``gpt2-mini.shakespeare``, once built: ``lightning-recipes zoo build NAME``); ``config``
      entries, if any, override the pretrained config (e.g. ``{resid_pdrop: 0.0}``;
      ``{tie_word_embeddings: false}`` gives ``lm_head`` its own copy of the pretrained embeddings);
    * **from scratch**: ``config`` only, the arguments of the model's config class (``model_type``
      defaults to ``gpt2``: ``{n_layer: 6, n_embd: 384, n_head: 6, vocab_size: 8192}``); or
      ``model_name_or_path`` with ``pretrained=False``: that model's architecture (its ``config.json``,
      ``config`` entries overriding it) with random weights;
    * **add-layers**: ``new_top_blocks`` new transformer blocks on top of the pretrained body and an
      untied ``lm_head`` (see below); with :class:`~lightning_recipes.callbacks.FreezeUnfreeze` the body
      stays frozen while they train, then is unfrozen at a lower LR;
    * **as-is**: a pretrained model evaluated (``validate``/``test``: loss and perplexity) or used
      for :meth:`generate` / ``predict`` (continuations of a file of prompts) without training.

    ``self.model`` is the ``AutoModelForCausalLM``; ``self.backbone`` is its transformer body
    (``model.base_model``, e.g. GPT-2's ``transformer``) and ``self.head`` its output projection
    (``lm_head``); both are registered, the whole model is not (each weight is stored once). Models
    that tie ``lm_head`` to the input embeddings (GPT-2 does) have one matrix for both:
    :meth:`param_groups` lists it once, in the **backbone** group (where the embedding lives), so
    freezing the backbone freezes the output projection too, and the head group is empty (and dropped)
    unless the head has weights of its own. :meth:`layer_groups` lists the backbone from the embeddings
    to the last block (with the final norm), for gradual unfreezing and ``layer_decay``.

    With ``new_top_blocks=k`` (see :mod:`~lightning_recipes.modules._top_blocks`), ``k`` copies of the
    top block, initialised as the identity, run after the body; ``self.head`` holds them and an untied
    ``lm_head``; ``self.backbone`` is the body without them, so freezing it leaves the new layers trainable.

    Batches are ``{"input_ids": LongTensor[batch, seq]}`` (optionally ``attention_mask`` and ``labels``,
    ``-100`` where ignored), as :class:`~lightning_recipes.TextCorpusDataModule` makes them. Logged:
    ``train/loss`` (mean token loss of the step), ``val/loss`` and ``val/ppl`` (``exp`` of the mean loss over
    every predicted token of the epoch and devices, not a mean of per-batch perplexities), ``test/*`` alike.

    The tokenizer comes from ``tokenizer``, else from the pretrained folder/id; a model from scratch (no
    tokenizer unless ``tokenizer`` is given) takes the data module's (e.g. a BPE tokenizer it trained)
    through the handshake (:func:`~lightning_recipes.connect`), which also checks the data's block size
    against the context length. Checkpoints store the model config and the tokenizer files, so
    ``CausalLM.load_from_checkpoint(path)`` rebuilds offline, without the Hub.

    Args:
        model_name_or_path: Hugging Face Hub id, local folder or zoo name of a causal LM; ``None`` (with
            ``config``) builds the model from scratch.
        pretrained: load the pretrained weights; ``False`` builds the architecture of
            ``model_name_or_path`` with random weights (from scratch), as ``TextClassifier``'s ``pretrained``.
        config: config arguments: the whole config from scratch, or overrides of the one of
            ``model_name_or_path``.
        tokenizer: Hub id or folder of the tokenizer (default: that of the pretrained model).
        revision: branch, tag or commit of the Hub id (model and tokenizer).
        gradient_checkpointing: recompute activations in the backward pass (less memory, ~30 % slower).
        every_other_block: keep the pretrained blocks 0, 2, 4, ...: a half-depth student (docs/distill.md).
        lr: learning rate (a fine-tuning default for pretrained LMs).
        generation: :meth:`generate` options of the ``predict`` stage (``max_new_tokens``, default 50;
            ``do_sample``, ``temperature``, ``top_k``, ``top_p``, ``seed``, ``num_return_sequences``...);
            greedy by default.
        new_top_blocks: add-layers: this many new blocks on top of the body, with an untied ``lm_head``.
        **kwargs: ``backbone_lr``, ``layer_decay``, ``optimizer``, ``lr_scheduler``... (see
            :class:`~lightning_recipes.TransferModule`).

    Example::

        >>> import torch
        >>> lm = CausalLM(config={"n_layer": 2, "n_embd": 32, "n_head": 2, "vocab_size": 64})
        >>> lm(torch.zeros(1, 5, dtype=torch.long)).shape
        torch.Size([1, 5, 64])
        >>> [g["name"] for g in lm.param_groups()], len(lm.layer_groups())  # tied lm_head: one group
        (['backbone'], 3)
    """

    def __init__(
        self,
        model_name_or_path: str | None = None,
        pretrained: bool = True,
        config: dict[str, Any] | None = None,
        tokenizer: str | None = None,
        revision: str | None = None,
        gradient_checkpointing: bool = False,
        every_other_block: bool = False,
        lr: float = 5e-5,
        generation: dict[str, Any] | None = None,
        new_top_blocks: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(lr=lr, **kwargs)
        self.save_hyperparameters()
        if model_name_or_path is None and config is None:
            raise ValueError(
                "CausalLM needs model_name_or_path (a Hub id such as 'gpt2' or a local folder) "
                "or config (e.g. {'n_layer': 6, 'n_embd': 384, 'n_head': 6, 'vocab_size': 8192}) "
                "to train from scratch"
            )
        from transformers import AutoModelForCausalLM

        #: random weights: no ``model_name_or_path`` (built from ``config``), or ``pretrained=False``
        self.from_scratch = model_name_or_path is None or not pretrained
        source = resolve_model_name(model_name_or_path)  # a zoo name: the folder it was built to
        if model_name_or_path is None:
            model = AutoModelForCausalLM.from_config(build_config(config, default_type="gpt2"))
        elif self.from_scratch:  # the architecture of model_name_or_path, config entries overriding it
            model = AutoModelForCausalLM.from_config(_architecture(source, revision, config or {}))
        else:
            overrides = dict(config or {})
            untie = overrides.get("tie_word_embeddings") is False
            if untie:  # load tied, then copy: from_pretrained would initialise an untied lm_head at random
                del overrides["tie_word_embeddings"]
            model = load_pretrained_causal_lm(source, revision, **overrides)
            model.train()  # from_pretrained returns eval mode, and Lightning keeps modules modes
            if untie:
                untie_output_embeddings(model)
        if every_other_block:
            keep_every_other_block(model)
        if new_top_blocks:  # add_top_blocks checks the count
            self.set_parts(model, *add_top_blocks(model, new_top_blocks))
        else:
            self.set_parts(model, model.base_model, model.get_output_embeddings())
        if gradient_checkpointing:
            enable_gradient_checkpointing(self.model)
        self.tokenizer: Any = None
        found = (
            None
            if self.from_scratch and tokenizer is None
            else find_tokenizer(source or tokenizer, tokenizer, revision)
        )
        if found is not None:
            self.set_tokenizer(found)
        if new_top_blocks and self.adapter is not None:
            raise ValueError(
                f"new_top_blocks={new_top_blocks} (add-layers) and adapter (parameter-efficient fine-tuning) "
                "do not combine: peft would freeze the new blocks. Use one: adapter alone, or new_top_blocks "
                "alone (with FreezeUnfreeze)"
            )
        base = None if self.from_scratch else pretrained_base(model_name_or_path, revision)
        self.setup_adapter(self.model, base)
        # a NaN batch makes the epoch's NLL NaN (NonFiniteGuard stops the run), not dropped: NaN imputed
        self.val_nll = MeanMetric(nan_strategy=float("nan"))
        self.test_nll = MeanMetric(nan_strategy=float("nan"))
        self.generation = dict(generation or {})

    # -- the freezing contract -------------------------------------------------------------------
    @override
    def head_parameters(self) -> list[nn.Parameter]:
        """Every parameter of ``self.model`` outside the backbone: a tied ``lm_head`` belongs to the backbone,
        and parameters outside both (rare) join the head group, so none is left untrained."""
        seen = {id(p) for p in self.backbone.parameters()}
        return [p for p in self.model.parameters() if id(p) not in seen]

    @override
    def configure_optimizers(self) -> Any:
        if not self.param_groups():
            tied = any(p is q for p in self.head.parameters() for q in self.backbone.parameters())
            raise ValueError(
                "CausalLM has no trainable parameter: the backbone is frozen"
                + (
                    " and lm_head is tied to its input embeddings (tie_word_embeddings=True), so the head "
                    "is frozen with it. Unfreeze part of the backbone, or untie the head "
                    "(config: {tie_word_embeddings: false}) to train it alone"
                    if tied
                    else " and the head too"
                )
            )
        return super().configure_optimizers()

    def layer_groups(self) -> list[nn.Module]:
        """The backbone bottom to top: ``[embeddings, block 0, ..., last block + final norm]``."""
        return transformer_layer_groups(self.backbone)

    # -- tokenizer -------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.model.get_input_embeddings().num_embeddings

    @property
    def example_input_array(self) -> dict[str, Tensor] | None:
        """One sequence of :data:`~lightning_recipes.modules._hf.EXAMPLE_TOKENS` tokens, which Lightning's
        model summary runs for the FLOPs and the layers' shapes, with its attention mask: token 0 is often the
        padding token too, and transformers warns about padded input without a mask."""
        ids = torch.zeros(1, example_length(self.model.config), dtype=torch.long)
        return self.summary_example({"input_ids": ids, "attention_mask": torch.ones_like(ids)})

    @property
    def context_length(self) -> int | None:
        """Longest sequence the model takes (``max_position_embeddings``/``n_positions``), if it has one."""
        config = self.model.config
        return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)

    def set_tokenizer(self, tokenizer: Any) -> None:
        """Use ``tokenizer`` (it must fit the embeddings); a model from scratch takes its special tokens."""
        if len(tokenizer) > self.vocab_size:
            raise ValueError(
                f"The tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {self.vocab_size}: "
                f"set config.vocab_size >= {len(tokenizer)} (model.init_args.config.vocab_size in a recipe)"
            )
        self.tokenizer = tokenizer
        if self.from_scratch:
            eos = tokenizer.eos_token_id
            bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
            for cfg in (self.model.config, self.model.generation_config):
                cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = bos, eos, pad

    def _require_tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise ValueError(
                "This CausalLM has no tokenizer: pass tokenizer=<Hub id or folder>, call set_tokenizer(), "
                "or connect it to a TextCorpusDataModule that has one (lightning_recipes.connect)"
            )
        return self.tokenizer

    # -- the handshake ---------------------------------------------------------------------------
    @override
    def input_spec(self) -> InputSpec:
        """The model's tokenizer (``None`` for a model from scratch without one)."""
        return InputSpec(tokenizer=self.tokenizer)

    @override
    def accept_data_spec(self, spec: DataSpec) -> None:
        """Adopt the data's tokenizer when the model has none; check the block size against the context."""
        tokenizer = agree_tokenizer(self.tokenizer, spec.tokenizer, "data.init_args.tokenizer/bpe_vocab_size")
        if tokenizer is not None and tokenizer is not self.tokenizer:
            self.set_tokenizer(tokenizer)
        block, context = spec.block_size, self.context_length
        if block is not None and context is not None and block > context:
            raise ValueError(
                f"block_size={block} of the data exceeds the model's context length {context}: lower "
                "data.init_args.block_size (or raise n_positions when training from scratch)"
            )

    # -- steps -----------------------------------------------------------------------------------
    @override
    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Next-token logits, ``(batch, seq, vocab)``.

        No key/value cache: the whole sequence is scored at once, and a cache filled again when an
        activation-checkpointed block recomputes its forward would change its shapes.
        """
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    def token_nll(self, batch: dict[str, Tensor] | Tensor) -> tuple[Tensor, Tensor]:
        """``(sum of next-token losses, number of predicted tokens)`` of a batch.

        Position ``t`` predicts token ``t + 1``; labels of ``-100`` (and padding, where ``labels`` are
        not given) are ignored, so sums and counts add up exactly across batches.
        """
        return self._token_nll_and_logits(batch)[:2]

    def _token_nll_and_logits(self, batch: dict[str, Tensor] | Tensor) -> tuple[Tensor, ...]:
        """:meth:`token_nll`, the logits and which positions predict a token (``[batch, seq]``)."""
        if isinstance(batch, Tensor):
            batch = {"input_ids": batch}
        input_ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        labels = batch.get("labels")
        if labels is None:
            labels = input_ids if mask is None else input_ids.masked_fill(mask == 0, -100)
        # Corpus blocks are never padded: say so (all ones), or transformers warns when a block starts or
        # ends with the EOS token that GPT-2 also uses for padding.
        logits = self(input_ids, torch.ones_like(input_ids) if mask is None else mask)
        targets = labels[:, 1:]
        total = F.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="sum"
        )
        predicted = F.pad(targets != -100, (0, 1))  # the last position predicts nothing
        return total, predicted.sum(), logits, predicted

    @override
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        total, count, logits, predicted = self._token_nll_and_logits(batch)
        loss = self.training_loss(total / count.clamp(min=1), logits, predicted)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def _eval_step(self, batch: dict[str, Tensor], metric: MeanMetric) -> Tensor:
        total, count = self.token_nll(batch)
        loss = total / count.clamp(min=1)
        metric.update(loss, weight=count)  # weighted mean = total loss / total tokens
        return loss

    def _log_eval(self, stage: str, metric: MeanMetric) -> None:
        if metric.update_called:
            mean = metric.compute()  # synced across devices
            self.log(f"{stage}/loss", mean, prog_bar=True, sync_dist=True)
            self.log(f"{stage}/ppl", mean.exp(), prog_bar=True, sync_dist=True)
        with torch.inference_mode(False):  # fresh states made in inference mode could not be updated in fit
            metric.reset()

    @override
    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._eval_step(batch, self.val_nll)

    @override
    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._eval_step(batch, self.test_nll)

    @override
    def on_validation_epoch_end(self) -> None:
        self._log_eval("val", self.val_nll)

    @override
    def on_test_epoch_end(self) -> None:
        self._log_eval("test", self.test_nll)

    # -- generation and export -------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path, merge: bool = False) -> Path:
        """Export model and tokenizer in Hugging Face format; ``CausalLM(folder)`` or
        ``AutoModelForCausalLM.from_pretrained(folder)`` load it back.

        With an adapter, ``merge=True`` merges it into the weights and writes the same plain folder;
        ``merge=False`` writes a peft adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``)
        that ``peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), folder)`` loads.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.peft_model is not None and not merge:
            from lightning_recipes.modules._adapters import save_adapter

            save_adapter(self, folder, None)
        elif self.peft_model is not None:
            from lightning_recipes.modules._adapters import merged_copies

            merged_copies(self.peft_model)[0].save_pretrained(folder)
        else:
            self.model.save_pretrained(folder)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(folder))
        return folder

    # -- checkpoints -----------------------------------------------------------------------------
    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Rebuild from the stored config (the state dict holds every weight) and the stored tokenizer
        # files: no Hub download, no path that may be gone, when the checkpoint is loaded. A trainable-only
        # checkpoint rebuilds from the pretrained source instead (TransferModule.on_save_checkpoint).
        super().on_save_checkpoint(checkpoint)
        hparams = checkpoint.get("hyper_parameters")
        if hparams is not None and not self.stores_trainable_only():
            config = copy.deepcopy(self.model.config)  # the body's: new_top_blocks adds the rest again
            config.num_hidden_layers -= hparams.get("new_top_blocks", 0)
            checkpoint["hyper_parameters"] = {
                **hparams,
                "model_name_or_path": None,
                "config": config.to_diff_dict(),
                "tokenizer": None,
                "revision": None,
            }
        store_tokenizer(checkpoint, self.tokenizer)

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        tokenizer = restore_tokenizer(checkpoint)
        if tokenizer is not None and self.tokenizer is None:
            self.set_tokenizer(tokenizer)


def _architecture(name: str, revision: str | None, overrides: dict[str, Any]) -> Any:
    """The transformers config of model ``name`` (Hub id or folder) with ``overrides`` applied."""
    from transformers import AutoConfig

    path = str(Path(name).expanduser()) if looks_like_local_path(name) else name
    return hub_call(
        name, "transformers", "model config", AutoConfig.from_pretrained, path, revision=revision, **overrides
    )
