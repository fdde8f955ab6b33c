"""Export a :class:`~lightning_recipes.TextClassifier` as a transformers sequence-classification model."""

from __future__ import annotations

from typing import Any

from torch import nn

# The new-head settings that equal an architecture's own sequence-classification head:
# model_type -> (activation, {our head layer index: HF parameter prefix}).
EXPORTABLE_HEADS = {
    "bert": ("tanh", {1: "bert.pooler.dense", 4: "classifier"}),
    "distilbert": ("relu", {1: "pre_classifier", 4: "classifier"}),
}
PROBLEM_TYPES = {
    "multiclass": "single_label_classification",
    "multilabel": "multi_label_classification",
    "regression": "regression",
}


def label_config(config: Any, names: list[str], task: str) -> Any:
    """Set ``num_labels``, ``id2label``/``label2id`` and ``problem_type`` of a transformers config."""
    config.num_labels = len(names)
    config.id2label = dict(enumerate(names))
    config.label2id = {n: i for i, n in enumerate(names)}
    config.problem_type = PROBLEM_TYPES[task]
    return config


def export_new_head(model: Any) -> nn.Module:
    """An ``AutoModelForSequenceClassification`` holding a ``TextClassifier``'s backbone and new head.

    Works when the head equals the architecture's own: ``pooling="cls"``, ``hidden_dim`` = hidden size
    and ``activation`` ``tanh`` (BERT) or ``relu`` (DistilBERT); other heads raise a ``ValueError``.
    """
    from transformers import AutoModelForSequenceClassification

    config = model.backbone.config
    hp = model.hparams
    activation, mapping = EXPORTABLE_HEADS.get(config.model_type, (None, {}))
    if not (
        activation
        and model.pooling == "cls"
        and hp.hidden_dim == config.hidden_size
        and hp.activation == activation
    ):
        supported = {
            k: f"pooling=cls, hidden_dim=hidden size, activation={a}"
            for k, (a, _) in EXPORTABLE_HEADS.items()
        }
        raise ValueError(
            f"save_pretrained cannot express this head (model_type={config.model_type!r}, pooling="
            f"{model.pooling!r}, hidden_dim={hp.hidden_dim}, activation={hp.activation!r}) as a "
            f"transformers classification head. Use head='pretrained', or a new head matching {supported}."
        )
    export_config = label_config(type(config).from_dict(config.to_dict()), model.label_names, model.task)
    exported = AutoModelForSequenceClassification.from_config(export_config)
    base = getattr(exported, exported.base_model_prefix)
    missing, _ = base.load_state_dict(model.backbone.state_dict(), strict=False)
    state = exported.state_dict()
    for index, prefix in mapping.items():
        for key, value in model.head[index].state_dict().items():
            state[f"{prefix}.{key}"] = value
    exported.load_state_dict(state)
    if any(not k.startswith("pooler.") for k in missing):
        raise RuntimeError(f"Exporting lost backbone weights {missing}")
    return exported
