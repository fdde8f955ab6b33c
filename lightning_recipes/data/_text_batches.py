"""Batches of the text data module: tokenising a split once, padding with the texts kept beside, and the
length-grouped sampler."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

from lightning_recipes._compat import dataset_fingerprint
from lightning_recipes.data._labels import LabelEncoder
from lightning_recipes.handshake import META_KEY
from lightning_recipes.tokenizer import tokenizer_fingerprint

#: Prefix of the tokenised evaluation and predict splits' columns that keep the raw inputs (moved to
#: ``batch["meta"]``).
META_PREFIX = "meta/"
_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def tokenize_split(
    ds: Any,
    split: str,
    tokenizer: Any,
    text: str,
    pair: str | None,
    max_length: int,
    labels: LabelEncoder | None,
    task: str,
    kept: list[str],
) -> Any:
    """``ds`` tokenised once (``datasets.map``, cached under a fingerprint of everything that shapes the
    result): the model inputs, ``length``, ``labels`` (encoded by ``labels``; ``None``: none) and the
    ``kept`` columns as ``meta/<column>``."""

    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        args = [batch[text]] + ([batch[pair]] if pair else [])
        out = dict(tokenizer(*args, truncation=True, max_length=max_length))
        out = {k: v for k, v in out.items() if k in _MODEL_INPUTS}
        out["length"] = [len(ids) for ids in out["input_ids"]]
        if labels is not None:
            out["labels"] = labels.encode(batch[labels.column])
        out.update({META_PREFIX + c: batch[c] for c in kept})
        return out

    label_key = None if labels is None else [labels.column, labels.separator, labels.key()]
    parts = [
        dataset_fingerprint(ds),
        tokenizer_fingerprint(tokenizer),
        text,
        pair,
        max_length,
        task,
        label_key,
        kept,
    ]
    fingerprint = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]
    return ds.map(
        encode,
        batched=True,
        remove_columns=ds.column_names,
        new_fingerprint=fingerprint,
        desc=f"Tokenizing {split}",
    )


class TextCollator:
    """Pad a list of examples to the longest one (transformers' ``DataCollatorWithPadding``); float
    labels unless ``task`` is multiclass. Columns named ``meta/<column>`` (the evaluation and predict
    splits' inputs) become ``batch["meta"]``: ``{column: [values]}``."""

    def __init__(self, tokenizer: Any, task: str, pad_to_multiple_of: int | None = None) -> None:
        from transformers import DataCollatorWithPadding

        self.pad = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of)
        self.task = task

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        columns = [k for k in features[0] if k.startswith(META_PREFIX)] if features else []
        meta = {k.removeprefix(META_PREFIX): [f[k] for f in features] for k in columns}
        if columns:
            features = [{k: v for k, v in f.items() if k not in columns} for f in features]
        batch = dict(self.pad(features))
        if self.task != "multiclass" and "labels" in batch:
            batch["labels"] = batch["labels"].float()
        if meta:
            batch[META_KEY] = meta
        return batch


def length_grouped_sampler(batch_size: int, lengths: list[int], seed: int) -> Any:
    """transformers' ``LengthGroupedSampler`` drawing a new, seeded order each epoch.

    Seeding by ``seed + epoch`` (not the global RNG) gives every DDP rank the same order, which
    Lightning's ``DistributedSamplerWrapper`` then shards. The epoch is the Trainer's: Lightning calls
    ``set_epoch`` before each epoch (and forwards it through its DDP wrapper), so a run resumed at
    epoch N draws epoch N's order; used without Lightning, each iteration moves to the next epoch.
    """
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
        def set_epoch(self, epoch: int) -> None:
            self.epoch, self.epoch_given = epoch, True

        def __iter__(self) -> Any:
            self.generator = torch.Generator().manual_seed(seed + self.epoch)
            if not self.epoch_given:
                self.epoch += 1
            self.epoch_given = False
            return super().__iter__()

    sampler = EpochSeededLengthGroupedSampler(batch_size, lengths=lengths)
    sampler.epoch, sampler.epoch_given = 0, False
    return sampler
