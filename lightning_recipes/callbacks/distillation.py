"""Knowledge distillation: a frozen teacher's softened logits teach the module being trained (the student).

The training loss becomes ``alpha * CE(labels) + (1 - alpha) * T^2 * KL(softmax(teacher / T) ||
softmax(student / T))`` (Hinton et al. 2015). The callback loads and runs the teacher and hands its
logits of each training batch to the module (:class:`~lightning_recipes.handshake.TeacherLogits`); the
module's one loss hook, ``TransferModule.training_loss``, mixes them in. Validation and test keep the
label loss, so ``val/acc`` and ``val/ppl`` compare with any other run.
"""

from __future__ import annotations

import hashlib
import inspect
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from typing_extensions import override

from lightning_recipes.callbacks._feature_cache import loads_randomly
from lightning_recipes.handshake import CachedFeatures, DataSpec, TeacherLogits
from lightning_recipes.modules._distillation import check_distillation

__all__ = ["Distillation"]

_FAMILIES = ("ImageClassifier", "TextClassifier", "CausalLM")


def family(module: Any) -> str:
    """The module's family: the first of ImageClassifier, TextClassifier, CausalLM among its classes (a
    subclass of one belongs to it), else its class name."""
    names = [cls.__name__ for cls in type(module).__mro__]
    return next((name for name in names if name in _FAMILIES), type(module).__name__)


def row_keys(batch: Any) -> list[bytes]:
    """One key per example of a batch, from its inputs alone (labels and identity columns left out;
    padding dropped by the attention mask, so an example's key does not depend on its batch).

    Example::

        >>> padded = {"input_ids": torch.tensor([[5, 6, 0]]), "attention_mask": torch.tensor([[1, 1, 0]])}
        >>> row_keys(padded) == row_keys({"input_ids": torch.tensor([[5, 6]])})
        True
    """
    if isinstance(batch, dict):
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "meta") and isinstance(v, Tensor)}
    else:
        inputs = {"x": batch[0] if isinstance(batch, (list, tuple)) else batch}
    mask = inputs.pop("attention_mask", None)  # what it says is in the unpadded rows' lengths
    keys = []
    for i in range(next(iter(inputs.values())).shape[0]):
        digest = hashlib.blake2b(digest_size=16)
        for name in sorted(inputs):
            row = inputs[name][i]
            if mask is not None and row.shape == mask[i].shape:
                row = row[mask[i].bool()]
            digest.update(name.encode() + row.detach().cpu().contiguous().numpy().tobytes())
        keys.append(digest.digest())
    return keys


