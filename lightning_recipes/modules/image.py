"""ImageClassifier: any timm model as a backbone, a new head, multi-class or multi-label."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lightning_recipes import zoo
from lightning_recipes._hub import PretrainedLoadError, is_network_error, offline_hint
from lightning_recipes.modules._base import OptimizerFactory, SchedulerFactory
from lightning_recipes.modules._classification import ClassificationModule, Task
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
    try:
        return timm.create_model(
            name,
            pretrained=bool(pretrained) and (not overlay or "file" in overlay),
            num_classes=0,
            in_chans=in_chans,
            pretrained_cfg_overlay=overlay or None,
            **kwargs,
        )
    except Exception as exc:
        if pretrained and is_network_error(exc):
            raise PretrainedLoadError(
                f"Could not fetch pretrained weights for backbone {name!r}: " + offline_hint(name)
            ) from exc
        raise


class ImageClassifier(ClassificationModule):
    """Fine-tune any timm model with a new head.

    ``self.backbone`` is the timm model with its classifier removed (pooled features out);
    ``self.head`` is a :class:`~lightning_recipes.modules._heads.ClassificationHead`. Batches are
    ``(images, targets)``; ``predict`` returns class probabilities. ``data_config`` gives the input
    size and normalisation the backbone expects, which :class:`~lightning_recipes.ImageDataModule` uses.

    Args:
        backbone: timm model name or ``local-dir:/folder`` (see :func:`create_backbone`).
        num_classes: classes (or labels, for ``task="multilabel"``).
        pretrained: load pretrained weights (``True``), random init (``False``) or a local weights file.
        task: ``multiclass``, ``multilabel`` or ``regression``.
        hidden_dim, dropout, activation: the head (see ``ClassificationHead``).
        label_smoothing, class_weights: loss options (see ``ClassificationModule``).
        in_chans: input channels of the images.
        drop_path_rate: stochastic depth in the backbone, where timm supports it.
        lr, backbone_lr, optimizer, lr_scheduler, scheduler_interval, scheduler_monitor, agc_clip_factor:
            see ``TransferModule``.

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
        num_classes: int = 10,
        pretrained: bool | str = True,
        task: Task = "multiclass",
        hidden_dim: int | None = None,
        dropout: float = 0.0,
        activation: str = "gelu",
        label_smoothing: float = 0.0,
        class_weights: list[float] | None = None,
        in_chans: int = 3,
        drop_path_rate: float | None = None,
        lr: float = 1e-3,
        backbone_lr: float | None = None,
        optimizer: OptimizerFactory | None = None,
        lr_scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "epoch",
        scheduler_monitor: str = "val/loss",
        agc_clip_factor: float | None = None,
    ) -> None:
        super().__init__(
            num_classes=num_classes,
            task=task,
            label_smoothing=label_smoothing,
            class_weights=class_weights,
            lr=lr,
            backbone_lr=backbone_lr,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            scheduler_interval=scheduler_interval,
            scheduler_monitor=scheduler_monitor,
            agc_clip_factor=agc_clip_factor,
        )
        self.save_hyperparameters()
        extra = {} if drop_path_rate is None else {"drop_path_rate": drop_path_rate}
        self.backbone = create_backbone(backbone, pretrained=pretrained, in_chans=in_chans, **extra)
        self.head = ClassificationHead(
            self.backbone.num_features, num_classes, hidden_dim, dropout, activation
        )

    @property
    def data_config(self) -> dict[str, Any]:
        """timm's input size, interpolation, mean, std and crop for this backbone."""
        from timm.data import resolve_data_config

        return resolve_data_config({}, model=self.backbone)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.backbone(images))

    def logits_and_target(self, batch: Any) -> tuple[Tensor, Tensor]:
        images, target = batch
        return self(images), target

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The state dict holds every weight: reloading must not fetch (or re-train) pretrained ones.
        hparams = checkpoint.get("hyper_parameters", {})
        if "pretrained" in hparams:
            hparams["pretrained"] = False
