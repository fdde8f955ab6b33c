"""The new trainable head put on top of a pretrained backbone."""

from __future__ import annotations

from torch import nn

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
