"""ImageClassifier: any timm model as a backbone, a new head, multi-class or multi-label."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lightning_recipes import zoo
from lightning_recipes._hub import hub_call
from lightning_recipes.handshake import InputSpec
from lightning_recipes.modules._classification import ClassificationModule
from lightning_recipes.modules._heads import ClassificationHead


def create_backbone(
    name: str, pretrained: bool | str = True, in_chans: int = 3, **kwargs: Any
) -> torch.nn.Module:
    """A timm model without its classifier (``num_classes=0``), so ``forward`` returns pooled features.

    Args:
        name: a timm model name (``resnet18``, ``convnext_tiny.fb_in22k``), ``local-dir:/folder``,
            ``hf-hub:org/name`` or a lightning_recipes zoo name (``resnet10t.digits04``).
        pretrained: ``True`` for the model's pretrained weights, ``False`` for random init, or the
            path of a local weights file (``.safetensors``/``.pth``) for this architecture.
        in_chans: input channels.

    Example::

        >>> create_backbone("test_resnet", pretrained=False).num_features
        96
    """
    import timm

    overlay: dict[str, Any] = {}
    if name in zoo.ZOO:
        name, overlay = zoo.ZOO[name].resolve(pretrained=bool(pretrained))
    elif isinstance(pretrained, str):
        if not Path(pretrained).is_file():
            raise FileNotFoundError(
                f"pretrained={pretrained!r} is not a file; pass True, False or a weights file"
            )
        overlay = {"file": str(Path(pretrained).resolve()), "num_classes": 0}
    if not name.startswith(("local-dir:", "hf-hub:", "hf_hub:")) and not timm.is_model(name.split(".")[0]):
        close = difflib.get_close_matches(name, timm.list_models() + sorted(zoo.ZOO), n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"Unknown backbone {name!r}: not a timm model name.{hint} See `timm.list_models()`.")
    if name.startswith("local-dir:") and not Path(name.removeprefix("local-dir:")).is_dir():
        raise FileNotFoundError(
            f"backbone {name!r}: folder not found (expected config.json + model.safetensors)"
        )
    download = bool(pretrained) and not overlay and not name.startswith("local-dir:")
    return hub_call(
        name,
        "timm",
        "pretrained weights of backbone",
        timm.create_model,
        name,
        remote=download,
        pretrained=bool(pretrained) and (not overlay or "file" in overlay),
        num_classes=0,
        in_chans=in_chans,
        pretrained_cfg_overlay=overlay or None,
        **kwargs,
    )


class ImageClassifier(ClassificationModule):
    """Fine-tune any timm model with a new head.

    ``self.backbone`` is the timm model with its classifier removed (pooled features out);
    ``self.head`` is a :class:`~lightning_recipes.modules._heads.ClassificationHead`. Batches are
    ``(images, targets)`` (predict batches add ``{"path": [...]}``); ``predict_step`` returns class
    probabilities, class names and the paths (see ``ClassificationModule.predict_step``).
    ``data_config`` gives the input size and normalisation the backbone expects; :meth:`input_spec`
    hands it to the data module (see :func:`~lightning_recipes.connect`).

    Args:
        backbone: timm model name or ``local-dir:/folder`` (see :func:`create_backbone`).
        pretrained: load pretrained weights (``True``), random init (``False``) or a local weights file.
        hidden_dim, dropout, activation: the head (see ``ClassificationHead``).
        in_chans: input channels of the images.
        drop_path_rate: stochastic depth in the backbone, where timm supports it.
        **kwargs: ``num_classes``, ``task``, ``label_names``, the loss options (see
            ``ClassificationModule``) and ``lr``, ``backbone_lr``, ``optimizer``... (see ``TransferModule``).

    Example::

        >>> import torch
        >>> model = ImageClassifier("test_resnet", num_classes=3, pretrained=False)
        >>> model(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 3])
        >>> [g["name"] for g in model.param_groups()]
        ['head', 'backbone']
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        pretrained: bool | str = True,
        hidden_dim: int | None = None,
        dropout: float = 0.0,
        activation: str = "gelu",
        in_chans: int = 3,
        drop_path_rate: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters()
        extra = {} if drop_path_rate is None else {"drop_path_rate": drop_path_rate}
        self.backbone = create_backbone(backbone, pretrained=pretrained, in_chans=in_chans, **extra)
        self.head = ClassificationHead(
            self.backbone.num_features, self.num_classes, hidden_dim, dropout, activation
        )
        self.setup_adapter(self.backbone, _base(backbone, pretrained))

    @property
    def data_config(self) -> dict[str, Any]:
        """timm's input size, interpolation, mean, std and crop for this backbone."""
        from timm.data import resolve_data_config

        return resolve_data_config({}, model=self.backbone)

    def input_spec(self) -> InputSpec:
        """The backbone's :attr:`data_config`, for the data module's transforms."""
        return InputSpec(data_config=self.data_config)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.backbone(images))

    def logits_and_target(self, batch: Any) -> tuple[Tensor, Tensor]:
        images, target = batch
        return self(images), target

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if not self.stores_trainable_only():
            # The state dict holds every weight: reloading must not fetch (or re-train) pretrained ones.
            checkpoint.setdefault("hyper_parameters", {})["pretrained"] = False

    def save_pretrained(self, folder: str | Path, merge: bool = False) -> Path:
        """Export for timm: a ``timm.create_model("local-dir:<folder>", pretrained=True)`` folder holding
        the backbone and the head as timm's classifier (needs ``hidden_dim=None``), an adapter merged in.

        With an adapter and ``merge=False``: a peft adapter folder (``adapter_config.json`` +
        ``adapter_model.safetensors``, for ``PeftModel.from_pretrained(timm_backbone, folder)``) and the
        head as ``head.safetensors``.
        """
        from lightning_recipes.modules._adapter_export import save_image_classifier

        return save_image_classifier(self, Path(folder), merge)


def _base(backbone: str, pretrained: bool | str) -> dict[str, Any] | None:
    """Where the pretrained backbone comes from, with local paths made absolute; ``None`` for random init."""
    if not pretrained:
        return None
    if backbone.startswith("local-dir:"):
        backbone = "local-dir:" + str(Path(backbone.removeprefix("local-dir:")).expanduser().resolve())
    if isinstance(pretrained, str):
        pretrained = str(Path(pretrained).expanduser().resolve())
    return {"source": backbone, "revision": None, "hparams": {"backbone": backbone, "pretrained": pretrained}}
