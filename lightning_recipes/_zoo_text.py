"""The zoo's text classifier: a pretrained encoder fine-tuned once on SST-2, kept as a transformers folder.

What a Hub user gets from ``distilbert-base-uncased-finetuned-sst-2-english``, built offline: the
MiniLM encoder and SST-2 sentences the project keeps beside it (``$LIGHTNING_RECIPES_SHARED`` or
``../shared``, see :func:`shared_file`), fine-tuned with ``TextClassifier(head="pretrained")`` and saved with
``save_pretrained`` (``id2label`` ``{0: negative, 1: positive}``), so
``TextClassifier(model_name_or_path="minilm-l6.sst2", head="pretrained")`` and
``AutoModelForSequenceClassification.from_pretrained(folder)`` load it as a fine-tuned classifier.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor, nn

from lightning_recipes.cache import default_cache_dir, shared_candidates
from lightning_recipes.handshake import InputSpec
from lightning_recipes.modules._classification import ClassificationModule
from lightning_recipes.modules._hf import HFParts


def shared_file(relative: str) -> Path:
    """A file of the project's shared real data and weights, or ``FileNotFoundError`` saying where it was
    looked for: ``$LIGHTNING_RECIPES_SHARED``, then ``../shared`` of the working directory and of the
    source checkout.

    Example::

        >>> shared_file("no/such/file")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        FileNotFoundError: no/such/file is not on this machine (looked in ...); set LIGHTNING_RECIPES_SHA...
    """
    candidates = shared_candidates(relative)
    for path in candidates:
        if path.exists():
            return path.resolve()
    raise FileNotFoundError(
        f"{relative} is not on this machine (looked in {', '.join(map(str, candidates))}); set "
        "LIGHTNING_RECIPES_SHARED to the folder that holds it"
    )


class _SourceTextClassifier(HFParts, ClassificationModule):
    """The model a text zoo entry fine-tunes: ``AutoModelForSequenceClassification`` with its own head.

    Built like ``TextClassifier(encoder, head="pretrained", num_classes=len(labels), lr=lr, ...)`` (same
    parts, parameter groups, draws and forward), without importing ``modules.text``, which resolves
    zoo names (the zoo must not import it back).
    """

    def __init__(self, encoder: str, labels: list[str], lr: float, **kwargs: Any) -> None:
        super().__init__(num_classes=len(labels), label_names=labels, lr=lr, **kwargs)
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        from lightning_recipes.modules._text_export import label_config

        config = label_config(AutoConfig.from_pretrained(encoder), labels, "multiclass")
        model = AutoModelForSequenceClassification.from_pretrained(encoder, config=config)
        model.train()
        prefix = model.base_model_prefix
        parts = {name: m for name, m in model.named_children() if name != prefix}
        self.set_parts(model, getattr(model, prefix), nn.ModuleDict(parts))
        self.tokenizer = AutoTokenizer.from_pretrained(encoder)

    def input_spec(self) -> InputSpec:
        return InputSpec(tokenizer=self.tokenizer)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        names = ("input_ids", "attention_mask", "token_type_ids")
        return self.model(**{k: batch[k] for k in names if k in batch}).logits

    def logits_and_target(self, batch: Any) -> tuple[Tensor, Tensor]:
        return self(batch), batch["labels"]


@dataclass(frozen=True)
class FinetunedTextClassifier:
    """A transformers encoder fine-tuned on a labelled tsv (``sentence<TAB>label``) with its own head.

    :meth:`build` fine-tunes the encoder with its sequence-classification head (built like
    ``TextClassifier(encoder, head="pretrained", num_classes=len(labels))``) on a
    seeded ``train_size`` subset for ``epochs`` (AdamW, linear decay) and saves model and tokenizer with
    ``save_pretrained`` in :meth:`path`, whose name holds a hash of every setting.
    """

    #: What loads the built folder (``zoo.resolve_model_name`` accepts these entries).
    library: ClassVar[str] = "transformers"
    name: str
    encoder: str
    train_file: str
    labels: tuple[str, ...]
    train_size: int = 2000
    epochs: int = 1
    lr: float = 1e-4
    batch_size: int = 32
    max_length: int = 64
    seed: int = 0

    @property
    def arch(self) -> str:
        return f"{Path(self.encoder).name} + classifier"

    @property
    def trained_on(self) -> str:
        return f"{self.train_file} ({self.train_size} sentences, {self.epochs} epoch)"

    def path(self) -> Path:
        digest = hashlib.sha256(repr(sorted(asdict(self).items())).encode()).hexdigest()[:10]
        return default_cache_dir() / "weights" / f"{self.name}.{digest}"

    def resolve(self, pretrained: bool = True) -> str:
        """The folder of the fine-tuned model and its tokenizer, built on first use."""
        if not pretrained:
            raise ValueError(f"{self.name!r} names fine-tuned weights; for random weights give a config")
        return str(self.build())

    def build(self) -> Path:
        """Fine-tune once and cache the transformers folder; return it.

        The caller's random state (generators and seed variables) is the same afterwards.
        """
        path = self.path()
        if (path / "config.json").is_file():
            return path
        import lightning as L
        from lightning.pytorch.utilities import rank_zero_info

        from lightning_recipes._random_state import build_trainer, random_state_untouched
        from lightning_recipes.data.text import TextDataModule
        from lightning_recipes.handshake import connect
        from lightning_recipes.schedulers import WarmupDecay

        encoder, train_file = shared_file(self.encoder), shared_file(self.train_file)
        rank_zero_info(
            f"lightning_recipes: fine-tuning {encoder.name} on {self.train_size} sentences of {train_file} "
            f"once for {self.name!r} (cached at {path}; a minute or two on 2 CPU cores; your random state is "
            "left untouched; `lightning-recipes zoo build` does this ahead of time)"
        )
        with random_state_untouched():
            L.seed_everything(self.seed, verbose=False)
            model = _SourceTextClassifier(
                str(encoder),
                list(self.labels),
                lr=self.lr,
                lr_scheduler=lambda opt: WarmupDecay(opt, warmup_ratio=0.1, decay="linear"),
                scheduler_interval="step",
            )
            data = TextDataModule(
                train_file=str(train_file),
                labels=list(self.labels),
                train_size=self.train_size,
                max_length=self.max_length,
                batch_size=self.batch_size,
                seed=self.seed,
            )
            connect(model, data)
            trainer = build_trainer(max_epochs=self.epochs)
            trainer.fit(model, datamodule=data)
        tmp = path.with_name(path.name + ".tmp")
        model.model.save_pretrained(tmp)
        model.tokenizer.save_pretrained(tmp)
        tmp.replace(path)
        return path


def minilm_sst2() -> FinetunedTextClassifier:
    """``minilm-l6.sst2``: all-MiniLM-L6-v2 fine-tuned on 2,000 SST-2 training sentences."""
    return FinetunedTextClassifier(
        "minilm-l6.sst2",
        encoder="models/all-MiniLM-L6-v2",
        train_file="data/sst2/train.tsv",
        labels=("negative", "positive"),
    )
