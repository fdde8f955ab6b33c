"""Loss, metrics and train/val/test/predict steps shared by the image and text classifiers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection

from lightning_recipes.eval_samples import RealSamples
from lightning_recipes.handshake import META_KEY, CachedFeatures, DataSpec, MixedTargets, split_meta
from lightning_recipes.modules._base import TransferModule
from lightning_recipes.modules._heads import LabelRef, class_logits, order_mapped_classes, resolve_class_map
from lightning_recipes.modules._metrics import build_metrics

Task = Literal["multiclass", "multilabel", "regression"]
TASKS = ("multiclass", "multilabel", "regression")
#: Checkpoint key holding the class names in id order.
LABEL_NAMES_KEY = "lightning_recipes_label_names"
#: Checkpoint key holding the pretrained label names and each class's label ids (``class_map``).
OUTPUTS_KEY = "lightning_recipes_model_outputs"


class ClassificationModule(TransferModule):
    """A :class:`TransferModule` that maps a batch to logits and trains them for one task.

    Subclasses implement :meth:`logits_and_target` (and ``forward``); those whose logits are
    ``head(features)`` also implement :meth:`features_and_target`, which lets
    :class:`~lightning_recipes.callbacks.FreezeUnfreeze` cache the frozen backbone's features
    (``cache_features=True``) and step on :class:`~lightning_recipes.handshake.CachedFeatures` batches.
    The module logs ``{stage}/loss`` and the metrics of :func:`build_metrics` as ``{stage}/acc``,
    ``{stage}/f1``, ...;
    ``validation_step``/``test_step`` return ``{"preds", "target"}`` (probabilities and labels) for
    callbacks such as :class:`~lightning_recipes.callbacks.CurveLogger`; ``predict_step`` returns
    probabilities, label names and the inputs' identity for the
    :class:`~lightning_recipes.callbacks.PredictionWriter`.

    Class names (``label_names``) are given, or adopted from the data module by the handshake
    (:meth:`accept_data_spec`), which also checks that the data has ``num_classes`` classes; they are
    saved with the model, so predictions and curves use them.

    Used as-is (the pretrained model's own head, :meth:`use_model_outputs`), the outputs are the
    pretrained labels (:attr:`output_names`: ImageNet's, a zoo model's, a text model's ``id2label``),
    and predictions name them. ``class_map`` scores a labelled data set with them instead: each data
    class gets the probability mass of its pretrained labels, renormalised over all mapped labels
    (``logsumexp`` of their logits, :func:`~lightning_recipes.modules._heads.class_logits`); the
    loss, metrics, curves and predictions then speak the data's classes. The handshake checks that
    every class of the data is mapped.

    Args:
        num_classes: number of classes (labels for multi-label, targets for regression); the handshake
            checks it against the data. Default: ``len(label_names)``, else 2 for a new head, else
            the number of the pretrained model's labels with its own head.
        task: ``multiclass`` (softmax + cross-entropy), ``multilabel`` (sigmoid + BCE) or
            ``regression`` (MSE, or Huber with ``huber_delta``); the handshake checks it against the
            data's task.
        label_names: class names in id order; default: the data module's, through the handshake.
        class_map: with the pretrained model's own head: ``{data class: pretrained label or list of
            labels}``; a label is a name of :attr:`output_names`, one comma-separated part of one
            (``"tabby cat"``), an ImageNet synset (``n02123045``) or an output id (multiclass only).
        label_smoothing: cross-entropy label smoothing (multiclass); under
            :class:`~lightning_recipes.callbacks.Mixup`, the smoothing of its mixed targets.
        class_weights: per-class loss weights (multiclass) or positive weights (multilabel).
        huber_delta: use the Huber loss with this delta for regression instead of MSE.
        **kwargs: the :class:`~lightning_recipes.TransferModule` options (``lr``, ``backbone_lr``,
            ``optimizer``, ``lr_scheduler``, ``scheduler_interval``, ``scheduler_monitor``,
            ``agc_clip_factor``).
    """

    def __init__(
        self,
        num_classes: int | None = None,
        task: Task = "multiclass",
        label_names: list[str] | None = None,
        class_map: dict[str, LabelRef | list[LabelRef]] | None = None,
        label_smoothing: float = 0.0,
        class_weights: list[float] | None = None,
        huber_delta: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if num_classes is None:
            num_classes = 2 if label_names is None else len(label_names)
        if label_names is not None and len(label_names) != num_classes:
            raise ValueError(
                f"label_names has {len(label_names)} names {label_names} but num_classes={num_classes}"
            )
        if task not in TASKS:
            raise ValueError(f"task={task!r} is not one of {TASKS}")
        if num_classes < 1 or (task == "multiclass" and num_classes < 2):
            raise ValueError(f"num_classes={num_classes} is too small for task={task!r}")
        if class_weights is not None and len(class_weights) != num_classes:
            raise ValueError(f"class_weights has {len(class_weights)} entries but num_classes={num_classes}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if class_map is not None and (task != "multiclass" or label_names is not None):
            raise ValueError(
                "class_map works with task='multiclass' and without label_names (its keys are the class "
                f"names); got task={task!r}, label_names={label_names}"
            )
        self.task = task
        self._label_names = list(label_names) if label_names is not None else None
        self.class_map = dict(class_map) if class_map is not None else None
        #: The pretrained model's own label names, with its own head (:meth:`use_model_outputs`).
        self.output_names: list[str] | None = None
        self._output_aliases: dict[str, int] = {}
        self._class_ids: list[list[int]] | None = None  # each class's output ids, from class_map
        self.label_smoothing = label_smoothing
        self.huber_delta = huber_delta
        weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float)
        self.register_buffer("class_weights", weights, persistent=False)
        # Evaluation losses as sums and counts, reduced across devices at the epoch's end: the mean over
        # every real sample (Lightning's sync_dist would average the devices' means, unequal counts).
        # a NaN batch loss makes the epoch's loss NaN (NonFiniteGuard stops the run), not dropped: NaN is
        # "imputed" with NaN (torchmetrics 1.4 has no nan_strategy="disable")
        self.eval_losses = nn.ModuleDict(
            {split: MeanMetric(nan_strategy=float("nan")) for split in ("val", "test")}
        )
        self._eval_samples = RealSamples()
        self._set_num_classes(num_classes)

    def _set_num_classes(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.train_metrics = build_metrics(self.task, num_classes).clone(prefix="train/")
        self.val_metrics = build_metrics(self.task, num_classes).clone(prefix="val/")
        self.test_metrics = build_metrics(self.task, num_classes).clone(prefix="test/")

    def use_model_outputs(self, names: Sequence[str], aliases: Mapping[str, int] | None = None) -> None:
        """Score with the pretrained model's own head, whose outputs are the labels ``names``.

        Called by subclasses once the pretrained head is built. Without ``class_map`` the classes are
        the pretrained labels (``label_names``, if given, renames them); with it, the mapped data classes
        (each a set of output ids; ``aliases`` are other names of the outputs, e.g. ImageNet synsets).
        """
        self.output_names = list(names)
        self._output_aliases = dict(aliases or {})
        if self.class_map is None:
            given = self._label_names
            if given is not None and len(given) != len(names):
                raise ValueError(
                    f"label_names has {len(given)} names but the pretrained head has {len(names)} "
                    f"labels ({list(names)[:5]}...); leave label_names out to use the pretrained ones"
                )
            self._label_names = self._label_names or list(names)
            self._set_num_classes(len(names))
            return
        mapped = resolve_class_map(self.class_map, self.output_names, self._output_aliases)
        if len(mapped) < 2:
            raise ValueError(f"class_map maps one class {list(mapped)}; a classifier needs 2 or more")
        self._label_names, self._class_ids = list(mapped), list(mapped.values())
        self._set_num_classes(len(mapped))

    def class_logits(self, logits: Tensor) -> Tensor:
        """The logits of the classes scored: the outputs, or with ``class_map`` the ``logsumexp`` of each
        class's pretrained labels (softmax: the renormalised probability mass of the mapped labels)."""
        return logits if self._class_ids is None else class_logits(logits, self._class_ids)

    @property
    def class_ids(self) -> list[list[int]] | None:
        """With ``class_map``: each class's output ids of the pretrained head, in class order, else None."""
        return self._class_ids

    @property
    def label_names(self) -> list[str]:
        """Class names in id order (``LABEL_<i>`` where none are known)."""
        return self._label_names or [f"LABEL_{i}" for i in range(self.num_classes)]

    def accept_data_spec(self, spec: DataSpec) -> None:
        """Check that the data's task is the model's and that it has ``num_classes`` classes, and adopt its
        class names.

        With ``class_map``: check that each class of the data is mapped (and each mapped class is in
        the data), and order the classes as the data's ids. With the pretrained head and no
        ``class_map``: check that the data's classes are the pretrained labels.
        """
        super().accept_data_spec(spec)
        if spec.task is not None and spec.task != self.task:
            raise ValueError(
                f"The data module's task is {spec.task!r} but the model's is task={self.task!r}; they must "
                f"agree: set model task: {spec.task} (model.init_args.task in a recipe), or make the data "
                f"{self.task!r} (TextDataModule's task; ImageDataModule is 'multilabel' with "
                "label_separator, else 'multiclass')"
            )
        names = spec.label_names
        if names is None or self.task == "regression":
            return
        if self._class_ids is not None:
            assert self._label_names is not None
            mapped = dict(zip(self._label_names, self._class_ids, strict=True))
            self._label_names, self._class_ids = list(names), order_mapped_classes(mapped, list(names))
            return
        if self.output_names is not None and list(names) != self._label_names:
            known = self._label_names or []
            unknown = [n for n in names if n not in known]
            raise ValueError(
                f"The data's classes {list(names)[:20]} are not the pretrained head's labels (the model has "
                f"{len(known)}: {known[:5]}...; {unknown[:5]} are not among them). To score this "
                "data as-is, give model class_map: {data class: [pretrained label names or ids]} "
                "(model.init_args.class_map in a recipe); to train a head of the model's own architecture "
                f"instead, give num_classes: {len(names)}."
            )
        if len(names) != self.num_classes:
            raise ValueError(
                f"The data has {len(names)} classes {list(names)[:20]} but the model was built with "
                f"num_classes={self.num_classes}: set model num_classes: {len(names)} "
                "(model.init_args.num_classes in a recipe)"
            )
        if self._label_names is None:
            self._label_names = list(names)
        elif list(names) != self._label_names:
            raise ValueError(
                f"The data's class names {list(names)} differ from the model's {self._label_names}"
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Class names adopted from the data travel with the weights, and come back on load.
        super().on_save_checkpoint(checkpoint)
        checkpoint[LABEL_NAMES_KEY] = self._label_names
        if self.output_names is not None:
            checkpoint[OUTPUTS_KEY] = {"names": self.output_names, "class_ids": self._class_ids}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self._label_names = checkpoint.get(LABEL_NAMES_KEY, self._label_names)
        outputs = checkpoint.get(OUTPUTS_KEY)
        if outputs is not None:
            self.output_names, self._class_ids = outputs["names"], outputs["class_ids"]

    def logits_and_target(self, batch: Any) -> tuple[Tensor, Tensor]:
        """Return ``(logits, target)`` for a batch; implemented by subclasses."""
        raise NotImplementedError(f"{type(self).__name__} must implement logits_and_target(batch)")

    def features_and_target(self, batch: Any) -> tuple[Tensor, Tensor]:
        """Return ``(features, target)``: what the backbone gives the head for a batch, and its target.

        ``self.head(features)`` must equal the logits of :meth:`logits_and_target`. Implemented by
        subclasses whose head takes pooled backbone features; the feature cache needs it.
        """
        raise NotImplementedError(
            f"{type(self).__name__} does not implement features_and_target(batch): its backbone features "
            "cannot be cached"
        )

    def feature_settings(self) -> dict[str, Any]:
        """Settings besides the backbone's weights that decide :meth:`features_and_target` (e.g. the
        pooling), part of the feature cache's key."""
        return {}

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.task == "multiclass":
            return F.cross_entropy(
                logits, target, weight=self.class_weights, label_smoothing=self.label_smoothing
            )
        if self.task == "multilabel":
            return F.binary_cross_entropy_with_logits(logits, target.float(), pos_weight=self.class_weights)
        logits = logits.squeeze(-1) if target.dim() == 1 else logits
        if self.huber_delta is not None:
            return F.huber_loss(logits, target.float(), delta=self.huber_delta)
        return F.mse_loss(logits, target.float())

    def soft_target_loss(self, logits: Tensor, probabilities: Tensor) -> Tensor:
        """The training loss against class probabilities (the mixed targets of
        :class:`~lightning_recipes.callbacks.Mixup`, ``label_smoothing`` already in them): cross-entropy,
        each class's term scaled by ``class_weights``. Multi-class only."""
        if self.task != "multiclass" or probabilities.shape != logits.shape:
            raise ValueError(
                f"soft targets of shape {tuple(probabilities.shape)} for {self.task} logits of shape "
                f"{tuple(logits.shape)}: they must be [batch, num_classes={self.num_classes}], multiclass"
            )
        return F.cross_entropy(logits, probabilities.to(logits.dtype), weight=self.class_weights)

    def probabilities(self, logits: Tensor) -> Tensor:
        """Softmax (multiclass), sigmoid (multilabel) or the raw outputs (regression)."""
        if self.task == "multiclass":
            return logits.softmax(-1)
        if self.task == "multilabel":
            return logits.sigmoid()
        return logits.squeeze(-1) if logits.shape[-1] == 1 else logits

    def _step(
        self, batch: Any, stage: str, metrics: MetricCollection, dataloader_idx: int = 0
    ) -> dict[str, Any]:
        if isinstance(batch, CachedFeatures):
            if any(p.requires_grad for p in self.backbone.parameters()):
                raise RuntimeError(
                    "A batch of cached backbone features reached a module whose backbone trains; the "
                    "feature cache is only valid while the backbone is frozen"
                )
            logits, target = self.head(batch.features), batch.target
        else:
            logits, target = self.logits_and_target(batch)
        logits = self.class_logits(logits)
        if isinstance(target, MixedTargets):  # Mixup's batch: the loss on its mix, metrics on the real labels
            loss, target = self.soft_target_loss(logits, target.probabilities), target.labels
        else:
            loss = self.loss(logits, target)
        loss = self.training_loss(loss, logits) if stage == "train" else loss
        preds = self.probabilities(logits.detach().float())
        n = target.shape[0]
        # Under DDP, Lightning's evaluation sampler repeats samples at the end of a rank's share so the
        # ranks are even: they are left out of the loss and metrics, which then equal one process's.
        keep = n if stage == "train" else self._eval_samples.keep(n, dataloader_idx)
        if keep:
            metrics.update(preds[:keep], (target.int() if self.task == "multilabel" else target)[:keep])
        if stage == "train":
            self.log("train/loss", loss, prog_bar=True, batch_size=n)
        else:
            if keep:
                logged = loss if keep == n else self.loss(logits[:keep], target[:keep])
                self.eval_losses[stage].update(logged.detach().float(), weight=keep)
            self.log(f"{stage}/loss", self.eval_losses[stage], prog_bar=True, on_step=False, on_epoch=True)
        self.log_dict(metrics, prog_bar=stage != "train", batch_size=keep, on_epoch=True, on_step=False)
        return {"loss": loss, "preds": preds, "target": target}

    def on_validation_epoch_start(self) -> None:
        self._eval_samples.start(self.trainer, "validate")

    def on_test_epoch_start(self) -> None:
        self._eval_samples.start(self.trainer, "test")

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "train", self.train_metrics)["loss"]

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        return self._step(batch, "val", self.val_metrics, dataloader_idx)

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        return self._step(batch, "test", self.test_metrics, dataloader_idx)

    def evaluation_logits(self, inputs: Any) -> Tensor:
        """The logits of a batch's inputs at validate, test and predict: ``self(inputs)`` here;
        ``ImageClassifier`` with ``tta`` gives those of its averaged test-time augmentations."""
        return self(inputs)

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

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """What :class:`~lightning_recipes.callbacks.PredictionWriter` writes, for one batch:
        ``{"probabilities", "labels", "label_names", "task", "meta"}``: probabilities (the values for
        regression), each row's label (class name; names above 0.5 for multi-label; the value), the class
        names in id order, the task, the batch's input columns (``split_meta``), and ``"target"`` where
        every row carries its ground truth (:meth:`known_target`: the metrics).
        """
        inputs, meta = split_meta(batch)
        probs = self.probabilities(self.class_logits(self.evaluation_logits(inputs).float()))
        return self.prediction_output(probs, meta, self.known_target(batch, probs))

    def prediction_output(
        self, probs: Tensor, meta: Mapping[str, Any], target: Tensor | None = None
    ) -> dict[str, Any]:
        """The rows the :class:`~lightning_recipes.callbacks.PredictionWriter` writes, for one batch of
        :meth:`probabilities`, its input columns ``meta`` and its ground truth (``None``: unknown): what
        :meth:`predict_step` returns, and what the writer makes of ``test_step``'s ``preds`` and
        ``target`` for the test split's table."""
        out = {
            "probabilities": probs,
            "labels": [d.get("label", d.get("value")) for d in self.decode(probs)],
            "label_names": None if self.task == "regression" else self.label_names,
            "task": self.task,
            META_KEY: dict(meta),
        }
        return out if target is None else {**out, "target": target}

    def known_target(self, batch: Any, probs: Tensor) -> Tensor | None:
        """The targets of a predict batch (``labels`` of a dict batch, the second item of a tuple batch),
        or ``None`` unless every row has one: a class id >= 0 (multi-class; unlabelled images carry -1), a
        0/1 row per class (multi-label), a finite value (regression)."""
        target = batch.get("labels") if isinstance(batch, Mapping) else None
        if isinstance(batch, (list, tuple)) and len(batch) > 1:
            target = batch[1]
        if not isinstance(target, Tensor) or target.ndim == 0 or target.shape[0] != probs.shape[0]:
            return None
        if self.task == "multiclass":
            known = target.ndim == 1 and not target.is_floating_point() and bool((target >= 0).all())
        elif self.task == "multilabel":
            known = target.shape == probs.shape and bool(((target == 0) | (target == 1)).all())
        else:
            known = target.shape == probs.shape and bool(target.isfinite().all())
        return target if known else None
