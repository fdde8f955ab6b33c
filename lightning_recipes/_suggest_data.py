"""What ``lightning-recipes suggest`` measures on: a data set's labels and frozen features of a backbone.

Images are read by :class:`~lightning_recipes.data.image.ImageDataModule` (its folder layouts and
transforms) and text by :func:`~lightning_recipes.data._text_files.load_split_file` with its
:class:`~lightning_recipes.data._labels.LabelEncoder`, so ``suggest`` sees the data exactly as the
recipes will. Each loader returns a :class:`Sample`: the class names, the training examples per class
and a seeded, class-balanced subsample; :func:`image_features` / :func:`text_features` embed that
subsample with the pretrained backbone and with the same architecture at random init, and give the
pretrained classifier's logits where its label names cover the data's classes (as-is accuracy).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_recipes._random_state import random_state_untouched
from lightning_recipes.registry import ZOO


@dataclass
class Sample:
    """A data set as ``suggest`` measures it.

    Attributes:
        classes: class names in id order.
        train_counts: training examples per class (all of them, not only the subsample).
        items: the subsample: image paths or texts.
        targets: class ids of :attr:`items`.
        details: how the data was read, for the printed summary and the recipe command.
    """

    classes: list[str]
    train_counts: list[int]
    items: list[Any]
    targets: np.ndarray
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Features:
    """Frozen features of a :class:`Sample` and, where it applies, the pretrained classifier's as-is logits.

    Attributes:
        pretrained: features of the pretrained backbone, one row per item.
        random: features of the same architecture at random init (seeded).
        as_is_logits: the pretrained classifier's logits restricted to the data's classes (column ``i``
            scores class ``i``), or ``None`` when its label names do not cover every class.
        label_match: how many of the data's class names were found among the pretrained label names.
    """

    pretrained: np.ndarray
    random: np.ndarray
    as_is_logits: np.ndarray | None
    label_match: int


def normalise(name: str) -> str:
    """A label name compared loosely: lower case, ``_``/``-`` as spaces, spaces collapsed.

    Example::

        >>> normalise("Golden_Retriever"), normalise("great  white-shark")
        ('golden retriever', 'great white shark')
    """
    return re.sub(r"\s+", " ", re.sub(r"[_\-]", " ", name.lower())).strip()


def match_labels(classes: list[str], pretrained_names: list[list[str]]) -> list[int | None]:
    """For each class, the index of the pretrained label it names exactly (any synonym), else ``None``.

    ``pretrained_names[i]`` lists the names of pretrained label ``i`` (its id and synonyms).

    Example::

        >>> match_labels(["tench", "dog", "Goldfish"], [["n01", "tench", "Tinca tinca"], ["goldfish"]])
        [0, None, 1]
    """
    index = {normalise(n): i for i, names in enumerate(pretrained_names) for n in names}
    return [index.get(normalise(c)) for c in classes]


def balanced_subsample(targets: np.ndarray, max_examples: int, seed: int) -> np.ndarray:
    """Indices of at most ``max_examples`` items, as many of each class as it has up to an equal share.

    Example::

        >>> balanced_subsample(np.array([0] * 10 + [1] * 3), max_examples=8, seed=0).size
        7
    """
    rng = np.random.default_rng(seed)
    classes = np.unique(targets)
    share = max(2, max_examples // len(classes))
    picked = [rng.permutation(np.flatnonzero(targets == c))[:share] for c in classes]
    return np.sort(np.concatenate(picked))


# -- images ---------------------------------------------------------------------------------------
def load_images(root: str, max_examples: int, seed: int) -> Sample:
    """An image folder (``<class>/*`` or ``train/<class>/*`` with ``val/``, ``test/``), read as recipes do."""
    from lightning_recipes.data.image import ImageDataModule

    dm = ImageDataModule(root=root, val_fraction=0.0, seed=seed, num_workers=0)
    classes = dm.data_spec().label_names
    rows = dm._rows()  # noqa: SLF001 (the data module's own split reading: one folder parser)
    counts = Counter(labels[0] for _, labels in rows["train"])
    labelled = [row for split in ("train", "val", "test") for row in rows[split] or []]
    targets = np.array([classes.index(labels[0]) for _, labels in labelled])
    keep = balanced_subsample(targets, max_examples, seed)
    splits = [split for split in ("train", "val", "test") if rows[split] is not None]
    return Sample(
        classes=classes,
        train_counts=[counts[c] for c in classes],
        items=[labelled[i][0] for i in keep],
        targets=targets[keep],
        details={
            "layout": "/".join(splits) + " folders" if len(splits) > 1 else "class folders",
            "datamodule": dm,
        },
    )


def _imagenet_names(model: torch.nn.Module) -> list[list[str]] | None:
    """Names (id and synonyms) of the pretrained classes of a timm model trained on an ImageNet subset."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(model)
    if subset is None:
        return None
    info = ImageNetInfo(subset)
    return [
        [info.index_to_label_name(i), *info.index_to_description(i).split(", ")]
        for i in range(info.num_classes())
    ]


@torch.no_grad()
def _embed(model: torch.nn.Module, batches: list[torch.Tensor]) -> np.ndarray:
    model.eval()
    return torch.cat([model(x) for x in batches]).float().numpy()


def image_features(
    sample: Sample, backbone: str, max_image_size: int, seed: int, pretrained: bool | str = True
) -> Features:
    """Pooled features of the pretrained and a random-init ``backbone`` (timm name, ``local-dir:``, zoo)."""
    from timm.data import resolve_data_config

    from lightning_recipes.data.image import ImageDataset
    from lightning_recipes.modules.image import create_backbone

    own_weights = pretrained is True  # a weights file (or a zoo entry) brings no label names
    model = create_backbone(backbone, pretrained=pretrained)
    with random_state_untouched():
        torch.manual_seed(seed)
        random = create_backbone(backbone, pretrained=False)
    config = resolve_data_config({}, model=model)
    size = min(config["input_size"][-1], max_image_size)
    dm = sample.details["datamodule"]  # the data module's transforms, at the backbone's data config
    dm.data_config, dm.image_size = config, size if size < config["input_size"][-1] else None
    dataset = ImageDataset([(p, 0) for p in sample.items], dm.transforms(training=False))
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    batches = list(images.split(64))
    names = _imagenet_names(model) if own_weights and backbone not in ZOO else None
    matched = match_labels(sample.classes, names) if names else [None] * len(sample.classes)
    logits = None
    if names and all(m is not None for m in matched):
        sample.details["label_map"] = dict(zip(sample.classes, matched, strict=True))
        import timm

        from lightning_recipes._hub import hub_call

        remote = not backbone.startswith("local-dir:")
        create = timm.create_model
        classifier = hub_call(backbone, "timm", "head", create, backbone, pretrained=True, remote=remote)
        logits = _embed(classifier, batches)[:, matched]
    return Features(
        pretrained=_embed(model, batches),
        random=_embed(random, batches),
        as_is_logits=logits,
        label_match=sum(m is not None for m in matched),
    )


# -- text -----------------------------------------------------------------------------------------
def load_texts(
    path: str,
    text_column: str | None,
    label_column: str,
    max_examples: int,
    seed: int,
    encoding: str = "utf-8",
    delimiter: str | None = None,
    format: str | None = None,
) -> Sample:
    """A file of texts and labels, read as ``TextDataModule`` reads it with the same ``encoding``,
    ``delimiter`` and ``format`` (csv/tsv/json/jsonl/parquet, ``LABEL text`` and ``text<delimiter>label``
    lines: their columns are ``text`` and ``label``)."""
    from lightning_recipes.cache import default_cache_dir
    from lightning_recipes.data._labels import LabelEncoder
    from lightning_recipes.data._text_files import load_split_file

    how = {"encoding": encoding, "delimiter": delimiter, "format": format}
    ds = load_split_file(path, "train", str(default_cache_dir() / "datasets"), **how)
    if text_column is None:
        found = [c for c in ("sentence", "text") if c in ds.column_names]
        if not found:
            raise ValueError(
                f"{path}: no 'sentence' or 'text' column; pass --text-column (columns: {ds.column_names})"
            )
        text_column = found[0]
    for kind, column in (("text", text_column), ("label", label_column)):
        if column not in ds.column_names:
            raise ValueError(
                f"{path}: {kind} column {column!r} not found; its columns are {ds.column_names} "
                f"(pass --{kind}-column)"
            )
    labels = LabelEncoder(label_column, "multiclass").fit(ds)
    all_targets = np.array(labels.encode(ds[label_column]))
    keep = balanced_subsample(all_targets, max_examples, seed)
    counts = np.bincount(all_targets, minlength=len(labels.names))
    texts = ds.select(keep)[text_column]
    return Sample(
        classes=list(labels.names),
        train_counts=counts.tolist(),
        items=texts,
        targets=all_targets[keep],
        details={"text_column": text_column, "label_column": label_column, **_file_options(how)},
    )


def _file_options(how: dict[str, str | None]) -> dict[str, dict[str, str]]:
    """``{"file_options": {...}}`` for the options not at ``TextDataModule``'s defaults, else ``{}``."""
    given = {k: v for k, v in how.items() if v is not None and v != "utf-8"}
    return {"file_options": given} if given else {}


def _pretrained_label_names(config: Any) -> list[list[str]] | None:
    """A Hugging Face config's ``id2label`` names, unless they are the placeholder ``LABEL_<i>``."""
    id2label = getattr(config, "id2label", None) or {}
    names = [str(id2label[i]) for i in sorted(id2label)]
    if not names or all(re.fullmatch(r"LABEL_\d+", n) for n in names):
        return None
    return [[n] for n in names]


def text_features(sample: Sample, model_path: str, max_length: int, seed: int) -> Features:
    """Mean-pooled token features of the pretrained and of a random-init encoder (Hub id or folder)."""
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    from lightning_recipes._hub import hub_call
    from lightning_recipes.modules._hf import resolve_model_name
    from lightning_recipes.modules.text import mean_pool
    from lightning_recipes.tokenizer import load_tokenizer

    model_path = resolve_model_name(model_path)  # a (built) zoo name: its folder
    tokenizer = load_tokenizer(model_path)
    config = hub_call(model_path, "transformers", "model config", AutoConfig.from_pretrained, model_path)
    encoder = hub_call(model_path, "transformers", "model", AutoModel.from_pretrained, model_path)
    with random_state_untouched():
        torch.manual_seed(seed)
        random = AutoModel.from_config(config)
    batches = [
        dict(tokenizer(sample.items[i : i + 32], truncation=True, max_length=max_length, padding=True,
                       return_tensors="pt"))
        for i in range(0, len(sample.items), 32)
    ]  # fmt: skip

    @torch.no_grad()
    def embed(model: torch.nn.Module) -> np.ndarray:
        model.eval()
        out = [mean_pool(model(**b).last_hidden_state, b.get("attention_mask")) for b in batches]
        return torch.cat(out).float().numpy()

    names = _pretrained_label_names(config)
    matched = match_labels(sample.classes, names) if names else [None] * len(sample.classes)
    logits = None
    if names and all(m is not None for m in matched):
        sample.details["label_map"] = dict(zip(sample.classes, matched, strict=True))
        load = AutoModelForSequenceClassification.from_pretrained
        head = hub_call(model_path, "transformers", "model", load, model_path).eval()
        with torch.no_grad():
            logits = torch.cat([head(**b).logits for b in batches]).float().numpy()[:, matched]
    return Features(
        pretrained=embed(encoder),
        random=embed(random),
        as_is_logits=logits,
        label_match=sum(m is not None for m in matched),
    )


def detect_family(data: str) -> str:
    """``image`` for a folder, ``text`` for a file; an error naming ``data`` when it is neither."""
    path = Path(data)
    if path.is_dir():
        return "image"
    if path.is_file():
        return "text"
    raise FileNotFoundError(f"Data {data!r} not found: give an image folder or a csv/tsv/json/parquet file")
