"""TextClassifier: any Hugging Face encoder (BERT, DistilBERT, ...) with a new head or its own head."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import torch
from torch import Tensor, nn
from typing_extensions import override

from lightning_recipes._hub import hub_call
from lightning_recipes.handshake import DataSpec, InputSpec, agree_tokenizer
from lightning_recipes.modules._classification import ClassificationModule
from lightning_recipes.modules._distillation import keep_every_other_block
from lightning_recipes.modules._heads import ClassificationHead, check_head_options
from lightning_recipes.modules._hf import (
    HFParts,
    build_config,
    enable_gradient_checkpointing,
    example_length,
    export_new_head,
    find_tokenizer,
    label_config,
    pretrained_base,
    resolve_model_name,
    transformer_layer_groups,
)
from lightning_recipes.tokenizer import restore_tokenizer, store_tokenizer

# jsonargparse checks a class_path against the callable's return type: ``Any`` rejects every class.
Pooling = Literal["cls", "mean"]
HeadKind = Literal["new", "pretrained"]
_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


def mean_pool(hidden: Tensor, attention_mask: Tensor | None) -> Tensor:
    """Average of the token vectors, ignoring padding.

    Example::

        >>> h = torch.tensor([[[1.0], [3.0], [100.0]]])
        >>> mean_pool(h, torch.tensor([[1, 1, 0]]))
        tensor([[2.]])
    """
    if attention_mask is None:
        return hidden.mean(1)
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class TextClassifier(HFParts, ClassificationModule):
    """Fine-tune a Hugging Face encoder for sequence classification or regression.

    With ``head="new"``, ``self.backbone`` is the ``AutoModel`` encoder (its pooler, if any, is
    dropped) and ``self.head`` a :class:`~lightning_recipes.modules._heads.ClassificationHead` on
    the ``[CLS]`` vector or the mean of the token vectors. With ``head="pretrained"``, the model's own
    head is used: ``self.backbone`` is the base model inside ``AutoModelForSequenceClassification``
    (``self.model``) and ``self.head`` holds the rest (``classifier``, ``pre_classifier``, ...). Without
    ``num_classes``, that head is used as-is: the weights must have a trained one (a fine-tuned
    classifier such as ``distilbert-base-uncased-finetuned-sst-2-english``, or the zoo's
    ``minilm-l6.sst2``), its ``id2label`` names are the labels predictions speak, and ``class_map``
    scores a labelled data set with them (see ``ClassificationModule``). With ``num_classes``, the
    architecture's head is trained (new weights unless the pretrained ones have that many labels).

    :meth:`layer_groups` returns the encoder's blocks bottom to top (embeddings, then each layer),
    for gradual unfreezing and ``layer_decay`` (one optimizer group per block, see ``TransferModule``).
    Batches are the dicts of :class:`~lightning_recipes.TextDataModule` (``input_ids``,
    ``attention_mask``, ..., ``labels``).

    The model brings its tokenizer (``tokenizer``, else the one beside the pretrained weights) and hands
    it to the data module through the handshake (:func:`~lightning_recipes.connect`), which gives back
    the class names and the data's ``max_length``; all three are saved in checkpoints, so
    :meth:`predict_texts` answers in names after ``load_from_checkpoint``, offline.

    From scratch (random weights), as in :class:`~lightning_recipes.CausalLM`: ``config`` and no
    ``model_name_or_path`` (``model_name_or_path: null`` in a recipe), e.g. ``{model_type: bert,
    num_hidden_layers: 4, hidden_size: 256, ...}``. Such a model has no tokenizer; it takes the data
    module's (a WordPiece tokenizer it trained, ``wordpiece_vocab_size``) through the handshake, which
    also checks that the tokenizer fits the ``vocab_size`` of the config.

    Args:
        model_name_or_path: Hub id (``distilbert-base-uncased``), local folder of a transformers model,
            or a built zoo name (``minilm-l6.sst2``: ``lightning-recipes zoo build minilm-l6.sst2``);
            ``None`` (with ``config``) builds the model from scratch.
        pretrained: load the pretrained weights; ``False`` builds the architecture with random weights.
        config: a transformers config as a dict (``config.to_dict()``; ``model_type`` picks the
            architecture), used instead of the model's ``config.json``; checkpoints store it so they
            reload offline.
        revision: Hub revision (branch, tag or commit) of the model and tokenizer.
        tokenizer: tokenizer id or folder when it differs from ``model_name_or_path``.
        head: ``new`` (pooling + ``ClassificationHead``) or ``pretrained`` (the model's own head; as-is
            without ``num_classes``).
        pooling: ``cls`` (first token) or ``mean`` (masked mean of tokens), for ``head="new"``.
        hidden_dim, dropout, activation: the new head (see ``ClassificationHead``).
        gradient_checkpointing: recompute activations in the backward pass to save memory.
        every_other_block: keep the pretrained blocks 0, 2, 4, ...: a half-depth student (docs/distill.md).
        lr: learning rate of the head (a fine-tuning default for pretrained encoders).
        **kwargs: ``num_classes``, ``task``, ``label_names``, ``class_map`` and the loss options (see
            ``ClassificationModule``); ``backbone_lr``, ``layer_decay``, ``optimizer``, ``lr_scheduler``...
            (see ``TransferModule``).

    Example::

        >>> from transformers import BertConfig
        >>> config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        ...                     intermediate_size=32).to_dict()
        >>> model = TextClassifier("tiny-bert", num_classes=3, pretrained=False, config=config,
        ...                        layer_decay=0.5, lr=1e-3, backbone_lr=1e-4)
        >>> model({"input_ids": torch.tensor([[2, 7, 9, 3]])}).shape
        torch.Size([1, 3])
        >>> len(model.layer_groups())
        3
        >>> [(g["name"], g["lr"]) for g in model.param_groups()]  # doctest: +NORMALIZE_WHITESPACE
        [('head', 0.001), ('backbone.0', 2.5e-05), ('backbone.1', 5e-05), ('backbone.2', 0.0001)]
    """

    def __init__(
        self,
        model_name_or_path: str | None = "distilbert-base-uncased",
        pretrained: bool = True,
        config: dict[str, Any] | None = None,
        revision: str | None = None,
        tokenizer: str | None = None,
        head: HeadKind = "new",
        pooling: Pooling = "cls",
        hidden_dim: int | None = None,
        dropout: float = 0.1,
        activation: str = "gelu",
        gradient_checkpointing: bool = False,
        every_other_block: bool = False,
        lr: float = 2e-5,
        **kwargs: Any,
    ) -> None:
        super().__init__(lr=lr, **kwargs)
        num_classes = kwargs.get("num_classes")
        check_head_options("TextClassifier", head, num_classes, kwargs.get("class_map"))
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling={pooling!r} is not one of ('cls', 'mean')")
        if model_name_or_path is None and config is None:
            raise ValueError(
                "TextClassifier needs model_name_or_path (a Hub id such as 'distilbert-base-uncased' or a "
                "local folder) or config (e.g. {'model_type': 'bert', 'num_hidden_layers': 4, "
                "'hidden_size': 256, 'num_attention_heads': 4, 'intermediate_size': 1024, "
                "'vocab_size': 8000}) to train from scratch"
            )
        self.save_hyperparameters()
        self.head_kind = head
        self.pooling = pooling
        self.max_length: int | None = None  # the data's, from the handshake
        #: random weights built from ``config``: no ``model_name_or_path``, or ``pretrained=False``
        self.from_scratch = model_name_or_path is None or not pretrained
        if pretrained or config is None:  # a checkpoint reload needs no built folder
            # a zoo name: the folder it was built to (config, weights, tokenizer); never built here
            model_name_or_path = resolve_model_name(model_name_or_path)

        if config is not None:
            hf_config = build_config(config)
        else:
            from transformers import AutoConfig

            hf_config = hub_call(
                model_name_or_path,
                "transformers",
                "model config",
                AutoConfig.from_pretrained,
                model_name_or_path,
                revision=revision,
            )
        as_is = head == "pretrained" and num_classes is None
        if as_is:  # the model's own head and labels
            self.use_model_outputs([str(hf_config.id2label[i]) for i in range(hf_config.num_labels)])
        if head == "pretrained":
            from transformers import AutoModelForSequenceClassification as auto_cls

            label_config(hf_config, self.output_names or self.label_names, self.task)
        else:
            from transformers import AutoModel as auto_cls
        if not self.from_scratch:
            model, info = hub_call(
                model_name_or_path,
                "transformers",
                "model",
                auto_cls.from_pretrained,
                model_name_or_path,
                config=hf_config,
                revision=revision,
                output_loading_info=True,
            )
            untrained = [k for k in info["missing_keys"] if not k.startswith(f"{model.base_model_prefix}.")]
            if as_is and untrained:
                raise ValueError(
                    f"head='pretrained' without num_classes uses the model's own trained head, but "
                    f"{model_name_or_path!r} has none (its weights lack {sorted(untrained)[:4]}: a base "
                    "model, not a fine-tuned classifier). Give num_classes to train the architecture's head, "
                    "or head='new'."
                )
        else:
            model = auto_cls.from_config(hf_config)
        model.train()  # from_pretrained returns eval mode; Lightning keeps submodule modes as built
        if every_other_block:
            keep_every_other_block(model)
        if head == "pretrained":
            prefix = model.base_model_prefix
            parts = {name: m for name, m in model.named_children() if name != prefix}
            self.set_parts(model, getattr(model, prefix), nn.ModuleDict(parts))
        else:
            if getattr(model, "pooler", None) is not None:
                model.pooler = None  # unused by our pooling; trainable-but-unused weights break DDP
            head_module = ClassificationHead(
                hf_config.hidden_size, self.num_classes, hidden_dim, dropout, activation
            )
            self.set_parts(None, model, head_module)
        if gradient_checkpointing:
            enable_gradient_checkpointing(self.model if self.model is not None else self.backbone)
        accepted = inspect.signature(self.backbone.forward).parameters
        #: The tokenizer outputs the backbone takes (``input_ids``, ``attention_mask``, ...), in its order.
        self.input_names = tuple(n for n in _INPUT_NAMES if n in accepted)
        self.tokenizer: Any = (
            find_tokenizer(model_name_or_path or tokenizer, tokenizer, revision)
            if not self.from_scratch or tokenizer
            else None
        )
        base = None if self.from_scratch else pretrained_base(model_name_or_path, revision)
        self.setup_adapter(self.backbone, base)

    # -- layer groups (their learning rates: ``TransferModule.param_groups``) -----------------------
    def layer_groups(self) -> list[nn.Module]:
        """The backbone's blocks bottom (input side) to top: the embeddings, then each transformer layer."""
        return transformer_layer_groups(self.backbone)

    # -- forward ---------------------------------------------------------------------------------
    @override
    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        """Logits from a dict of tokenizer outputs (``input_ids``, ``attention_mask``, ...)."""
        if self.model is not None:
            return self.model(**{k: inputs[k] for k in self.input_names if k in inputs}).logits
        return self.head(self.pooled(inputs))

    def pooled(self, inputs: Mapping[str, Tensor]) -> Tensor:
        """The encoder's pooled output (``[CLS]`` or mean of the tokens) that the new head takes."""
        if self.model is not None:
            raise ValueError(
                "TextClassifier(head='pretrained') feeds the model's own head with the encoder's hidden "
                "states, not pooled features: use head='new' to cache or read pooled features"
            )
        kwargs = {k: inputs[k] for k in self.input_names if k in inputs}
        hidden = self.backbone(**kwargs).last_hidden_state
        return hidden[:, 0] if self.pooling == "cls" else mean_pool(hidden, kwargs.get("attention_mask"))

    @override
    def logits_and_target(self, batch: Any) -> tuple[Tensor, Tensor]:
        return self(batch), self._labels(batch)

    @override
    def features_and_target(self, batch: Any) -> tuple[Tensor, Tensor]:
        """The pooled encoder output of a batch (``head="new"`` only), and its labels."""
        return self.pooled(batch), self._labels(batch)

    @override
    def feature_settings(self) -> dict[str, Any]:
        return {"pooling": self.pooling, "inputs": list(self.input_names)}

    @staticmethod
    def _labels(batch: Any) -> Tensor:
        if "labels" not in batch:
            raise ValueError(f"Batch has no 'labels' key (keys: {sorted(batch)}); is the split labelled?")
        return batch["labels"]

    # -- the handshake ---------------------------------------------------------------------------
    @override
    @property
    def example_input_array(self) -> tuple[dict[str, Tensor]] | None:
        """One 128-token sequence (id 0) for Lightning's model summary: its FLOPs, the layers' shapes."""
        ids = torch.zeros(1, example_length(self.backbone.config), dtype=torch.long)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": 0 * ids}
        return self.summary_example(({k: v for k, v in inputs.items() if k in self.input_names},))

    def input_spec(self) -> InputSpec:
        """The model's tokenizer, which the data module tokenises with."""
        return InputSpec(tokenizer=self.tokenizer)

    @override
    def accept_data_spec(self, spec: DataSpec) -> None:
        """Check the classes and adopt their names, the data's ``max_length`` and, if the model has none,
        the data's tokenizer, which must fit the model's vocabulary."""
        super().accept_data_spec(spec)
        self.max_length = spec.max_length if spec.max_length is not None else self.max_length
        tokenizer = agree_tokenizer(
            self.tokenizer, spec.tokenizer, "data.init_args.tokenizer/wordpiece_vocab_size"
        )
        vocab_size = self.backbone.get_input_embeddings().num_embeddings
        if tokenizer is not None and len(tokenizer) > vocab_size:
            raise ValueError(
                f"The tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {vocab_size}: set "
                f"config.vocab_size >= {len(tokenizer)} (model.init_args.config.vocab_size in a recipe)"
            )
        self.tokenizer = tokenizer

    # -- prediction (predict_step and decode: ClassificationModule) ------------------------------
    @torch.no_grad()
    def predict_texts(
        self, texts: Sequence[str] | Sequence[tuple[str, str]], batch_size: int = 32
    ) -> list[dict[str, Any]]:
        """Classify raw strings (or ``(text, text_pair)`` tuples) and return one dict per text.

        Each dict is ``{"label": name, "probabilities": {name: p, ...}}`` (see :meth:`decode`).
        """
        if self.tokenizer is None:
            raise ValueError("This TextClassifier has no tokenizer: give tokenizer=<id or folder>")
        if isinstance(texts, str):
            texts = [texts]
        was_training = self.training
        self.eval()
        max_length = self.max_length or min(int(getattr(self.tokenizer, "model_max_length", 512)), 512)
        results: list[dict[str, Any]] = []
        try:
            for start in range(0, len(texts), batch_size):
                chunk = list(texts[start : start + batch_size])
                pairs = [t for t in chunk if not isinstance(t, str)]
                if pairs and len(pairs) != len(chunk):
                    raise ValueError("predict_texts takes all strings or all (text, text_pair) tuples")
                args = ([a for a, _ in chunk], [b for _, b in chunk]) if pairs else (chunk,)
                enc = self.tokenizer(
                    *args, truncation=True, max_length=max_length, padding=True, return_tensors="pt"
                )
                enc = {k: v.to(self.device) for k, v in enc.items()}
                results += self.decode(self.probabilities(self.class_logits(self(enc).float())).cpu())
        finally:
            self.train(was_training)
        return results

    # -- checkpoints and export ----------------------------------------------------------------------
    def hf_config(self) -> Any:
        """The transformers config of the model (of the full classification model with
        ``head="pretrained"``)."""
        model = self.model if self.model is not None else self.backbone
        if self.head_kind == "pretrained":  # with class_map, the head still speaks the pretrained labels
            label_config(model.config, self.output_names or self.label_names, self.task)
        return model.config

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The state dict holds every weight: reloading builds the architecture from the stored config
        # and the tokenizer from the stored files, so `load_from_checkpoint(path)` needs no network.
        super().on_save_checkpoint(checkpoint)
        hparams = checkpoint["hyper_parameters"]
        hparams.update(config=self.hf_config().to_dict(), tokenizer=None)
        if not self.stores_trainable_only():
            hparams["pretrained"] = False
        checkpoint["text_max_length"] = self.max_length
        store_tokenizer(checkpoint, self.tokenizer)

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.tokenizer = restore_tokenizer(checkpoint) or self.tokenizer
        self.max_length = checkpoint.get("text_max_length", self.max_length)

    def save_pretrained(self, folder: str | Path, merge: bool = False) -> Path:
        """Write model and tokenizer so ``AutoModelForSequenceClassification.from_pretrained(folder)``
        (and a ``pipeline("text-classification", model=folder)``) load them, with ``id2label``/``label2id``.

        Works with ``head="pretrained"`` for any architecture, and with a new head that equals the
        architecture's own: ``pooling="cls"``, ``hidden_dim`` = the hidden size and ``activation``
        ``tanh`` (BERT) or ``relu`` (DistilBERT). Other heads raise a ``ValueError``.

        With an adapter: ``merge=True`` merges it into the weights and writes the same plain folder;
        ``merge=False`` writes a peft adapter folder of the encoder (``PeftModel.from_pretrained(
        AutoModel.from_pretrained(base), folder)``), the head as ``head.safetensors`` and the tokenizer.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.peft_model is not None and not merge:
            from lightning_recipes.modules._adapters import save_adapter

            save_adapter(self, folder, self.head)
        elif self.peft_model is not None:
            from lightning_recipes.modules._adapters import merged_copies

            backbone, head, model = merged_copies(self.peft_model, self.head, self.model or nn.Identity())
            if self.model is not None:
                label_config(model.config, self.label_names, self.task)
            else:
                parts = {"hparams": self.hparams, "pooling": self.pooling, "label_names": self.label_names}
                model = export_new_head(
                    SimpleNamespace(backbone=backbone, head=head, task=self.task, **parts)
                )
            model.save_pretrained(folder)
        else:
            if self.model is not None:
                self.hf_config()  # labels into the config
            model = self.model if self.model is not None else export_new_head(self)
            model.save_pretrained(folder)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(folder)
        return folder
