"""ImageClassifier: any timm model as a backbone, with a new head or its own pretrained classifier."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from lightning_recipes import registry
from lightning_recipes._hub import hub_call
from lightning_recipes.handshake import InputSpec
from lightning_recipes.modules._classification import ClassificationModule
from lightning_recipes.modules._heads import ClassificationHead, check_head_options, unique_names

# The same choices, with the same meaning, as TextClassifier's ``head``.
HeadKind = Literal["new", "pretrained"]
# The views of test-time augmentation (modules/_tta.py, loaded where used).
TTAKind = Literal["flip", "five_crop", "ten_crop"]
_SYNSET = re.compile(r"n\d{8}")


def create_backbone(
    name: str, pretrained: bool | str = True, in_chans: int = 3, num_classes: int | None = 0, **kwargs: Any
) -> torch.nn.Module:
    """A timm model without its classifier (``num_classes=0``), so ``forward`` returns pooled features.

    Args:
        name: a timm model name (``resnet18``, ``convnext_tiny.fb_in22k``), ``local-dir:/folder``,
            ``hf-hub:org/name`` or a lightning_recipes zoo name (``resnet10t.digits04``) whose weights are
            built (``lightning-recipes zoo build NAME``; see :mod:`lightning_recipes.registry`).
        pretrained: ``True`` for the model's pretrained weights, ``False`` for random init, or the
            path of a local weights file (``.safetensors``/``.pth``) for this architecture.
        in_chans: input channels.
        num_classes: ``0`` (no classifier), ``None`` (the pretrained classifier, as the weights have it)
            or a number of classes (timm's classifier of the architecture, new unless the weights have
            that many).

    Example::

        >>> create_backbone("test_resnet", pretrained=False).num_features
        96
    """
    import timm

    overlay: dict[str, Any] = {}
    entry = registry.ZOO.get(name)
    if entry is not None and not isinstance(entry, registry.DigitsWeights):
        raise ValueError(
            f"zoo name {name!r} is a {entry.library} model, not a timm backbone: use it as a "
            "TextClassifier's or CausalLM's model_name_or_path; `lightning-recipes zoo list` shows the zoo"
        )
    if entry is not None:  # built weights only: `lightning-recipes zoo build NAME` builds them
        overlay = {**entry.overlay(), **({"file": str(registry.built(name))} if pretrained else {})}
        name = entry.arch
    elif isinstance(pretrained, str):
        if not Path(pretrained).is_file():
            raise FileNotFoundError(
                f"pretrained={pretrained!r} is not a file; pass True, False or a weights file"
            )
        overlay = {"file": str(Path(pretrained).resolve())}
    if not name.startswith(("local-dir:", "hf-hub:", "hf_hub:")) and not timm.is_model(name.split(".")[0]):
        close = difflib.get_close_matches(name, timm.list_models() + sorted(registry.ZOO), n=5, cutoff=0.6)
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
        num_classes=num_classes,
        in_chans=in_chans,
        pretrained_cfg_overlay=overlay or None,
        **kwargs,
    )


def pretrained_label_names(model: torch.nn.Module) -> tuple[list[str], dict[str, int]]:
    """``(label names, aliases)`` of a timm model's classifier outputs.

    The names in its ``pretrained_cfg`` (``label_names``: a zoo model's, a Hub model's), else
    ImageNet's for an ImageNet-1k/12k/21k/22k-sized classifier (timm's ``ImageNetInfo``: the WordNet
    lemmas, ``"tabby, tabby cat"``, made unique by the synset where two classes share them, with the
    synsets ``n02123045`` as aliases), else ``LABEL_<i>``.

    Example::

        >>> import timm
        >>> names, aliases = pretrained_label_names(timm.create_model("test_resnet"))
        >>> names[281], aliases["n02123045"], names[134]
        ('tabby, tabby cat', 281, 'crane (n02012849)')
    """
    from timm.data import ImageNetInfo, infer_imagenet_subset

    n = int(getattr(model, "num_classes", 0))
    names = list(getattr(model, "pretrained_cfg", {}).get("label_names") or [])
    synsets = names if names and all(_SYNSET.fullmatch(str(x)) for x in names) else None
    if names and synsets is None and len(names) == n:
        return [str(x) for x in names], {}
    subset = infer_imagenet_subset(model) if synsets is None else "imagenet-22k"
    if subset is None or (synsets is not None and len(synsets) != n):
        return [f"LABEL_{i}" for i in range(n)], {}
    info = ImageNetInfo(subset)
    synsets = synsets or list(info.label_names())
    lemmas = [info.label_name_to_description(s) for s in synsets]
    return unique_names(lemmas, synsets), {s: i for i, s in enumerate(synsets)}


class ImageClassifier(ClassificationModule):
    """Fine-tune any timm model with a new head, or use it as-is with its own classifier.

    With ``head="new"``, ``self.backbone`` is the timm model with its classifier removed (pooled
    features out) and ``self.head`` a :class:`~lightning_recipes.modules._heads.ClassificationHead`.
    With ``head="pretrained"``, ``self.head`` is the model's own classifier (timm's ``get_classifier()``,
    taken out of the model), with its pretrained weights: predictions name the pretrained labels
    (:func:`pretrained_label_names`: ImageNet's, a zoo model's) and ``class_map`` scores a user's
    labelled folder with them, with no training (see ``ClassificationModule``). Batches are
    ``(images, targets)`` (predict batches add ``{"path": [...]}``); ``predict_step`` returns class
    probabilities, class names and the paths (see ``ClassificationModule.predict_step``).
    ``data_config`` gives the input size and normalisation the backbone expects; :meth:`input_spec`
    hands it to the data module (see :func:`~lightning_recipes.connect`).

    Args:
        model_name_or_path: timm model name, ``local-dir:/folder``, ``hf-hub:org/name`` or zoo name (see
            :func:`create_backbone`); it becomes ``self.backbone``.
        pretrained: load pretrained weights (``True``), random init (``False``) or a local weights file.
        head: ``new`` (a ``ClassificationHead``) or ``pretrained`` (the model's own classifier; with
            ``num_classes`` left out, its pretrained outputs; a ``num_classes`` of another size gives the
            architecture's classifier with new weights).
        hidden_dim, dropout, activation: the new head (see ``ClassificationHead``).
        in_chans: input channels of the images.
        drop_path_rate: stochastic depth in the backbone, where timm supports it.
        tta: test-time augmentation at validate, test and predict (not training): ``flip`` (the images
            and their mirror images), ``five_crop`` (four corners and the centre, each
            ``tta_crop_fraction`` of the side, resized to the input size) or ``ten_crop`` (those and their
            mirror images); the views' probabilities are averaged, and the loss, metrics, curves and
            predictions use the average. ``None`` (default): one forward pass.
        tta_crop_fraction: the side of each ``five_crop``/``ten_crop`` crop, as a fraction of the image's.
        **kwargs: ``num_classes``, ``task``, ``label_names``, ``class_map``, the loss options (see
            ``ClassificationModule``) and ``lr``, ``backbone_lr``, ``layer_decay``, ``optimizer``...
            (see ``TransferModule``).

    Example::

        >>> import torch
        >>> model = ImageClassifier("test_resnet", num_classes=3, pretrained=False)
        >>> model(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 3])
        >>> [g["name"] for g in model.param_groups()]
        ['head', 'backbone']
        >>> asis = ImageClassifier("test_resnet", pretrained=False, head="pretrained",
        ...                        class_map={"cat": ["tabby cat", "tiger cat"], "dog": "n02099601"})
        >>> asis.label_names, asis(torch.randn(2, 3, 32, 32)).shape  # 1,000 ImageNet logits, as 2 classes
        (['cat', 'dog'], torch.Size([2, 1000]))
    """

    def __init__(
        self,
        model_name_or_path: str = "resnet18",
        pretrained: bool | str = True,
        head: HeadKind = "new",
        hidden_dim: int | None = None,
        dropout: float = 0.0,
        activation: str = "gelu",
        in_chans: int = 3,
        drop_path_rate: float | None = None,
        tta: TTAKind | None = None,
        tta_crop_fraction: float = 0.875,
        **kwargs: Any,
    ) -> None:
        num_classes = kwargs.get("num_classes")
        if tta is not None or tta_crop_fraction != 0.875:
            from lightning_recipes.modules._tta import check_tta

            check_tta(tta, tta_crop_fraction)
        check_head_options("ImageClassifier", head, num_classes, kwargs.get("class_map"))
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.head_kind = head
        self.tta, self.tta_crop_fraction = tta, tta_crop_fraction
        extra = {} if drop_path_rate is None else {"drop_path_rate": drop_path_rate}
        if head == "new":
            self.backbone = create_backbone(
                model_name_or_path, pretrained=pretrained, in_chans=in_chans, **extra
            )
            self.head = ClassificationHead(
                self.backbone.num_features, self.num_classes, hidden_dim, dropout, activation
            )
        else:
            self._take_model_head(model_name_or_path, pretrained, in_chans, num_classes, extra)
        self.setup_adapter(self.backbone, _base(model_name_or_path, pretrained))

    def _take_model_head(
        self, name: str, pretrained: bool | str, in_chans: int, num_classes: int | None, extra: dict
    ) -> None:
        """``head='pretrained'``: the timm model's own classifier becomes ``self.head``, the rest the
        backbone."""
        model = create_backbone(name, pretrained, in_chans, num_classes=num_classes, **extra)
        if not model.num_classes:
            raise ValueError(
                f"head='pretrained': model {name!r} has no classifier (its weights are features only: "
                "timm gives num_classes=0). Use head='new' with num_classes to train one, or pick weights "
                "with a classifier (e.g. an ImageNet-1k tag such as resnet50.a1_in1k)."
            )
        classifier = model.pretrained_cfg.get("classifier")
        if not isinstance(classifier, str):
            raise ValueError(
                f"head='pretrained': {name!r} has several classifiers {classifier} (e.g. a distilled "
                "model); "
                "only models with one classifier module are supported: use head='new'"
            )
        names = pretrained_label_names(model)
        # The classifier moves out of the model (its weights, pretrained, as they were): the rest is the
        # backbone, pooled features out, as with a new head.
        self.head = model.get_submodule(classifier)
        model.set_submodule(classifier, torch.nn.Identity())
        self.backbone = model
        if num_classes is None:
            self.use_model_outputs(*names)

    @property
    def data_config(self) -> dict[str, Any]:
        """timm's input size, interpolation, mean, std and crop for this backbone."""
        from timm.data import resolve_data_config

        return resolve_data_config({}, model=self.backbone)

    @property
    def example_input_array(self) -> Tensor | None:
        """One zero image of the backbone's input size: Lightning's model summary runs it for the FLOPs
        and the layers' shapes (otherwise a column of zeros)."""
        return self.summary_example(torch.zeros(1, *self.data_config["input_size"]))

    def input_spec(self) -> InputSpec:
        """The backbone's :attr:`data_config`, for the data module's transforms."""
        return InputSpec(data_config=self.data_config)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.backbone(images))

    def features_and_target(self, batch: Any) -> tuple[Tensor, Tensor]:
        """The backbone's pooled features of a batch's images, and its targets."""
        images, target = batch[0], batch[1]
        return self.backbone(images), target

    def logits_and_target(self, batch: Any) -> tuple[Tensor, Tensor]:
        if self.tta is not None and not self.training:
            return self.evaluation_logits(batch[0]), batch[1]
        features, target = self.features_and_target(batch)
        return self.head(features), target

    def evaluation_logits(self, inputs: Tensor) -> Tensor:
        """``self(images)``, or with ``tta`` the logits whose probabilities are the mean of its views'."""
        if self.tta is None:
            return self(inputs)
        from lightning_recipes.modules._tta import averaged_logits, tta_views

        views = tta_views(inputs, self.tta, self.tta_crop_fraction)
        return averaged_logits([self(view) for view in views], self.task)

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
        from lightning_recipes.modules._adapters import save_image_classifier

        return save_image_classifier(self, Path(folder), merge)


def _base(name: str, pretrained: bool | str) -> dict[str, Any] | None:
    """Where the pretrained backbone comes from, with local paths made absolute; ``None`` for random init."""
    if not pretrained:
        return None
    if name.startswith("local-dir:"):
        name = "local-dir:" + str(Path(name.removeprefix("local-dir:")).expanduser().resolve())
    if isinstance(pretrained, str):
        pretrained = str(Path(pretrained).expanduser().resolve())
    hparams = {"model_name_or_path": name, "pretrained": pretrained}
    return {"source": name, "revision": None, "hparams": hparams}
