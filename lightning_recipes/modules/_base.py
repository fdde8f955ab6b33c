"""The freezing contract of every module: ``self.backbone``, ``self.head`` and their parameter groups."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, SingleDeviceStrategy
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from lightning_recipes import _compat
from lightning_recipes.handshake import DataSpec, InputSpec, TeacherLogits
from lightning_recipes.modules import _adapters
from lightning_recipes.modules._distillation import distillation_loss
from lightning_recipes.schedulers import WarmupDecay

if TYPE_CHECKING:
    from peft import PeftConfig, PeftModel

# The types LightningCLI knows as OptimizerCallable / LRSchedulerCallable: jsonargparse turns a
# ``class_path``/``init_args`` entry in a recipe into such a callable.
OptimizerFactory = Callable[[Iterable[Any]], Optimizer]
SchedulerFactory = Callable[[Optimizer], LRScheduler | ReduceLROnPlateau]
CheckpointWeights = Literal["all", "trainable"]


def default_optimizer(params: Iterable[Any]) -> Optimizer:
    """AdamW with weight decay 0.01; each parameter group brings its own learning rate."""
    return torch.optim.AdamW(params, weight_decay=0.01)


def backbone_layer_groups(module: nn.Module) -> list[list[nn.Parameter]]:
    """The parameters of ``module.backbone`` in layer groups, bottom (input side) to top.

    The one grouping of the backbone: layer-wise LR decay (``TransferModule(layer_decay=...)``) gives
    each group its own learning rate, and :class:`~lightning_recipes.callbacks.FreezeUnfreeze` unfreezes
    the groups top first. ``module.layer_groups()`` (its blocks as ``nn.Module`` s, bottom to top: the
    text and LM modules' embeddings, then each transformer block) when the module has it; else timm's
    ``group_matcher(coarse=True)`` of the backbone (stem, stages, ...: the timm CNNs); else the
    backbone's children that hold parameters. A parameter belongs to the first group that claims it;
    backbone parameters no group claims (a pooler, a final norm) join the top group.

    Example::

        >>> m = nn.Module()
        >>> m.backbone = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 3))
        >>> [len(g) for g in backbone_layer_groups(m)]
        [2, 2]
    """
    backbone: nn.Module = module.backbone
    groups: list[list[nn.Parameter]]
    if callable(getattr(module, "layer_groups", None)):
        groups = [list(block.parameters()) for block in module.layer_groups()]
    elif callable(getattr(backbone, "group_matcher", None)):
        named = dict(backbone.named_parameters())
        grouped = _compat.timm_group_parameters(backbone)
        groups = [[named[name] for name in names] for _, names in sorted(grouped.items())]
    else:
        groups = [list(child.parameters()) for child in backbone.children()]
    seen: set[int] = set()
    unique = []
    for group in groups:
        kept = [p for p in group if id(p) not in seen]
        seen.update(id(p) for p in kept)
        if kept:
            unique.append(kept)
    rest = [p for p in backbone.parameters() if id(p) not in seen]
    if not unique:
        return [rest] if rest else []
    unique[-1] = unique[-1] + rest
    return unique


def layer_lr_scales(count: int, layer_decay: float | None) -> list[float]:
    """Learning-rate factor of each of ``count`` layer groups (bottom to top) relative to the top group:
    ``layer_decay ** depth``, ``depth`` the number of groups above it (``None``: all ``1``).

    Example::

        >>> layer_lr_scales(3, 0.5), layer_lr_scales(2, None)
        ([0.25, 0.5, 1.0], [1.0, 1.0])
    """
    decay = 1.0 if layer_decay is None else layer_decay
    return [decay ** (count - 1 - i) for i in range(count)]


def check_layer_decay(layer_decay: float | None) -> None:
    """Refuse a ``layer_decay`` outside ``(0, 1]`` (``None``, no decay, is fine)."""
    if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
        raise ValueError(
            f"layer_decay must be in (0, 1] (each layer group's LR is layer_decay times the one above; "
            f"e.g. 0.9), or None for one backbone group; got {layer_decay}"
        )


class TransferModule(L.LightningModule):
    """Base of all lightning_recipes modules: a ``backbone``, a new ``head`` and one parameter group each.

    Subclasses build ``self.backbone`` and ``self.head``. The optimizer sees two named groups,
    ``"head"`` at ``lr`` and ``"backbone"`` at ``backbone_lr`` (``lr`` when unset); parameters with
    ``requires_grad=False`` are left out, so a frozen backbone costs no optimizer state. With
    ``layer_decay`` the backbone is one group per layer group of :func:`backbone_layer_groups` instead.

    The handshake with the data module (:mod:`lightning_recipes.handshake`) is :meth:`input_spec`
    (nothing here) and :meth:`accept_data_spec` (nothing to check here); subclasses extend both.

    Subclasses take their own arguments and pass ``**kwargs`` on to this constructor, so these options
    are declared once; jsonargparse follows the ``**kwargs``, so recipes and ``--help`` still see them.

    Args:
        lr: learning rate of the head (and of the backbone unless ``backbone_lr`` is set).
        backbone_lr: learning rate of the backbone; a fine-tuning default is ``lr / 10``.
        layer_decay: layer-wise learning-rate decay (timm's ``layer_decay``, e.g. ``0.9``): the backbone's
            layer groups (:func:`backbone_layer_groups`) become groups ``"backbone.<i>"`` (0 = bottom), the
            top one at ``backbone_lr`` and each below at ``layer_decay`` times the one above. ``None``: one
            ``"backbone"`` group. :class:`~lightning_recipes.callbacks.FreezeUnfreeze` unfreezes the same
            groups at the same ratios to one another.
        optimizer: a callable taking parameter groups, e.g. ``torch.optim.SGD`` or, in YAML,
            ``{class_path: torch.optim.SGD, init_args: {momentum: 0.9}}``. Default: AdamW, weight decay 0.01.
        lr_scheduler: a callable taking the optimizer, e.g. a ``CosineAnnealingLR`` with ``T_max`` set.
        scheduler_interval: ``"epoch"`` or ``"step"``: when Lightning steps the scheduler.
        scheduler_monitor: metric for ``ReduceLROnPlateau`` (default ``"val/loss"``).
        agc_clip_factor: adaptive gradient clipping (timm's ``adaptive_clip_grad``, NFNet paper) of the
            backbone's gradients at this unit-wise ratio (e.g. ``0.01``); the head is left out, as in the
            paper. Runs after AMP unscaling and before the Trainer's own ``gradient_clip_val`` clipping.
        adapter: a ``peft`` adapter config (``peft.LoraConfig(r=8)``; in YAML ``{class_path: peft.LoraConfig,
            init_args: {r: 8}}``, which the CLI hands over as that dict, so the config gets only the values
            given) injected into the pretrained model: its weights freeze, the adapter's and the head's
            train. Default ``target_modules`` per family (see ``docs/adapters.md``).
        checkpoint_weights: ``"all"`` stores every weight in checkpoints; ``"trainable"`` only the trainable
            ones (and buffers) plus the pretrained source and a fingerprint of the frozen weights, which
            ``load_from_checkpoint`` rebuilds and checks. ``None``: ``"trainable"`` for an adapter on
            pretrained weights, else ``"all"``. Also for frozen-backbone runs (linear probing).
    """

    backbone: nn.Module
    head: nn.Module

    def __init__(
        self,
        lr: float = 1e-3,
        backbone_lr: float | None = None,
        layer_decay: float | None = None,
        optimizer: OptimizerFactory | None = None,
        lr_scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "epoch",
        scheduler_monitor: str = "val/loss",
        agc_clip_factor: float | None = None,
        adapter: dict[str, Any] | PeftConfig | None = None,
        checkpoint_weights: CheckpointWeights | None = None,
    ) -> None:
        super().__init__()
        #: What the data module said about the data (:func:`~lightning_recipes.connect`); None before.
        self.accepted_data_spec: DataSpec | None = None
        if checkpoint_weights not in (None, "all", "trainable"):
            raise ValueError(
                f"checkpoint_weights must be 'all', 'trainable' or None, got {checkpoint_weights!r}"
            )
        if lr <= 0 or (backbone_lr is not None and backbone_lr < 0):
            raise ValueError(f"lr must be > 0 and backbone_lr >= 0, got lr={lr}, backbone_lr={backbone_lr}")
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
        check_layer_decay(layer_decay)
        self.lr = lr
        self.backbone_lr = backbone_lr
        self.layer_decay = layer_decay
        self.optimizer_factory = optimizer or default_optimizer
        self.scheduler_factory = lr_scheduler
        self.scheduler_interval = scheduler_interval
        self.scheduler_monitor = scheduler_monitor
        if agc_clip_factor is not None and agc_clip_factor <= 0:
            raise ValueError(f"agc_clip_factor must be > 0 (or None to disable), got {agc_clip_factor}")
        self.agc_clip_factor = agc_clip_factor
        self.adapter = adapter
        self.checkpoint_weights = checkpoint_weights
        self.peft_model: PeftModel | None = None
        self._base: dict[str, Any] | None = None
        #: The training epoch of the checkpoint the weights were loaded from (Lightning's
        #: ``checkpoint["epoch"]``: 1 for ``best-01.ckpt``), set by ``trainer.test(ckpt_path=...)`` and
        #: ``load_from_checkpoint``, cleared when training starts; evaluation reports are named by it.
        self.checkpoint_epoch: int | None = None
        #: The current training batch's teacher logits, set and cleared by the ``Distillation`` callback.
        self.teacher_logits: TeacherLogits | None = None

    def setup_adapter(self, model: nn.Module, base: Mapping[str, Any] | None) -> None:
        """Inject ``self.adapter`` (if any) into ``model`` and note the pretrained ``base``; subclasses
        call it once their parts exist.

        Args:
            model: the pretrained model the adapter goes into (the backbone, or the whole causal LM).
            base: ``{"source": name, "revision": rev, "hparams": {...}}``, what rebuilds the frozen weights
                (``hparams`` replace the checkpoint's hyper-parameters); ``None`` for random weights.
        """
        if self.checkpoint_weights == "trainable" and base is None:
            raise ValueError(
                "checkpoint_weights='trainable' leaves the frozen weights out of checkpoints, so they must "
                "come from pretrained weights (pretrained=True / a pretrained model_name_or_path), not "
                "random init; use checkpoint_weights='all'"
            )
        self._base = dict(base) if base is not None else None
        if self.adapter is not None:
            from lightning_recipes.modules._adapters import wrap

            source = None if base is None else str(base["source"])
            # Unregistered: its weights are the model's, registered where the model is.
            object.__setattr__(self, "peft_model", wrap(model, self.adapter, source))

    def stores_trainable_only(self) -> bool:
        """Whether checkpoints hold only the trainable weights (see ``checkpoint_weights``)."""
        if self.checkpoint_weights is not None:
            return self.checkpoint_weights == "trainable"
        return self.peft_model is not None and self._base is not None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        hparams = checkpoint.get("hyper_parameters")
        if self.peft_model is not None and hparams is not None:
            from lightning_recipes.modules._adapters import config_to_dict

            hparams["adapter"] = config_to_dict(self.peft_model.peft_config["default"])
        if self.stores_trainable_only() and self._base is not None:
            if hparams is not None:
                hparams.update(self._base.get("hparams", {}))
            source = {"source": self._base["source"], "revision": self._base.get("revision")}
            _adapters.keep_trainable(self, checkpoint, source)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        _adapters.restore_frozen(self, checkpoint)
        self.checkpoint_epoch = checkpoint.get("epoch")

    def training_loss(self, label_loss: Tensor, logits: Tensor, mask: Tensor | None = None) -> Tensor:
        """The loss a training step optimises, from its loss on the labels and the student's ``logits``.

        ``label_loss`` as it is, or while :class:`~lightning_recipes.callbacks.Distillation` teaches this
        module (:attr:`teacher_logits` set for the batch), its mix with the teacher's softened logits
        (:func:`~lightning_recipes.modules._distillation.distillation_loss`); ``mask`` marks the rows of
        ``logits`` that count (a causal LM's predicted positions). The one hook of the training loss.
        """
        teacher = self.teacher_logits
        if teacher is None:
            return label_loss
        return distillation_loss(label_loss, logits, teacher.logits, teacher.temperature, teacher.alpha, mask)

    def on_train_start(self) -> None:
        self.checkpoint_epoch = None  # the weights move on from the checkpoint's

    def input_spec(self) -> InputSpec:
        """What the data module must know about this model's inputs (see ``lightning_recipes.connect``)."""
        return InputSpec()

    def summary_example(self, example: Any) -> Any:
        """``example`` as ``example_input_array`` (Lightning's model summary runs it for the FLOPs and the
        layers' shapes), or ``None`` under a sharding strategy (FSDP, DeepSpeed): there, a forward pass
        outside the training loop would run sharded layers without their root."""
        try:
            strategy = self.trainer.strategy
        except RuntimeError:  # not attached to a Trainer
            return example
        return example if isinstance(strategy, (SingleDeviceStrategy, DDPStrategy)) else None

    def accept_data_spec(self, spec: DataSpec) -> None:
        """Check and adopt what the data module says about the data (kept as ``accepted_data_spec``, for
        the callbacks that must agree with it); subclasses extend it."""
        self.accepted_data_spec = spec

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """``nn.Module.load_state_dict``; weights whose shapes do not fit this model are one short error
        (how many, the first few with both shapes, and the likely cause) instead of a line per tensor."""
        own = self.state_dict()
        wrong = [
            (k, tuple(v.shape), tuple(own[k].shape))
            for k, v in state_dict.items()
            if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)
        ]
        if wrong:
            shown = "; ".join(f"{k}: checkpoint {a} vs model {b}" for k, a, b in wrong[:3])
            raise ValueError(
                f"The checkpoint does not fit this {type(self).__name__}: {len(wrong)} weight(s) have other "
                f"shapes ({shown}{'; ...' if len(wrong) > 3 else ''}). It was saved from another backbone or "
                "num_classes: build the model with the checkpoint's settings (load_from_checkpoint(path) "
                "without overrides does that)."
            )
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def head_parameters(self) -> list[nn.Parameter]:
        """The parameters of the head group: the head's, less any the backbone holds (a tied output layer)."""
        backbone = {id(p) for p in self.backbone.parameters()}
        return [p for p in self.head.parameters() if id(p) not in backbone]

    def param_groups(self) -> list[dict[str, Any]]:
        """Named parameter groups (head first) holding only trainable parameters; empty groups are dropped.

        ``"head"`` at ``lr``, then ``"backbone"`` at ``backbone_lr``, or with ``layer_decay`` one group per
        layer group, ``"backbone.0"`` (bottom) ... ``"backbone.<n-1>"`` (top, at ``backbone_lr``).
        """
        backbone_lr = self.lr if self.backbone_lr is None else self.backbone_lr
        groups = [{"name": "head", "params": self.head_parameters(), "lr": self.lr}]
        if self.layer_decay is None:
            groups.append({"name": "backbone", "params": list(self.backbone.parameters()), "lr": backbone_lr})
        else:
            blocks = backbone_layer_groups(self)
            scales = layer_lr_scales(len(blocks), self.layer_decay)
            groups += [
                {"name": f"backbone.{i}", "params": params, "lr": backbone_lr * scale}
                for i, (params, scale) in enumerate(zip(blocks, scales, strict=True))
            ]
        for group in groups:
            group["params"] = [p for p in group["params"] if p.requires_grad]
        return [g for g in groups if g["params"]]

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.param_groups())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        if isinstance(scheduler, WarmupDecay) and scheduler.total_steps is None:
            scheduler.set_total_steps(self.trainer.estimated_stepping_batches)
        config = {"scheduler": scheduler, "interval": self.scheduler_interval}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = self.scheduler_monitor
        return {"optimizer": optimizer, "lr_scheduler": config}

    def configure_gradient_clipping(
        self,
        optimizer: Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """AGC of the backbone (``agc_clip_factor``), then the Trainer's ``gradient_clip_val`` clipping.

        A ``fused=True`` optimizer under ``bf16-mixed``/``16-mixed`` is clipped too (Lightning refuses it):
        its fp16 gradients are unscaled first, so AGC and clipping see the true gradients.
        """
        precision = self.trainer.precision_plugin
        clipping = bool(gradient_clip_val) or self.agc_clip_factor is not None
        fused_amp = clipping and _compat.unscale_fused_for_clipping(precision, optimizer)
        if self.agc_clip_factor is not None:
            from timm.utils import adaptive_clip_grad

            backbone = [p for p in self.backbone.parameters() if p.grad is not None]
            if backbone:
                adaptive_clip_grad(backbone, clip_factor=self.agc_clip_factor)
        strategy = self.trainer.strategy
        if (
            isinstance(strategy, FSDPStrategy)
            and gradient_clip_val
            and gradient_clip_algorithm in (None, "norm")
        ):
            # Lightning's norm clipping refuses FSDP; FSDP's own takes the norm over every rank's shard
            strategy.model.clip_grad_norm_(gradient_clip_val)
        elif fused_amp and gradient_clip_val:
            _compat.clip_unchecked(precision, optimizer, gradient_clip_val, gradient_clip_algorithm)
        else:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
