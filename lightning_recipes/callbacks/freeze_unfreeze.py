"""FreezeUnfreeze: train a new head on a frozen backbone, then unfreeze it: at once, in milestones, gradually.

Why not Lightning's ``BackboneFinetuning`` as is: under DDP, parameters that are frozen when the
model is wrapped are left out of DDP's gradient reducer, so after they are unfrozen their gradients
are never all-reduced and the ranks silently diverge. This callback re-wraps the model in a new
``DistributedDataParallel`` each time the set of trainable parameters changes, keeps frozen
BatchNorm layers in eval mode through ``model.train()`` calls, extends the LR schedulers to the
parameter groups it adds, and replays its stage on resume before the optimizer state is loaded.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BaseFinetuning
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.optim import Optimizer
from typing_extensions import override

from lightning_recipes import _compat
from lightning_recipes.callbacks._feature_cache import FeatureCache
from lightning_recipes.callbacks._lr_groups import add_scaled_group, schedulers_of
from lightning_recipes.callbacks._strategy import whole_model_refusal
from lightning_recipes.modules._base import backbone_layer_groups, check_layer_decay, layer_lr_scales


def _keep_eval(module: nn.Module, args: Any) -> None:
    """Forward pre-hook of a frozen BatchNorm: whatever ``train()`` said, normalise with the running stats."""
    module.training = False


class FreezeUnfreeze(BaseFinetuning):
    """Train the head with the backbone frozen, then unfreeze the backbone, all at once or group by group.

    Works with every ``lightning_recipes`` module (``backbone``/``head``, named ``param_groups()``) and
    with any ``LightningModule`` that has a ``backbone`` and whose ``configure_optimizers`` leaves out
    parameters with ``requires_grad=False`` (parameters already in the optimizer are unfrozen but not
    added twice). The backbone is split into the module's layer groups
    (:func:`~lightning_recipes.modules._base.backbone_layer_groups`: the same groups that the module's
    ``layer_decay`` gives learning rates). With several optimizers, the unfrozen groups go to the first one.

    Schedule (epochs count from 0), in terms of how many layer groups, from the top, are trainable:

    * default: everything at ``unfreeze_at_epoch`` (``None``: never, i.e. linear probing);
    * ``gradual_every=N`` (ULMFiT): the top group at ``unfreeze_at_epoch``, one more every ``N`` epochs;
    * ``milestones=[e1, ..., ek]``: one more group at each milestone, all remaining groups at the last.

    Learning rates: a group unfrozen while the head's learning rate is ``lr`` gets
    ``lr * backbone_lr_ratio * layer_decay ** d``, ``d`` its depth below the top group (discriminative
    learning rates). ``layer_decay`` is the module's (``TransferModule(layer_decay=...)``, or a
    ``layer_decay`` attribute of any other module; unset means 1): the callback decides when each group
    trains, the module how its groups' learning rates relate. Every entry with ``lr`` in its name (``lr``,
    ``initial_lr``, ``max_lr``, ``min_lr``) is scaled the same way, and the LR schedulers' per-group
    lists (``base_lrs``, ``min_lrs``, ``lr_lambdas``...) are extended, so cosine, one-cycle and plateau
    schedules go on across the unfreeze with the backbone at a fixed ratio of the head. New optimizer
    groups are named ``"backbone"`` (all at once, no decay) or ``"backbone.<i>"`` (layer group ``i``,
    0 = bottom), as the module names them.

    BatchNorm: with ``train_bn=False`` (default, best for small data sets) BatchNorm layers of frozen
    groups stay in eval mode, their running statistics untouched, also after ``model.train()`` (a
    forward pre-hook re-applies eval mode). ``train_bn=True`` keeps them trainable (Lightning's default).

    Cost: frozen parameters have ``requires_grad=False``, so no gradient flows through the frozen part of
    the backbone and the optimizer holds no state for it.

    DDP: DDP only reduces gradients of parameters that were trainable when the model was wrapped. Each
    time the trainable set changes the callback wraps the LightningModule in a fresh
    ``DistributedDataParallel`` (which also broadcasts rank 0's weights), so frozen epochs pay no
    communication for the backbone and unfrozen parameters are all-reduced like any other. Single
    device and DDP strategies are supported; others (FSDP, DeepSpeed) raise ``NotImplementedError``
    saying what to use instead (docs/multi_gpu.md).

    Adapters: a module with an ``adapter`` (peft) is refused with a ``ValueError``: the adapter already
    freezes the pretrained weights, and unfreezing them would silently turn the run into full fine-tuning.

    Resume: the stage is in the checkpoint (``state_dict``); on resume the callback unfreezes the same
    groups and adds the same optimizer groups in ``on_fit_start``, before Lightning loads the optimizer
    and scheduler state into them, so LRs, optimizer moments and scheduler state continue exactly.

    Order with tuner callbacks: Lightning runs the hooks of tuner callbacks (``LearningRateFinder`` and
    so :class:`~lightning_recipes.callbacks.LRFinder`, ``BatchSizeFinder``) before all others. In
    ``setup`` this callback moves itself just ahead of them in ``trainer.callbacks``, so that at an
    unfreeze epoch the new groups exist before a sweep at the start of that epoch (``LRFinder``'s
    ``milestones``) tunes the learning rates: the sweep covers them and they keep their ratio to the
    head. No other callback's order changes, and without tuner callbacks nothing moves. (The unfreeze
    for epoch ``N`` cannot move to an earlier hook instead: the last ones before ``N``'s
    ``on_train_epoch_start`` are epoch ``N - 1``'s ``on_train_epoch_end``/``on_validation_end``, which
    come before that epoch's scheduler step and checkpoint, and before an early stop.)

    Feature cache (``cache_features=True``): while the backbone is frozen, its output for each example
    is computed once (at the start of the first frozen epoch) and the frozen epochs train the head on
    the cached features, validation included; the cache is dropped when the backbone starts training.
    Needs a module with ``features_and_target`` (``ImageClassifier``, ``TextClassifier`` with
    ``head="new"``), a backbone without active dropout and deterministic inputs, or ``cache_views``
    augmented views per example. See ``docs/feature_cache.md``.

    Args:
        unfreeze_at_epoch: epoch at which unfreezing starts; ``None`` keeps the backbone frozen.
        milestones: epochs at which one more layer group is unfrozen (top first); the last unfreezes all.
            Overrides ``unfreeze_at_epoch``.
        gradual_every: unfreeze one more layer group every this many epochs from ``unfreeze_at_epoch``.
        backbone_lr_ratio: backbone LR as a fraction of the head's LR at the time of unfreezing.
        train_bn: let BatchNorm layers of frozen groups train (params and running statistics).
        verbose: log each unfreeze with the new groups' learning rates.
        cache_features: cache the frozen backbone's features (see above).
        cache_views: with augmented training data, cache this many augmented views per example
            (``None``: augmented data is an error).
        cache_memory_mb: keep the cache in memory up to this size, else in memory-mapped files
            under ``cache_dir`` that later runs with the same backbone weights and data reuse.
        cache_dir: folder of those files; default ``$LIGHTNING_RECIPES_CACHE/features``.

    Example::

        >>> import torch
        >>> from lightning_recipes import ImageClassifier
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> model = ImageClassifier("test_resnet", num_classes=2, pretrained=False, lr=0.01)
        >>> x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 2, (8,))
        >>> data = DataLoader(TensorDataset(x, y), batch_size=4)
        >>> callback = FreezeUnfreeze(unfreeze_at_epoch=1, backbone_lr_ratio=0.1)
        >>> trainer = pl.Trainer(max_epochs=2, callbacks=[callback], logger=False, enable_checkpointing=False,
        ...                      enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
        >>> trainer.fit(model, data)
        >>> [(g["name"], g["lr"]) for g in trainer.optimizers[0].param_groups]
        [('head', 0.01), ('backbone', 0.001)]
    """

    def __init__(
        self,
        unfreeze_at_epoch: int | None = 1,
        milestones: list[int] | None = None,
        gradual_every: int | None = None,
        backbone_lr_ratio: float = 0.1,
        train_bn: bool = False,
        verbose: bool = False,
        cache_features: bool = False,
        cache_views: int | None = None,
        cache_memory_mb: float = 1024.0,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        if not cache_features and cache_views is not None:
            raise ValueError(f"cache_views={cache_views} needs cache_features=True")
        self.feature_cache = FeatureCache(cache_views, cache_memory_mb, cache_dir) if cache_features else None
        if unfreeze_at_epoch is not None and unfreeze_at_epoch < 0:
            raise ValueError(f"unfreeze_at_epoch must be >= 0 or None, got {unfreeze_at_epoch}")
        if milestones is not None:
            if (
                not milestones
                or any(m < 0 for m in milestones)
                or list(milestones) != sorted(set(milestones))
            ):
                raise ValueError(
                    f"milestones must be a non-empty, strictly increasing list of epochs >= 0, got "
                    f"{milestones}"
                )
            if gradual_every is not None:
                raise ValueError("Give milestones or gradual_every, not both")
        if gradual_every is not None and gradual_every < 1:
            raise ValueError(f"gradual_every must be >= 1, got {gradual_every}")
        if backbone_lr_ratio <= 0:
            raise ValueError(f"backbone_lr_ratio must be > 0, got {backbone_lr_ratio}")
        self.unfreeze_at_epoch = unfreeze_at_epoch
        self.milestones = list(milestones) if milestones is not None else None
        self.gradual_every = gradual_every
        self.backbone_lr_ratio = backbone_lr_ratio
        self.train_bn = train_bn
        self.verbose = verbose
        self.stage = 0  # number of layer groups, counted from the top, that are trainable
        self._restored_stage = 0
        self._groups: list[list[nn.Parameter]] = []
        self._layer_decay: float | None = None  # the module's, read in freeze_before_training
        self._bn_hooks: dict[nn.Module, Any] = {}

    # -- schedule --------------------------------------------------------------------------------
    @property
    def _per_layer(self) -> bool:
        return self._layer_decay is not None or self.milestones is not None or self.gradual_every is not None

    def target_stage(self, epoch: int, num_groups: int) -> int:
        """How many layer groups (from the top) should be trainable at ``epoch``.

        Example::

            >>> [FreezeUnfreeze(unfreeze_at_epoch=2).target_stage(e, 4) for e in range(4)]
            [0, 0, 4, 4]
            >>> [FreezeUnfreeze(unfreeze_at_epoch=1, gradual_every=2).target_stage(e, 3) for e in range(8)]
            [0, 1, 1, 2, 2, 3, 3, 3]
            >>> [FreezeUnfreeze(milestones=[1, 3]).target_stage(e, 5) for e in range(5)]
            [0, 1, 1, 5, 5]
        """
        if self.milestones is not None:
            passed = sum(m <= epoch for m in self.milestones)
            return num_groups if passed == len(self.milestones) else min(passed, num_groups)
        if self.unfreeze_at_epoch is None or epoch < self.unfreeze_at_epoch:
            return 0
        if self.gradual_every is None:
            return num_groups
        return min(num_groups, 1 + (epoch - self.unfreeze_at_epoch) // self.gradual_every)

    # -- BaseFinetuning API ----------------------------------------------------------------------
    @override
    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        if not isinstance(getattr(pl_module, "backbone", None), nn.Module):
            raise ValueError(
                f"FreezeUnfreeze needs a LightningModule with an nn.Module `backbone` attribute; "
                f"{type(pl_module).__name__} has none"
            )
        peft_model = getattr(pl_module, "peft_model", None)
        if peft_model is not None:
            kind = type(peft_model.peft_config["default"]).__name__
            raise ValueError(
                f"FreezeUnfreeze does not combine with an adapter ({kind}): the adapter already keeps the "
                "pretrained weights frozen and trains the adapter and the head from the first step, and "
                "unfreezing the backbone would train the pretrained weights under it. Drop FreezeUnfreeze "
                "for an adapter run, or drop the adapter to fine-tune in stages"
            )
        self._layer_decay = getattr(pl_module, "layer_decay", None)
        check_layer_decay(self._layer_decay)
        self._groups = backbone_layer_groups(pl_module)
        for p in pl_module.backbone.parameters():
            p.requires_grad = False
        if self.train_bn:
            for m in pl_module.backbone.modules():
                if _compat.is_batch_norm(m):
                    m.requires_grad_(True)
        self.stage = 0
        self._refresh_bn(pl_module)

    @override
    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        """Unfreeze up to the target stage of ``epoch``; called by :meth:`on_train_epoch_start`."""
        target = max(self.target_stage(epoch, len(self._groups)), self._restored_stage)
        if target > self.stage:
            self._advance(pl_module.trainer, pl_module, target)

    @classmethod
    def strategy_refusal(cls, strategy: type) -> str | None:
        """Why FreezeUnfreeze cannot run under the strategy class ``strategy``, or ``None`` if it can.

        Asked in ``setup`` and, before anything is built, by :mod:`lightning_recipes.preflight`.
        """
        return whole_model_refusal(
            "FreezeUnfreeze",
            strategy,
            "FSDP and DeepSpeed flatten and shard the parameters when they wrap the model, so "
            "parameters frozen then cannot join the optimizer later. Use --trainer.strategy=ddp (a frozen "
            "backbone holds no gradients or optimizer state, so the frozen phase fits where fine-tuning "
            "does not), or drop FreezeUnfreeze and fine-tune every layer under FSDP",
        )

    # -- hooks -----------------------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._restored_stage = 0  # a checkpoint's stage arrives later, through load_state_dict
        refusal = self.strategy_refusal(type(trainer.strategy))
        if refusal:
            raise NotImplementedError(refusal)
        # Unfreeze before an LR sweep of the same epoch (see "Order with tuner callbacks").
        _compat.run_before_tuner_callbacks(trainer, self)
        self.freeze_before_training(pl_module)
        if self.feature_cache is not None:
            self.feature_cache.setup(trainer, pl_module)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Resume: re-create the groups of the saved stage before Lightning loads the optimizer state.
        if self._restored_stage > self.stage:
            self._advance(trainer, pl_module, self._restored_stage)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.finetune_function(
            pl_module, trainer.current_epoch, trainer.optimizers[0] if trainer.optimizers else None
        )
        if self.feature_cache is not None:
            self.feature_cache.on_train_epoch_start(trainer, pl_module)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "num_groups": len(self._groups)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored_stage = int(state_dict.get("stage", 0))

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for handle in self._bn_hooks.values():
            handle.remove()
        self._bn_hooks.clear()
        if self.feature_cache is not None:
            self.feature_cache.release()

    # -- machinery -------------------------------------------------------------------------------
    def _advance(self, trainer: pl.Trainer, pl_module: pl.LightningModule, target: int) -> None:
        n = len(self._groups)
        target = min(target, n)
        newly = list(range(n - 1 - self.stage, n - 1 - target, -1))  # group indices, top first
        for i in newly:
            for p in self._groups[i]:
                p.requires_grad = True
        if self._per_layer:
            scales = layer_lr_scales(n, self._layer_decay)
            blocks = [(f"backbone.{i}", self._groups[i], self.backbone_lr_ratio * scales[i]) for i in newly]
        else:
            blocks = [("backbone", [p for i in newly for p in self._groups[i]], self.backbone_lr_ratio)]
        if trainer.optimizers:  # the first optimizer (the only one of lightning_recipes modules) gets them
            optimizer = trainer.optimizers[0]
            schedulers = schedulers_of(trainer, optimizer)
            for name, params, ratio in blocks:
                add_scaled_group(optimizer, schedulers, params, name, ratio)
        self.stage = target
        self._refresh_bn(pl_module)
        # DDP's reducer covers the parameters trainable when the model was wrapped: wrap it anew.
        _compat.rewrap_ddp(trainer.strategy)
        if self.verbose and trainer.optimizers:
            lrs = {g.get("name", i): g["lr"] for i, g in enumerate(trainer.optimizers[0].param_groups)}
            rank_zero_info(
                f"FreezeUnfreeze: epoch {trainer.current_epoch}, {target}/{n} groups trainable, lrs {lrs}"
            )

    def _refresh_bn(self, pl_module: pl.LightningModule) -> None:
        fully_unfrozen = self.stage >= len(self._groups)
        for m in pl_module.backbone.modules():
            if not _compat.is_batch_norm(m):
                continue
            params = list(m.parameters(recurse=False))
            frozen = not self.train_bn and (
                not any(p.requires_grad for p in params) if params else not fully_unfrozen
            )
            if frozen and m not in self._bn_hooks:
                m.eval()
                self._bn_hooks[m] = m.register_forward_pre_hook(_keep_eval)
            elif not frozen and m in self._bn_hooks:
                self._bn_hooks.pop(m).remove()
                m.train(pl_module.training)

    @staticmethod
    def trainable_parameters(modules: Iterable[nn.Module]) -> int:
        """Count trainable parameters of ``modules`` (a helper for logs and tests).

        Example::

            >>> FreezeUnfreeze.trainable_parameters([nn.Linear(2, 3)])
            9
        """
        return sum(p.numel() for m in modules for p in m.parameters() if p.requires_grad)