class Distillation(Callback):
    """Train the module (the student) on its labels and on a frozen teacher's temperature-softened logits.

    Args:
        teacher: the teacher, of the student's family and label space (same class names, or the same
            tokenizer for a causal LM): a checkpoint of this library (``.ckpt``, loaded with the student's
            class), a pretrained model name or folder (a zoo name, a Hub id; classifiers use its own head,
            ``head="pretrained"``) or a built module. ``None``: the student's own pretrained model at full
            depth, for a student built with ``every_other_block: true`` (DistilBERT's recipe).
        temperature: ``T`` > 0; both distributions are ``softmax(logits / T)``.
        alpha: weight of the label loss in ``[0, 1]``; the teacher's term has ``1 - alpha``.
        cache_logits: compute the teacher's logits of each training example once and reuse them in later
            epochs, when the training data loads the same each time (no augmentation); with augmented data
            the teacher runs on every batch (said once in the log).
        cache_memory_mb: stop adding to the cache above this size (a causal LM's logits are sequence x
            vocabulary per example); later examples are computed on each batch.

    Example::

        >>> Distillation(temperature=-1.0)
        Traceback (most recent call last):
        ValueError: temperature must be > 0 (logits are divided by it; e.g. 2.0), got -1.0
    """

    def __init__(
        self,
        teacher: str | pl.LightningModule | None = None,
        temperature: float = 2.0,
        alpha: float = 0.5,
        cache_logits: bool = True,
        cache_memory_mb: float = 1024.0,
    ) -> None:
        check_distillation(temperature, alpha)
        if cache_memory_mb < 0:
            raise ValueError(f"cache_memory_mb must be >= 0, got {cache_memory_mb}")
        self.teacher_source = teacher
        self.temperature, self.alpha = temperature, alpha
        self.cache_logits, self.cache_memory_mb = cache_logits, cache_memory_mb
        self.teacher: pl.LightningModule | None = None
        self.cache: dict[bytes, Tensor] = {}
        self.cache_bytes = 0
        self.caching = False

    # -- the teacher --------------------------------------------------------------------------------
    def load_teacher(self, student: pl.LightningModule) -> pl.LightningModule:
        """The teacher, built or loaded for ``student`` (see ``teacher``); not yet checked."""
        source, cls = self.teacher_source, type(student)
        if isinstance(source, pl.LightningModule):
            return source
        if source is None:
            hparams = {
                k: v for k, v in student.hparams.items() if not k.startswith("_")
            }  # not the CLI's notes
            if not hparams.get("every_other_block"):
                raise ValueError(
                    "Distillation(teacher=None) takes the student's own pretrained model at full depth as "
                    "the teacher, which needs a student built with every_other_block: true; give teacher: "
                    "<checkpoint, model name or folder> otherwise"
                )
            if hparams.get("head", "pretrained") != "pretrained":
                raise ValueError(
                    "Distillation(teacher=None) teaches with the student's pretrained model, whose own "
                    "trained head must score the classes: build the student with head: pretrained (a "
                    "fine-tuned classifier), or give teacher: <checkpoint, model name or folder>"
                )
            hparams.update(every_other_block=False, adapter=None, checkpoint_weights=None)
            return cls(**hparams)
        if str(source).endswith(".ckpt"):
            try:
                return cls.load_from_checkpoint(source, map_location="cpu")
            except Exception as error:
                raise ValueError(
                    f"Distillation teacher {source!r} does not load as a {cls.__name__} (the student's "
                    f"family): {str(error).splitlines()[0] if str(error) else type(error).__name__}. The "
                    "teacher must be of the student's family (image, text or causal LM classifier)"
                ) from error
        kwargs: dict[str, Any] = {"model_name_or_path": source}
        if "head" in inspect.signature(cls.__init__).parameters:
            kwargs["head"] = "pretrained"  # a pretrained classifier: its own trained head and labels
        return cls(**kwargs)

    def check_teacher(self, teacher: pl.LightningModule, student: pl.LightningModule) -> None:
        """Refuse a teacher of another family, label space or tokenizer than the student's."""
        if family(teacher) != family(student):
            raise ValueError(
                f"The Distillation teacher is a {family(teacher)} but the student a {family(student)}: a "
                "teacher teaches a student of its own family (image, text or causal LM)"
            )
        if hasattr(student, "label_names"):
            mine, theirs = student.label_names, teacher.label_names
            if student.num_classes != teacher.num_classes or mine != theirs:
                raise ValueError(
                    f"The Distillation teacher's classes {theirs[:10]} are not the student's {mine[:10]}: "
                    "its logits must score the same classes in the same order. Use a teacher trained on "
                    "this data's labels (a checkpoint of a run on it), or give the student label_names "
                    "in the teacher's order"
                )
        elif getattr(teacher, "vocab_size", None) != getattr(student, "vocab_size", None):
            raise ValueError(
                f"The Distillation teacher's vocabulary has {teacher.vocab_size} tokens but the student's "
                f"{student.vocab_size}: a causal LM teacher needs the student's tokenizer"
            )
        tokenizers = (getattr(teacher, "tokenizer", None), getattr(student, "tokenizer", None))
        if None not in tokenizers:
            from lightning_recipes.tokenizer import tokenizer_fingerprint  # text only

            if tokenizer_fingerprint(tokenizers[0]) != tokenizer_fingerprint(tokenizers[1]):
                raise ValueError(
                    f"The Distillation teacher's tokenizer ({getattr(tokenizers[0], 'name_or_path', '?')!r}) "
                    f"is not the student's ({getattr(tokenizers[1], 'name_or_path', '?')!r}): the teacher "
                    "reads the student's token ids, so both need the same vocabulary"
                )

    @staticmethod
    def check_inputs(teacher: pl.LightningModule, spec: DataSpec | None) -> None:
        """Refuse images prepared otherwise than the image teacher expects (its ``data_config``: size, mean,
        std): the teacher reads the student's batches, prepared as the data module told the student
        (``spec.image_config``, the handshake)."""
        expected = getattr(teacher, "data_config", None)
        given = None if spec is None else spec.image_config
        if not isinstance(expected, dict) or not isinstance(given, dict):
            return

        def values(config: dict, key: str) -> list:
            return [x if isinstance(x, int) else round(x, 4) for x in config[key]]

        theirs = {k: values(expected, k) for k in ("input_size", "mean", "std") if k in expected}
        mine = {k: values(given, k) for k in theirs if k in given}
        if mine != theirs:
            raise ValueError(
                f"The Distillation teacher expects images {theirs} but the data module makes {mine}: the "
                f"teacher reads the student's batches; give the data module the teacher's data_config "
                f"(data_config: {{input_size: {theirs.get('input_size')}, mean: {theirs.get('mean')}, "
                f"std: {theirs.get('std')}}})"
            )

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not callable(getattr(pl_module, "training_loss", None)):
            raise ValueError(
                f"Distillation needs a module with the training_loss hook (ImageClassifier, TextClassifier, "
                f"CausalLM or a TransferModule subclass); {type(pl_module).__name__} has none"
            )
        cached = [cb for cb in trainer.callbacks if getattr(cb, "feature_cache", None) is not None]
        if cached:
            raise ValueError(
                "Distillation and FreezeUnfreeze(cache_features=True) do not combine: the teacher needs the "
                "inputs, which cached-feature batches do not have; set cache_features: false"
            )
        teacher = self.load_teacher(pl_module)
        self.check_teacher(teacher, pl_module)
        self.check_inputs(teacher, getattr(pl_module, "accepted_data_spec", None))
        teacher.eval().requires_grad_(False)
        self.teacher = teacher.to(pl_module.device)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dataset = getattr(trainer.train_dataloader, "dataset", None)
        indexable = dataset is not None and hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")
        self.caching = self.cache_logits and indexable and len(dataset) > 0 and not loads_randomly(dataset)
        if self.cache_logits and not self.caching:
            rank_zero_info(
                "Distillation: the training data loads differently each time (augmentation) or cannot be "
                "checked, so the teacher runs on every batch (its logits are not cached)"
            )

    # -- per batch ----------------------------------------------------------------------------------
    def teacher_logits(self, batch: Any) -> Tensor:
        """The frozen teacher's logits of a batch, shaped like the student's."""
        assert self.teacher is not None, "Distillation.setup has not run"
        with torch.no_grad():
            if hasattr(self.teacher, "logits_and_target"):
                return self.teacher.class_logits(self.teacher.logits_and_target(batch)[0])
            ids, mask = batch["input_ids"], batch.get("attention_mask")
            return self.teacher(ids, torch.ones_like(ids) if mask is None else mask)

    def cached_teacher_logits(self, batch: Any) -> Tensor:
        """:meth:`teacher_logits`, each example's computed once and then read from the cache."""
        keys = row_keys(batch)
        missing = [i for i, k in enumerate(keys) if k not in self.cache]
        if not missing:
            return torch.stack([self.cache[k] for k in keys])
        live = self.teacher_logits(batch)
        budget = self.cache_memory_mb * 2**20
        for i in missing:
            row = live[i].detach().cpu()
            if self.cache_bytes + row.nbytes <= budget:
                self.cache[keys[i]] = row
                self.cache_bytes += row.nbytes
        return live

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if isinstance(batch, CachedFeatures):
            raise ValueError("Distillation got a batch of cached backbone features, which has no inputs")
        forward = trainer.precision_plugin.forward_context()
        with forward:
            logits = self.cached_teacher_logits(batch) if self.caching else self.teacher_logits(batch)
        pl_module.teacher_logits = TeacherLogits(logits.to(pl_module.device), self.temperature, self.alpha)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        pl_module.teacher_logits = None

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        pl_module.teacher_logits = None
        if stage == "fit":
            self.teacher, self.cache, self.cache_bytes = None, {}, 0
