"""What the Hugging Face modules share: zoo names resolved to their built folders, a full model split into
registered ``backbone``/``head`` parts, config building, finding the tokenizer that comes with a model,
the layer groups of a transformer body (bottom to top, for gradual unfreezing, LR decay and FSDP units)
and the export of a :class:`~lightning_recipes.TextClassifier` as a transformers sequence-classification
model.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import lightning as L
from torch import nn

from lightning_recipes import registry
from lightning_recipes._hub import hub_call, looks_like_local_path
from lightning_recipes.tokenizer import load_tokenizer

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model")


def resolve_model_name(name: str | None) -> str | None:
    """A zoo name of a transformers model (``gpt2-mini.shakespeare``) becomes the folder it is built to
    (:func:`lightning_recipes.registry.built`: a clear error when it is not built yet); other names come
    back unchanged.

    Example::

        >>> resolve_model_name("gpt2"), resolve_model_name(None)
        ('gpt2', None)
    """
    entry = registry.ZOO.get(name) if name is not None else None
    if entry is None:
        return name
    if entry.library != "transformers":
        raise ValueError(
            f"zoo name {name!r} is a {entry.library} backbone, not a transformers model: use it as "
            f"ImageClassifier(model_name_or_path={name!r}); `lightning-recipes zoo list` shows every zoo name"
        )
    return str(registry.built(name))


def find_tokenizer(model_name_or_path: str, tokenizer: str | None, revision: str | None) -> Any:
    """The tokenizer of a model: ``tokenizer`` if given, else the one beside the model's weights.

    A local model folder without tokenizer files gives ``None`` (the data module then provides one,
    through the handshake); a Hub id is loaded at ``revision``, with a clear error when unreachable.
    """
    if tokenizer is not None:
        return load_tokenizer(tokenizer, revision if tokenizer == model_name_or_path else None)
    folder = Path(model_name_or_path).expanduser()
    local = looks_like_local_path(model_name_or_path) or folder.is_dir()
    if local and not any((folder / f).is_file() for f in _TOKENIZER_FILES):
        return None
    return load_tokenizer(model_name_or_path, revision)


def build_config(config: dict[str, Any], default_type: str | None = None) -> Any:
    """A transformers config from a dict of its arguments (``model_type`` picks the class).

    Example::

        >>> build_config({"n_layer": 2, "n_embd": 32, "n_head": 2}, default_type="gpt2").n_layer
        2
    """
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    kwargs = dict(config)
    model_type = kwargs.pop("model_type", default_type)
    if model_type is None:
        raise ValueError(
            "config must be a transformers config dict with a 'model_type' key (e.g. bert, gpt2)"
        )
    if model_type not in CONFIG_MAPPING:
        close = difflib.get_close_matches(model_type, list(CONFIG_MAPPING.keys()), n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"Unknown model_type {model_type!r} in config.{hint} (e.g. bert, gpt2, llama)")
    return AutoConfig.for_model(model_type, **kwargs)


#: Tokens of the example sequence Lightning's model summary runs (``example_input_array``).
EXAMPLE_TOKENS = 128


def example_length(config: Any) -> int:
    """:data:`EXAMPLE_TOKENS`, or the model's longest sequence where that is shorter.

    Example::

        >>> from transformers import GPT2Config
        >>> example_length(GPT2Config(n_positions=64)), example_length(GPT2Config())
        (64, 128)
    """
    longest = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return min(EXAMPLE_TOKENS, longest or EXAMPLE_TOKENS)


def pretrained_base(name: str, revision: str | None) -> dict[str, Any]:
    """What rebuilds a pretrained transformers model (``TransferModule.setup_adapter``): the Hub id at
    ``revision``, or the local folder as an absolute path."""
    folder = Path(name).expanduser()
    if looks_like_local_path(name) or folder.is_dir():
        name = str(folder.resolve())
    hparams = {"model_name_or_path": name, "revision": revision}
    return {"source": name, "revision": revision, "hparams": hparams}


class HFParts(L.LightningModule):
    """Mixin: a whole transformers model used through its registered parts ``backbone`` and ``head``.

    :meth:`set_parts` registers the base model as ``self.backbone`` and the rest as ``self.head``; the
    whole model (``self.model``, which shares those modules) stays unregistered, so each weight is
    in the state dict once. ``train()``/``eval()`` also set the whole model's own flag.
    """

    model: nn.Module | None

    def set_parts(self, model: nn.Module | None, backbone: nn.Module, head: nn.Module) -> None:
        self.backbone = backbone
        self.head = head
        object.__setattr__(self, "model", model)

    def train(self, mode: bool = True) -> HFParts:
        super().train(mode)
        if getattr(self, "model", None) is not None:  # its own flag; its submodules are ours, set above
            self.model.training = mode
        return self


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute activations in the backward pass (renamed activation checkpointing in transformers 5)."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:  # transformers < 5
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def load_pretrained_causal_lm(name: str, revision: str | None = None, **overrides: Any) -> nn.Module:
    """``AutoModelForCausalLM.from_pretrained`` with clear errors for a missing folder or no network.

    Args:
        name: Hugging Face Hub id (``gpt2``, ``EleutherAI/pythia-70m``) or local folder.
        revision: branch, tag or commit of a Hub id.
        **overrides: config values to change (e.g. ``resid_pdrop=0.0``).
    """
    from transformers import AutoModelForCausalLM

    path = str(Path(name).expanduser()) if looks_like_local_path(name) else name
    return hub_call(
        name,
        "transformers",
        "causal LM",
        AutoModelForCausalLM.from_pretrained,
        path,
        revision=revision,
        **overrides,
    )


def untie_output_embeddings(model: nn.Module) -> None:
    """Give ``lm_head`` its own copy of the tied embedding matrix (pretrained values, not random)."""
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    if out is not None and out.weight is inp.weight:
        out.weight = nn.Parameter(inp.weight.detach().clone())
    model.config.tie_word_embeddings = False


def transformer_blocks(backbone: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The transformer blocks of ``backbone``: the name of the longest ``nn.ModuleList`` in it, and it.

    ``None`` when ``backbone`` holds no ``nn.ModuleList``.

    Example::

        >>> body = nn.Module()
        >>> body.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(2))
        >>> transformer_blocks(body)[0], transformer_blocks(nn.Linear(2, 2))
        ('blocks', None)
    """
    lists = [(name, m) for name, m in backbone.named_modules() if isinstance(m, nn.ModuleList)]
    return max(lists, key=lambda item: len(item[1])) if lists else None


