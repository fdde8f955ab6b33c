"""Building the zoo's language models: a byte-level BPE tokenizer trained on a text, then ``CausalLM``
pretrained from random weights on ``TextCorpusDataModule`` by a Trainer, saved as a transformers folder.

No installed dependency ships a prose corpus, so the text is a file of the project's shared folder
(``lightning-recipes zoo build NAME --source DIR`` or ``$LIGHTNING_RECIPES_SHARED``); where it is absent the
build fails with the file's name, its download URL and where to put it. Its SHA-256 is checked, so the same
weights come out on every machine that builds them (with the same library versions).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L

from lightning_recipes._random_state import random_state_untouched
from lightning_recipes.data.bpe import train_bpe_tokenizer
from lightning_recipes.data.corpus import TextCorpusDataModule
from lightning_recipes.handshake import connect
from lightning_recipes.modules.causal_lm import CausalLM
from lightning_recipes.registry import GPT2Weights
from lightning_recipes.schedulers import WarmupDecay
from lightning_recipes.zoo._build import build_trainer, publish, shared_file, unfinished_path


def source_text(name: str, entry: GPT2Weights, source: str | os.PathLike | None = None) -> Path:
    """The text zoo model ``name`` is pretrained on, in the shared folder ``source`` (else
    ``$LIGHTNING_RECIPES_SHARED``), with its SHA-256 checked."""
    hint = f". Download it (public domain): `curl -L --create-dirs -o DIR/{entry.source} {entry.source_url}`"
    found = shared_file(name, entry.source, source, hint)
    if entry.source_sha256 is not None:
        digest = hashlib.sha256(found.read_bytes()).hexdigest()
        if digest != entry.source_sha256:
            raise ValueError(
                f"{found} is not the text zoo model {name!r} is trained on: its SHA-256 is "
                f"{digest}, expected {entry.source_sha256} (the file at {entry.source_url})"
            )
    return found


def source_model(entry: GPT2Weights, eos_token_id: int) -> CausalLM:
    """The model a :class:`~lightning_recipes.registry.GPT2Weights` entry pretrains: a GPT-2 of the entry's
    shape from random weights, without dropout (few steps), its special tokens the tokenizer's
    end-of-text; AdamW at ``entry.lr`` with a 5 % warm-up and a cosine decay over ``entry.steps``.

    Example::

        >>> from lightning_recipes.registry import GPT2Weights
        >>> entry = GPT2Weights("toy", "toy.txt", "https://example.org/toy.txt", None, n_layer=1, n_head=2,
        ...                     n_embd=16, n_positions=32, vocab_size=300)
        >>> lm = source_model(entry, eos_token_id=0)
        >>> lm.model.config.n_layer, lm.model.config.resid_pdrop, lm.from_scratch
        (1, 0.0, True)
    """
    shape = ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size")
    config: dict[str, Any] = {
        **{k: getattr(entry, k) for k in shape},
        **{k: 0.0 for k in ("resid_pdrop", "embd_pdrop", "attn_pdrop")},
        **dict.fromkeys(("bos_token_id", "eos_token_id", "pad_token_id"), eos_token_id),
    }
    return CausalLM(
        config=config,
        lr=entry.lr,
        lr_scheduler=partial(WarmupDecay, warmup_ratio=0.05, decay="cosine", total_steps=entry.steps),
        scheduler_interval="step",
    )


def build_gpt2(name: str, entry: GPT2Weights, source: str | os.PathLike | None = None) -> Path:
    """Train the tokenizer on the entry's text, then the model for ``entry.steps`` optimizer steps of
    ``batch_size`` x ``block_size`` tokens (gradients clipped to norm 1), and save both in
    ``entry.path()``. The caller's random state is the same afterwards."""
    text = source_text(name, entry, source)
    path = entry.path()
    unfinished = unfinished_path(path)
    try:
        with random_state_untouched():
            L.seed_everything(entry.seed, verbose=False)
            tokenizer = train_bpe_tokenizer([text], vocab_size=entry.vocab_size, output_dir=unfinished)
            lm = source_model(entry, tokenizer.eos_token_id)
            data = TextCorpusDataModule(
                str(text),
                tokenizer=str(unfinished),
                block_size=entry.block_size,
                batch_size=entry.batch_size,
                val_fraction=0.0,
                seed=entry.seed,
            )
            connect(lm, data)
            build_trainer(max_steps=entry.steps, gradient_clip_val=1.0).fit(lm, datamodule=data)
        # The model's weights and config, and the tokenizer as trained (the data module's copy, read back
        # from disk, would also save the flags it was loaded with).
        lm.model.save_pretrained(unfinished)
        tokenizer.save_pretrained(str(unfinished))
    except BaseException:  # no half-built folder left behind
        shutil.rmtree(unfinished, ignore_errors=True)
        raise
    publish(unfinished, path)
    return path
