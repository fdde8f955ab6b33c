"""TextClassifier: any Hugging Face encoder (BERT, DistilBERT, ...) with a new head or its own head."""

from __future__ import annotations

import inspect
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from typing_extensions import override

from lightning_recipes._hub import PretrainedLoadError, is_network_error, offline_hint
from lightning_recipes.modules._base import OptimizerFactory, SchedulerFactory
from lightning_recipes.modules._classification import ClassificationModule, Task
from lightning_recipes.modules._heads import ClassificationHead

# jsonargparse checks a class_path against the callable's return type: ``Any`` rejects every class.
Pooling = Literal["cls", "mean"]
HeadKind = Literal["new", "model"]
_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
# The new-head settings that equal an architecture's own sequence-classification head, so that
# ``save_pretrained`` can write weights ``AutoModelForSequenceClassification`` reads:
# model_type -> (activation, {our head layer index: HF parameter prefix}).
_EXPORTABLE_HEADS = {
    "bert": ("tanh", {1: "bert.pooler.dense", 4: "classifier"}),
    "distilbert": ("relu", {1: "pre_classifier", 4: "classifier"}),
}


def _hub_call(name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a ``from_pretrained``; an unreachable Hub id becomes a :class:`PretrainedLoadError`."""
    try:
        return fn(*args, **kwargs)
    except OSError as exc:
        if Path(name).exists() or not is_network_error(exc):
            raise
        raise PretrainedLoadError(
            f"Could not load {name!r} from the Hugging Face Hub: " + offline_hint(name)
        ) from exc


def load_tokenizer(name: str, revision: str | None = None) -> Any:
    """``AutoTokenizer.from_pretrained`` with a clear error for an unreachable Hub id."""
    from transformers import AutoTokenizer

    return _hub_call(name, AutoTokenizer.from_pretrained, name, revision=revision)


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


class TextClassifier(ClassificationModule):
    """Fine-tune a Hugging Face encoder for sequence classification or regression.

    With ``head="new"``, ``self.backbone`` is the ``AutoModel`` encoder (its pooler, if any, is
    dropped) and ``self.head`` a :class:`~lightning_recipes.modules._heads.ClassificationHead` on
    the ``[CLS]`` vector or the mean of the token vectors. With ``head="model"``, the model's own
    head is used: ``self.backbone`` is the base model inside ``AutoModelForSequenceClassification``
    and ``self.head`` holds the rest (``classifier``, ``pre_classifier``, ...).

    :meth:`layer_groups` returns the encoder's blocks bottom to top (embeddings, then each layer),
    for layer-wise freezing; ``layer_lr_decay`` turns :meth:`param_groups` into one group per block.
    Batches are the dicts of :class:`~lightning_recipes.TextDataModule` (``input_ids``,
    ``attention_mask``, ..., ``labels``). Label names (``label_names``, or taken from the datamodule's
    ``label_names`` at setup) are saved with the model, so :meth:`predict_texts` answers in names; the
    datamodule's ``max_length`` is adopted (and saved) the same way for :meth:`predict_texts`.

    Args:
        model_name_or_path: Hub id (``distilbert-base-uncased``) or local folder of a transformers model.
        num_classes: classes (labels for multi-label, targets for regression).
        task: ``multiclass``, ``multilabel`` or ``regression`` (MSE, or Huber with ``huber_delta``).
        label_names: class names in id order; default: the datamodule's ``label_names``.
        revision: Hub revision (branch, tag or commit) of the model and tokenizer.
        pretrained: load the pretrained weights; ``False`` builds the architecture with random weights.
        config: a transformers config as a dict (``config.to_dict()``), used instead of the model's
            ``config.json``; checkpoints store it so they reload offline.
        tokenizer_name_or_path: tokenizer id or folder when it differs from ``model_name_or_path``.
        head: ``new`` (pooling + ``ClassificationHead``) or ``model`` (the model's own head).
        pooling: ``cls`` (first token) or ``mean`` (masked mean of tokens), for ``head="new"``.
        hidden_dim, dropout, activation: the new head (see ``ClassificationHead``).
        label_smoothing, class_weights, huber_delta: the loss (see ``ClassificationModule``).
        layer_lr_decay: layer-wise learning-rate decay: the top block trains at ``backbone_lr`` and each
            block below at ``layer_lr_decay`` times the one above (e.g. ``0.9``); ``None`` keeps one group.
        gradient_checkpointing: recompute activations in the backward pass to save memory.
        lr, backbone_lr, optimizer, lr_scheduler, scheduler_interval, scheduler_monitor, agc_clip_factor:
            see ``TransferModule``.

    Example::

        >>> from transformers import BertConfig
        >>> config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        ...                     intermediate_size=32).to_dict()
        >>> model = TextClassifier("tiny-bert", num_classes=3, pretrained=False, config=config,
        ...                        layer_lr_decay=0.5, lr=1e-3, backbone_lr=1e-4)
        >>> model({"input_ids": torch.tensor([[2, 7, 9, 3]])}).shape
        torch.Size([1, 3])
        >>> len(model.layer_groups())
        3
        >>> [(g["name"], g["lr"]) for g in model.param_groups()]  # doctest: +NORMALIZE_WHITESPACE
        [('head', 0.001), ('backbone.embeddings', 2.5e-05), ('backbone.layer0', 5e-05),
         ('backbone.layer1', 0.0001)]
    """

    def __init__(
        self,
        model_name_or_path: str = "distilbert-base-uncased",
        num_classes: int = 2,
        task: Task = "multiclass",
        label_names: list[str] | None = None,
        revision: str | None = None,
        pretrained: bool = True,
        config: dict[str, Any] | None = None,
        tokenizer_name_or_path: str | None = None,
        head: HeadKind = "new",
        pooling: Pooling = "cls",
        hidden_dim: int | None = None,
        dropout: float = 0.1,
        activation: str = "gelu",
        label_smoothing: float = 0.0,
        class_weights: list[float] | None = None,
        huber_delta: float | None = None,
        layer_lr_decay: float | None = None,
        gradient_checkpointing: bool = False,
        lr: float = 2e-5,
        backbone_lr: float | None = None,
        optimizer: OptimizerFactory | None = None,
        lr_scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "step",
        scheduler_monitor: str = "val/loss",
        agc_clip_factor: float | None = None,
    ) -> None:
        super().__init__(
            num_classes=num_classes,
            task=task,
            label_smoothing=label_smoothing,
            class_weights=class_weights,
            huber_delta=huber_delta,
            lr=lr,
            backbone_lr=backbone_lr,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            scheduler_interval=scheduler_interval,
            scheduler_monitor=scheduler_monitor,
            agc_clip_factor=agc_clip_factor,
        )
        if head not in ("new", "model"):
            raise ValueError(f"head={head!r} is not one of ('new', 'model')")
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling={pooling!r} is not one of ('cls', 'mean')")
        if layer_lr_decay is not None and not 0.0 < layer_lr_decay <= 1.0:
            raise ValueError(f"layer_lr_decay must be in (0, 1] (or None), got {layer_lr_decay}")
        if label_names is not None and len(label_names) != num_classes:
            raise ValueError(
                f"label_names has {len(label_names)} names {label_names} but num_classes={num_classes}"
            )
        self.save_hyperparameters()
        self.labels = list(label_names) if label_names is not None else None
        self.head_kind = head
        self.pooling = pooling
        self.layer_lr_decay = layer_lr_decay
        self.max_length: int | None = None  # the datamodule's, adopted at setup
        self._tokenizer: Any = None
        self._tokenizer_name = tokenizer_name_or_path or model_name_or_path

        hf_config = self._build_config(model_name_or_path, revision, config)
        if head == "model":
            from transformers import AutoModelForSequenceClassification as auto_cls
        else:
            from transformers import AutoModel as auto_cls
        if pretrained:
            model = _hub_call(
                model_name_or_path,
                auto_cls.from_pretrained,
                model_name_or_path,
                config=hf_config,
                revision=revision,
            )
        else:
            model = auto_cls.from_config(hf_config)
        model.train()  # from_pretrained returns eval mode; Lightning keeps submodule modes as built
        if head == "model":
            prefix = model.base_model_prefix
            self.backbone = getattr(model, prefix)
            self.head = nn.ModuleDict({name: m for name, m in model.named_children() if name != prefix})
            # The full model shares its modules with backbone/head; kept unregistered (no duplicate weights).
            object.__setattr__(self, "_seq_model", model)
        else:
            if getattr(model, "pooler", None) is not None:
                model.pooler = None  # unused by our pooling; trainable-but-unused weights break DDP
            self.backbone = model
            self.head = ClassificationHead(
                hf_config.hidden_size, num_classes, hidden_dim, dropout, activation
            )
            object.__setattr__(self, "_seq_model", None)
        if gradient_checkpointing:
            target = self._seq_model if self._seq_model is not None else self.backbone
            enable = getattr(target, "activation_checkpointing_enable", None)
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:  # transformers < 5
                target.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        accepted = inspect.signature(self.backbone.forward).parameters
        self._input_names = tuple(n for n in _INPUT_NAMES if n in accepted)

    # -- construction ----------------------------------------------------------------------------
    def _build_config(self, name: str, revision: str | None, config: dict[str, Any] | None) -> Any:
        from transformers import AutoConfig

        hp = self.hparams
        if config is not None:
            config = dict(config)
            model_type = config.pop("model_type", None)
            if model_type is None:
                raise ValueError("config must be a transformers config dict with a 'model_type' key")
            hf_config = AutoConfig.for_model(model_type, **config)
        else:
            hf_config = _hub_call(name, AutoConfig.from_pretrained, name, revision=revision)
        if hp.head == "model":
            hf_config.num_labels = hp.num_classes
            hf_config.problem_type = {
                "multiclass": "single_label_classification",
                "multilabel": "multi_label_classification",
                "regression": "regression",
            }[hp.task]
            names = hp.label_names or [f"LABEL_{i}" for i in range(hp.num_classes)]
            hf_config.id2label = dict(enumerate(names))
            hf_config.label2id = {n: i for i, n in enumerate(names)}
        return hf_config

    @property
    def tokenizer(self) -> Any:
        """The tokenizer (loaded on first use, or restored from the checkpoint)."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self._tokenizer_name, self.hparams.revision)
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, value: Any) -> None:
        self._tokenizer = value

    # -- layer groups and learning rates -------------------------------------------------------------
    def layer_groups(self) -> list[nn.Module]:
        """The backbone's blocks bottom (input side) to top: the embeddings, then each transformer layer.

        Parameters outside these blocks (a pooler, a final norm) belong with the top block.
        """
        config = self.backbone.config
        embeddings = getattr(self.backbone, "embeddings", None)
        if embeddings is None:
            embeddings = self.backbone.get_input_embeddings()
        n_layers = config.num_hidden_layers
        for _, module in self.backbone.named_modules():
            if isinstance(module, nn.ModuleList) and len(module) == n_layers:
                return [embeddings, *module]
        raise ValueError(
            f"Cannot find the {n_layers} transformer layers of {type(self.backbone).__name__} "
            "(an nn.ModuleList of num_hidden_layers blocks); layer_groups() supports BERT-style encoders."
        )

    @override
    def param_groups(self) -> list[dict[str, Any]]:
        """``head`` and ``backbone`` groups; with ``layer_lr_decay``, ``backbone.embeddings``,
        ``backbone.layer0`` ... ``backbone.layerN`` (bottom to top) at ``backbone_lr * decay**depth``."""
        if self.layer_lr_decay is None:
            return super().param_groups()
        top_lr = self.lr if self.backbone_lr is None else self.backbone_lr
        blocks = self.layer_groups()
        names = ["backbone.embeddings"] + [f"backbone.layer{i}" for i in range(len(blocks) - 1)]
        params = [list(block.parameters()) for block in blocks]
        seen = {id(p) for ps in params for p in ps}
        params[-1] += [p for p in self.backbone.parameters() if id(p) not in seen]
        groups = [
            {"name": "head", "params": [p for p in self.head.parameters() if p.requires_grad], "lr": self.lr}
        ]
        for depth, (name, ps) in enumerate(zip(names, params, strict=True)):
            decay = self.layer_lr_decay ** (len(blocks) - 1 - depth)
            groups.append({"name": name, "params": [p for p in ps if p.requires_grad], "lr": top_lr * decay})
        return [g for g in groups if g["params"]]

    @override
    def train(self, mode: bool = True) -> TextClassifier:
        super().train(mode)
        if self._seq_model is not None:  # its own flag; its submodules are ours and already set
            self._seq_model.training = mode
        return self

    # -- forward ---------------------------------------------------------------------------------
    @override
    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        """Logits from a dict of tokenizer outputs (``input_ids``, ``attention_mask``, ...)."""
        kwargs = {k: inputs[k] for k in self._input_names if k in inputs}
        if self._seq_model is not None:
            return self._seq_model(**kwargs).logits
        hidden = self.backbone(**kwargs).last_hidden_state
        pooled = hidden[:, 0] if self.pooling == "cls" else mean_pool(hidden, kwargs.get("attention_mask"))
        return self.head(pooled)

    @override
    def logits_and_target(self, batch: Any) -> tuple[Tensor, Tensor]:
        if "labels" not in batch:
            raise ValueError(f"Batch has no 'labels' key (keys: {sorted(batch)}); is the split labelled?")
        return self(batch), batch["labels"]

    # -- labels and prediction -----------------------------------------------------------------------
    @override
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        self.max_length = getattr(getattr(datamodule, "opts", None), "max_length", self.max_length)
        names = getattr(datamodule, "label_names", None)
        if names is None or self.task == "regression":
            return
        if len(names) != self.num_classes:
            raise ValueError(
                f"The data has {len(names)} classes {list(names)} but the model was built with "
                f"num_classes={self.num_classes}; set model num_classes: {len(names)}"
            )
        if self.labels is None:
            self.labels = list(names)
        elif list(names) != self.labels:
            raise ValueError(
                f"The data's label names {list(names)} differ from the model's labels {self.labels}"
            )

    @property
    def label_names(self) -> list[str]:
        """Class names in id order (``LABEL_<i>`` where none are known)."""
        return self.labels or [f"LABEL_{i}" for i in range(self.num_classes)]

    def decode(self, probs: Tensor) -> list[dict[str, Any]]:
        """Turn a batch of :meth:`probabilities` into ``{"label", "probabilities"}`` dicts (``{"value"}``
        for regression; ``label`` is the list of names above 0.5 for multi-label)."""
        if self.task == "regression":
            return [{"value": v} for v in probs.tolist()]
        names = self.label_names
        out = []
        for row in probs.tolist():
            scores = dict(zip(names, row, strict=True))
            if self.task == "multilabel":
                label: Any = [n for n, p in scores.items() if p > 0.5]
            else:
                label = names[max(range(len(row)), key=row.__getitem__)]
            out.append({"label": label, "probabilities": scores})
        return out

    @override
    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """``{"probabilities": Tensor, "labels": [...]}``: each row's label (names) and probabilities."""
        probs = self.probabilities(self(batch).float())
        return {
            "probabilities": probs,
            "labels": [d.get("label", d.get("value")) for d in self.decode(probs)],
        }

    @torch.no_grad()
    def predict_texts(
        self, texts: Sequence[str] | Sequence[tuple[str, str]], batch_size: int = 32
    ) -> list[dict[str, Any]]:
        """Classify raw strings (or ``(text, text_pair)`` tuples) and return one dict per text.

        Each dict is ``{"label": name, "probabilities": {name: p, ...}}`` (see :meth:`decode`).
        """
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
                results += self.decode(self.probabilities(self(enc).float()).cpu())
        finally:
            self.train(was_training)
        return results

    # -- checkpoints and export ----------------------------------------------------------------------
    def hf_config(self) -> Any:
        """The transformers config of the model (of the full classification model with ``head="model"``)."""
        model = self._seq_model if self._seq_model is not None else self.backbone
        config = model.config
        if self.head_kind == "model":
            config.id2label = dict(enumerate(self.label_names))
            config.label2id = {n: i for i, n in enumerate(self.label_names)}
        return config

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The state dict holds every weight: reloading builds the architecture from the stored config
        # and the tokenizer from the stored files, so `load_from_checkpoint(path)` needs no network.
        hparams = checkpoint.setdefault("hyper_parameters", {})
        hparams["pretrained"] = False
        hparams["config"] = self.hf_config().to_dict()
        hparams["label_names"] = self.labels
        checkpoint["text_max_length"] = self.max_length
        if self._tokenizer is not None or Path(self._tokenizer_name).exists():
            with tempfile.TemporaryDirectory() as folder:
                self.tokenizer.save_pretrained(folder)
                checkpoint["tokenizer_files"] = {
                    p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()
                }

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        files = checkpoint.get("tokenizer_files")
        if files:
            from transformers import AutoTokenizer

            with tempfile.TemporaryDirectory() as folder:
                for name, data in files.items():
                    Path(folder, name).write_bytes(data)
                self._tokenizer = AutoTokenizer.from_pretrained(folder)
        self.labels = checkpoint.get("hyper_parameters", {}).get("label_names", self.labels)
        self.max_length = checkpoint.get("text_max_length", self.max_length)

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write model and tokenizer so ``AutoModelForSequenceClassification.from_pretrained(folder)``
        (and a ``pipeline("text-classification", model=folder)``) load them, with ``id2label``/``label2id``.

        Works with ``head="model"`` for any architecture, and with a new head that equals the
        architecture's own: ``pooling="cls"``, ``hidden_dim`` = the hidden size and ``activation``
        ``tanh`` (BERT) or ``relu`` (DistilBERT). Other heads raise a ``ValueError``.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self._seq_model is not None:
            model = self._seq_model
            model.config = self.hf_config()
        else:
            model = self._export_new_head()
        model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        return folder

    def _export_new_head(self) -> nn.Module:
        from transformers import AutoModelForSequenceClassification

        config = self.backbone.config
        hp = self.hparams
        activation, mapping = _EXPORTABLE_HEADS.get(config.model_type, (None, {}))
        if not (
            activation
            and self.pooling == "cls"
            and hp.hidden_dim == config.hidden_size
            and hp.activation == activation
        ):
            supported = {
                k: f"pooling=cls, hidden_dim=hidden size, activation={a}"
                for k, (a, _) in _EXPORTABLE_HEADS.items()
            }
            raise ValueError(
                f"save_pretrained cannot express this head (model_type={config.model_type!r}, pooling="
                f"{self.pooling!r}, hidden_dim={hp.hidden_dim}, activation={hp.activation!r}) as a "
                f"transformers classification head. Use head='model', or a new head matching {supported}."
            )
        export_config = type(config).from_dict(config.to_dict())
        export_config.num_labels = self.num_classes
        export_config.id2label = dict(enumerate(self.label_names))
        export_config.label2id = {n: i for i, n in enumerate(self.label_names)}
        export_config.problem_type = {
            "multiclass": "single_label_classification",
            "multilabel": "multi_label_classification",
            "regression": "regression",
        }[self.task]
        model = AutoModelForSequenceClassification.from_config(export_config)
        base = getattr(model, model.base_model_prefix)
        missing, _ = base.load_state_dict(self.backbone.state_dict(), strict=False)
        head_state = {}
        for index, prefix in mapping.items():
            for key, value in self.head[index].state_dict().items():
                head_state[f"{prefix}.{key}"] = value
        state = model.state_dict()
        state.update(head_state)
        model.load_state_dict(state)
        if any(not k.startswith("pooler.") for k in missing):
            raise RuntimeError(f"Exporting lost backbone weights {missing}")
        return model
