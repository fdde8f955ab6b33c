"""Heads: the new trainable head put on a pretrained backbone, and a pretrained head's own labels.

A pretrained head (ImageNet's 1,000 labels, a sentiment model's ``NEGATIVE``/``POSITIVE``) speaks its
own labels; a user's data has its own classes. ``class_map`` says which pretrained labels make each
data class (``{"cat": ["tabby cat", "tiger cat", 285], "dog": [...]}``); a class's score is the
probability mass of its labels, renormalised over all mapped labels (:func:`class_logits`).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


class ClassificationHead(nn.Sequential):
    """Dropout -> [Linear -> activation -> dropout] -> Linear, on pooled backbone features.

    Args:
        in_features: width of the backbone's pooled features.
        num_outputs: number of classes (or regression targets).
        hidden_dim: width of an optional hidden layer; ``None`` gives a single linear layer.
        dropout: dropout before each linear layer.
        activation: one of ``relu``, ``gelu``, ``silu``, ``tanh`` (used with ``hidden_dim``).

    Example::

        >>> import torch
        >>> head = ClassificationHead(16, 3, hidden_dim=8, dropout=0.1)
        >>> head(torch.randn(4, 16)).shape
        torch.Size([4, 3])
    """

    def __init__(
        self,
        in_features: int,
        num_outputs: int,
        hidden_dim: int | None = None,
        dropout: float = 0.0,
        activation: str = "gelu",
    ) -> None:
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation={activation!r} is not one of {sorted(_ACTIVATIONS)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        if hidden_dim:
            layers += [nn.Linear(in_features, hidden_dim), _ACTIVATIONS[activation](), nn.Dropout(dropout)]
            in_features = hidden_dim
        layers.append(nn.Linear(in_features, num_outputs))
        super().__init__(*layers)


#: A pretrained label, by name or by output id.
LabelRef = str | int


def unique_names(names: Sequence[str], keys: Sequence[str]) -> list[str]:
    """``names`` with each repeated name made unique by its ``key`` (``"crane (n02012849)"``).

    Example::

        >>> unique_names(["crane", "cat", "crane"], ["n1", "n2", "n3"])
        ['crane (n1)', 'cat', 'crane (n3)']
    """
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return [f"{n} ({k})" if counts[n] > 1 else n for n, k in zip(names, keys, strict=True)]


def _parts(name: str) -> list[str]:
    """The comma-separated parts of a label name, lower case, without a :func:`unique_names` suffix."""
    base = name.rsplit(" (", 1)[0] if name.endswith(")") else name
    return [p.strip().lower() for p in base.split(",")]


def resolve_label(ref: LabelRef, names: Sequence[str], aliases: Mapping[str, int] | None = None) -> int:
    """The output id of pretrained label ``ref``: an id, a name, an alias (e.g. an ImageNet synset), or
    one comma-separated part of a name (``"tabby cat"`` in ``"tabby, tabby cat"``) that only one name has.

    Raises ``ValueError`` naming ``ref`` and the closest label names when it matches none (or several).

    Example::

        >>> names = ["tabby, tabby cat", "tiger cat", "Persian cat"]
        >>> resolve_label("tabby cat", names), resolve_label(2, names), resolve_label("tiger cat", names)
        (0, 2, 1)
    """
    if isinstance(ref, int) and not isinstance(ref, bool):
        if not 0 <= ref < len(names):
            raise ValueError(f"class_map: label id {ref} is out of range: the model has {len(names)} labels")
        return ref
    ref = str(ref)
    if ref in names:
        return list(names).index(ref)
    if aliases and ref in aliases:
        return aliases[ref]
    parts = [i for i, name in enumerate(names) if ref.lower() in _parts(name)]
    if len(parts) == 1:
        return parts[0]
    if len(parts) > 1:
        shown = ", ".join(f"{names[i]!r} (id {i})" for i in parts[:5])
        raise ValueError(f"class_map: label {ref!r} is ambiguous: it names {shown}; give the full name or id")
    candidates = list(dict.fromkeys([*names, *(p.strip() for n in names for p in n.split(","))]))
    lowered = {c.lower(): c for c in reversed(candidates)}  # close in any case: 'positiv' -> 'POSITIVE'
    close = [lowered[c] for c in difflib.get_close_matches(ref.lower(), list(lowered), n=5, cutoff=0.6)]
    hint = f" Close names: {', '.join(map(repr, close))}." if close else ""
    shown = ", ".join(map(repr, names[:5])) + (", ..." if len(names) > 5 else "")
    raise ValueError(
        f"class_map: the pretrained model has no label {ref!r}.{hint} Its {len(names)} labels are "
        f"{shown} (model.output_names lists them; an id 0..{len(names) - 1} works too)."
    )


def resolve_class_map(
    class_map: Mapping[str, LabelRef | Sequence[LabelRef]],
    names: Sequence[str],
    aliases: Mapping[str, int] | None = None,
) -> dict[str, list[int]]:
    """``{data class: [output ids]}`` for ``class_map`` (each value one label or a list of them).

    A pretrained label may belong to one class only (its mass would count twice).

    Example::

        >>> resolve_class_map({"cat": ["tiger cat", 2], "other": "tabby cat"},
        ...                   ["tabby, tabby cat", "tiger cat", "Persian cat"])
        {'cat': [1, 2], 'other': [0]}
    """
    if not class_map:
        raise ValueError("class_map is empty: map each data class to one or more pretrained labels")
    resolved: dict[str, list[int]] = {}
    owner: dict[int, str] = {}
    for cls, refs in class_map.items():
        refs = [refs] if isinstance(refs, (str, int)) else list(refs)
        if not refs:
            raise ValueError(f"class_map: class {cls!r} maps to no label; give one or more pretrained labels")
        ids = list(dict.fromkeys(resolve_label(ref, names, aliases) for ref in refs))
        for i in ids:
            if i in owner:
                raise ValueError(
                    f"class_map: label {names[i]!r} (id {i}) is mapped to both {owner[i]!r} and {cls!r}; "
                    "a pretrained label may belong to one class only"
                )
            owner[i] = str(cls)
        resolved[str(cls)] = ids
    return resolved


def class_logits(logits: Tensor, ids: Sequence[Sequence[int]]) -> Tensor:
    """Logits of the mapped classes: ``logsumexp`` of each class's label logits.

    Their softmax is each class's probability mass renormalised over the mapped labels:
    ``softmax(class_logits)[c] = sum(p[i] for i in ids[c]) / sum(p[i] for all mapped i)``.

    Example::

        >>> import torch
        >>> p = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
        >>> class_logits(p.log(), [[0, 1], [3]]).softmax(-1)
        tensor([[0.4286, 0.5714]])
    """
    return torch.stack([logits[..., list(group)].logsumexp(-1) for group in ids], dim=-1)


def check_head_options(owner: str, head: str, num_classes: int | None, class_map: object) -> None:
    """Check the ``head`` choice of ``ImageClassifier`` and ``TextClassifier``: ``new`` or ``pretrained``
    (the model's own head). ``class_map`` maps that head's pretrained labels, so it needs
    ``head="pretrained"`` without a ``num_classes`` (which would give the architecture's head with new
    weights).

    Example::

        >>> check_head_options("ImageClassifier", "pretrained", None, {"cat": ["tabby, tabby cat"]})
        >>> check_head_options("ImageClassifier", "model", None, None)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: ImageClassifier: head='model' is not one of 'new' (a new trainable head) or ...
    """
    if head not in ("new", "pretrained"):
        raise ValueError(
            f"{owner}: head={head!r} is not one of 'new' (a new trainable head) or 'pretrained' (the "
            "pretrained model's own head and labels)"
        )
    if class_map is not None and (head != "pretrained" or num_classes is not None):
        raise ValueError(
            "class_map maps the pretrained head's own labels: give head='pretrained' and leave num_classes "
            f"out (got head={head!r}, num_classes={num_classes})"
        )


def order_mapped_classes(mapped: dict[str, list[int]], names: list[str]) -> list[list[int]]:
    """Each of the data's classes ``names``' output ids from ``mapped`` (a resolved ``class_map``), in the
    data's order; an error for a data class ``mapped`` lacks, or a mapped class the data does not have.

    Example::

        >>> order_mapped_classes({"cats": [281, 282], "dogs": [151]}, ["dogs", "cats"])
        [[151], [281, 282]]
    """
    unmapped = [n for n in names if n not in mapped]
    if unmapped:
        raise ValueError(
            f"class_map does not map the data's class(es) {unmapped}: an as-is run scores every class "
            f"of the data through its pretrained labels. Add {unmapped[0]!r}: [pretrained label names or "
            f"ids] to class_map (it maps {list(mapped)}), or leave that class out of the data."
        )
    extra = [n for n in mapped if n not in names]
    if extra:
        raise ValueError(
            f"class_map maps {extra}, which the data does not have (its classes: {names}); remove them, "
            "since their labels would take probability mass from the data's classes"
        )
    return [mapped[n] for n in names]
