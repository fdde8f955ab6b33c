"""The handshake: what a model and its data module must agree on, declared once and handed over in one place.

Data flows one way: recipe YAML -> CLI -> DataModule + LightningModule + callbacks -> Trainer. A
model never reads its data module (nor ``trainer.datamodule``), and a data module never reads the
model (nor ``trainer.lightning_module``). What they must agree on is handed over by :func:`connect`,
which the CLI calls once both are built, before any stage runs, and which Python users call
themselves before ``Trainer.fit``:

=================  =============================================  ========================================
direction          what                                           who uses it
=================  =============================================  ========================================
model -> data      :class:`InputSpec`: ``data_config`` (timm      image transforms; the text/corpus data
                   input size, mean, std, crop) and ``tokenizer``  modules tokenise with the model's tokenizer
                   (loaded with the pretrained model)
data -> model      :class:`DataSpec`: ``label_names`` (and so     the model checks ``num_classes`` and
                   ``num_classes``), ``task``, ``max_length``,    ``task``, stores the names, the length
                   ``block_size`` and ``tokenizer`` (one the      and a tokenizer in its checkpoints;
                   data trained, e.g. BPE on the corpus)          block size is checked against the
                                                                  context length
=================  =============================================  ========================================

The task (``multiclass``, ``multilabel``, ``regression``) is the data's: a data module states it once
in its :class:`DataSpec`, and a classifier built for another task is an error when the spec reaches it
(``ClassificationModule.accept_data_spec``), naming both tasks.

A tokenizer is made by one side: loaded with the pretrained model, or given to / trained by the data
module when the model has none (from scratch). Both sides with different tokenizers is an error
(:func:`agree_tokenizer`).

Predictions carry the inputs' identity the same one way: a data module puts it in each predict batch
under :data:`META_KEY` (``{column: [one value per row]}``: the image path, the text, the prompt), the
model's ``predict_step`` passes it on in its output beside what it predicted, and the
:class:`~lightning_recipes.callbacks.PredictionWriter` writes it next to the predictions
(:func:`split_meta` separates it from the model's inputs).

Example::

    >>> from lightning_recipes import DigitsDataModule, ImageClassifier, connect
    >>> model = ImageClassifier("test_resnet", num_classes=2, pretrained=False)
    >>> data = DigitsDataModule(digits=[0, 1], root=__import__("tempfile").mkdtemp())
    >>> connect(model, data)
    >>> model.label_names, data.resolved_data_config()["input_size"]
    (['0', '1'], (3, 160, 160))
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class InputSpec:
    """What a model tells its data module about the inputs it takes.

    Args:
        data_config: timm data config of an image backbone (``input_size``, ``mean``, ``std``...).
        tokenizer: the tokenizer that came with the pretrained model.
    """

    data_config: dict[str, Any] | None = None
    tokenizer: Any = None


@dataclass(frozen=True)
class DataSpec:
    """What a data module tells its model about the data.

    Args:
        label_names: class (or label) names in id order; ``None`` for regression and language modelling.
        task: what the labels are: ``multiclass`` (one class per example), ``multilabel`` (several) or
            ``regression`` (numbers); ``None`` where there are no labels (language modelling).
        max_length: truncation length of text inputs, in tokens.
        block_size: tokens per sequence of a language-modelling corpus.
        tokenizer: a tokenizer the data module made or loaded itself (``None`` when it uses the model's).
        image_config: the timm data config (``input_size``, ``mean``, ``std``, ...) an image data module
            prepares its images with.
    """

    label_names: list[str] | None = None
    task: str | None = None
    max_length: int | None = None
    block_size: int | None = None
    tokenizer: Any = None
    image_config: dict[str, Any] | None = None

    @property
    def num_classes(self) -> int | None:
        return None if self.label_names is None else len(self.label_names)


#: Key of a predict batch's identity columns ``{column: [value per row]}``, passed on by ``predict_step``.
META_KEY = "meta"
#: Keys of a ``predict_step`` output dict that hold one value for the batch, not one per row.
PREDICTION_CONSTANTS = ("label_names", "task")


def split_meta(batch: Any) -> tuple[Any, dict[str, list[Any]]]:
    """``(model inputs, identity columns)`` of a batch.

    A dict batch loses its :data:`META_KEY` entry; a tuple/list batch ``(inputs, ..., meta)`` gives its
    first element (and a dict last element as the identity); anything else is all input.

    Example::

        >>> split_meta({"input_ids": [[1, 2]], "meta": {"text": ["hi"]}})
        ({'input_ids': [[1, 2]]}, {'text': ['hi']})
        >>> split_meta(("images", "targets", {"path": ["a.png"]}))
        ('images', {'path': ['a.png']})
        >>> split_meta("images")
        ('images', {})
    """
    if isinstance(batch, Mapping):
        return {k: v for k, v in batch.items() if k != META_KEY}, dict(batch.get(META_KEY) or {})
    if isinstance(batch, (list, tuple)) and batch:
        meta = batch[-1] if len(batch) > 1 and isinstance(batch[-1], Mapping) else {}
        return batch[0], dict(meta)
    return batch, {}


def real_meta(batch: Any, keep: int) -> dict[str, Any]:
    """The identity columns (:func:`split_meta`) of a batch's first ``keep`` rows: an evaluation batch's real
    samples, those a DDP sampler did not repeat (see :class:`~lightning_recipes.eval_samples.RealSamples`),
    for the mistakes report and the test split's predictions table.

    Example::

        >>> real_meta(("images", "targets", {"path": ["a.png", "b.png", "a.png"]}), 2)
        {'path': ['a.png', 'b.png']}
    """
    return {k: v[:keep] for k, v in split_meta(batch)[1].items() if hasattr(v, "__getitem__")}


@dataclass
class CachedFeatures:
    """A batch of cached backbone features, from the feature cache of
    :class:`~lightning_recipes.callbacks.FreezeUnfreeze` (``cache_features=True``).

    The contract of a module that takes such batches: ``features_and_target(batch)`` returns the
    backbone's output for a normal batch (the features its ``head`` takes) and the batch's target, and
    ``head(features)`` gives the logits; a :class:`CachedFeatures` batch holds those ``features`` and
    that ``target`` precomputed, so the step runs the head only.

    Args:
        features: ``[batch, ...]`` backbone features (float32).
        target: the batch's targets.
    """

    features: Any
    target: Any


@dataclass
class TeacherLogits:
    """A training batch's teacher logits, handed to the module by
    :class:`~lightning_recipes.callbacks.Distillation` before the batch's step.

    The module's training loss becomes ``alpha * label loss + (1 - alpha) * T^2 * KL`` of the
    temperature-softened distributions (``TransferModule.training_loss``); validation and test keep the
    label loss.

    Args:
        logits: the frozen teacher's logits of the batch, shaped like the student's (``[batch, classes]``,
            or ``[batch, tokens, vocab]`` for a causal LM).
        temperature: ``T`` > 0 of the softmax both distributions are softened with.
        alpha: weight of the label loss, in ``[0, 1]``.
    """

    logits: Any
    temperature: float
    alpha: float


@dataclass(frozen=True)
class MixedTargets:
    """The targets of a training batch whose inputs :class:`~lightning_recipes.callbacks.Mixup` mixed.

    The callback mixes a batch's images (or cached features) in ``on_train_batch_start`` and puts this
    in the batch's target slot; a classifier's step trains on ``probabilities`` (its
    ``soft_target_loss``) and updates its metrics with ``labels``, the real labels.

    Args:
        labels: ``[batch]`` the real class ids of the batch, as the data gave them.
        probabilities: ``[batch, num_classes]`` the mixed (and smoothed) class probabilities.
    """

    labels: Any
    probabilities: Any


@runtime_checkable
class ModelSide(Protocol):
    """A LightningModule that takes part: ``input_spec()`` before the data is read, ``accept_data_spec()``."""

    def input_spec(self) -> InputSpec: ...

    def accept_data_spec(self, spec: DataSpec) -> None: ...


@runtime_checkable
class DataSide(Protocol):
    """A LightningDataModule that takes part: ``accept_input_spec()``, then ``data_spec()``."""

    def accept_input_spec(self, spec: InputSpec) -> None: ...

    def data_spec(self) -> DataSpec: ...


def connect(model: Any, datamodule: Any) -> None:
    """Hand the model's :class:`InputSpec` to the data module, then the data's :class:`DataSpec` to the model.

    Either side may be a plain LightningModule / DataModule that does not take part (then nothing is
    exchanged in that direction). ``data_spec()`` may read the data's labels (a folder listing, the
    label column) or train a tokenizer; both are cached, so a later ``setup`` does not repeat them.
    """
    if isinstance(datamodule, DataSide):
        datamodule.accept_input_spec(model.input_spec() if isinstance(model, ModelSide) else InputSpec())
        if isinstance(model, ModelSide):
            model.accept_data_spec(datamodule.data_spec())


def agree_tokenizer(model_side: Any, data_side: Any, data_name: str) -> Any:
    """The one tokenizer of a model/data pair: whichever side has one; the same on both sides is fine.

    Raises ``ValueError`` when both have one and they differ, naming ``data_name`` (the data's setting).

    Example::

        >>> agree_tokenizer(None, None, "tokenizer") is None
        True
    """
    if model_side is None or data_side is None or model_side is data_side:
        return data_side if model_side is None else model_side
    from lightning_recipes.tokenizer import tokenizer_fingerprint  # text only: image code never loads it

    if tokenizer_fingerprint(model_side) != tokenizer_fingerprint(data_side):
        raise ValueError(
            f"The model brings its own tokenizer ({getattr(model_side, 'name_or_path', '?')!r}) and the data "
            f"module another ({data_name}); they differ. Remove {data_name} from the data module so the "
            "model's tokenizer is used, or give the model the data's tokenizer."
        )
    return model_side
