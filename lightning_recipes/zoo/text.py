"""Building the zoo's text classifiers: ``TextClassifier(head="pretrained")`` fine-tuned on
``TextDataModule`` by a Trainer, saved with its ``save_pretrained`` (a transformers folder)."""

from __future__ import annotations

import os
import shutil
from functools import partial
from pathlib import Path

import lightning as L

from lightning_recipes._random_state import random_state_untouched
from lightning_recipes.data.text import TextDataModule
from lightning_recipes.handshake import connect
from lightning_recipes.modules.text import TextClassifier
from lightning_recipes.registry import TextClassifierWeights
from lightning_recipes.schedulers import WarmupDecay
from lightning_recipes.zoo._build import build_trainer, publish, shared_file, unfinished_path


def source_model(entry: TextClassifierWeights, encoder: str | os.PathLike) -> TextClassifier:
    """The model a :class:`~lightning_recipes.registry.TextClassifierWeights` entry fine-tunes: the
    ``encoder`` folder with the architecture's own classification head (new, one output per label),
    AdamW at ``entry.lr`` with a 10 % warm-up and a linear decay, stepped every batch."""
    return TextClassifier(
        str(encoder),
        head="pretrained",
        num_classes=len(entry.labels),
        label_names=list(entry.labels),
        lr=entry.lr,
        lr_scheduler=partial(WarmupDecay, warmup_ratio=0.1, decay="linear"),
        scheduler_interval="step",
    )


def build_text_classifier(
    name: str, entry: TextClassifierWeights, source: str | os.PathLike | None = None
) -> Path:
    """Fine-tune ``entry.encoder`` on a seeded ``entry.train_size`` subset of ``entry.train_file`` (both in
    the shared folder ``source``, else ``$LIGHTNING_RECIPES_SHARED``) for ``entry.epochs`` and save model
    and tokenizer in ``entry.path()``. The caller's random state is the same afterwards."""
    encoder = shared_file(name, entry.encoder, source)
    train_file = shared_file(name, entry.train_file, source)
    path = entry.path()
    unfinished = unfinished_path(path)
    try:
        with random_state_untouched():
            L.seed_everything(entry.seed, verbose=False)
            model = source_model(entry, encoder)
            data = TextDataModule(
                train_file=str(train_file),
                label_names=list(entry.labels),
                train_size=entry.train_size,
                max_length=entry.max_length,
                batch_size=entry.batch_size,
                seed=entry.seed,
            )
            connect(model, data)
            build_trainer(max_epochs=entry.epochs).fit(model, datamodule=data)
        model.save_pretrained(unfinished)
    except BaseException:  # no half-built folder left behind
        shutil.rmtree(unfinished, ignore_errors=True)
        raise
    publish(unfinished, path)
    return path