def transformer_layer_groups(backbone: nn.Module) -> list[nn.Module]:
    """``[embeddings and everything before the blocks, block 0, ..., last block + everything after]``.

    The blocks are the longest ``nn.ModuleList`` in ``backbone`` (BERT ``encoder.layer``, DistilBERT
    ``transformer.layer``, GPT-2 ``h``, Llama ``layers``). Modules registered before it, at every level
    of the path to it (embeddings, dropout), form the first group; modules after it (a final norm, a
    pooler) join the last block. Several modules in one group come as an ``nn.ModuleList`` (a view that
    holds the same modules); a single module comes as itself. A backbone without a ``ModuleList`` is
    one group.

    Example::

        >>> body = nn.Module()
        >>> body.embed = nn.Embedding(5, 4)
        >>> body.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(2))
        >>> body.norm = nn.LayerNorm(4)
        >>> [sum(p.numel() for p in g.parameters()) for g in transformer_layer_groups(body)]
        [20, 20, 28]
    """
    found = transformer_blocks(backbone)
    if found is None:
        return [backbone]
    blocks_name, blocks = found
    before: list[nn.Module] = []
    after: list[nn.Module] = []
    parent = backbone
    for part in blocks_name.split("."):
        children = list(parent.named_children())  # skips children set to None
        names = [name for name, _ in children]
        i = names.index(part)
        before += [m for _, m in children[:i]]
        after = [m for _, m in children[i + 1 :]] + after
        parent = children[i][1]
    groups: list[nn.Module] = [before[0] if len(before) == 1 else nn.ModuleList(before)] if before else []
    groups += list(blocks)
    if after:
        groups[-1] = nn.ModuleList([groups[-1], *after])
    return groups


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
