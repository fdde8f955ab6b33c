"""Tiny stand-ins for the benchmarks' ``--smoke`` mode (not a benchmark: the tests skip ``_`` files).

A smoke run takes the code path of the full benchmark (same functions, same arms, same table) on
stand-ins that cost seconds and need neither ``../shared`` nor a network: :func:`tiny_shared` writes a
folder laid out like ``../shared`` (the same relative paths) holding a 2-layer BERT with a WordPiece
vocabulary of a few words where MiniLM is, a timm ``test_efficientnet`` (random weights, 32 px) where
EfficientNet-Lite0 is, and SST-2-shaped tables of toy sentences; :func:`tiny_zoo` stands in for zoo
entries that take minutes to build. The figures of a smoke run mean nothing; tests check that the
script runs and that its table is complete and finite (``tests/test_benchmarks.py``).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

#: The toy vocabulary every stand-in text is drawn from.
WORDS = ["the", "a", "film", "plot", "movie", "is", "was", "not", "very", "good", "bad", "great", "awful",
         "fun", "dull", "and", "it", "of"]  # fmt: skip
POSITIVE, NEGATIVE = {"good", "great", "fun"}, {"bad", "awful", "dull"}
MINILM = "models/all-MiniLM-L6-v2"
EFFICIENTNET = "models/efficientnet_lite0"
SST2 = "data/sst2"


def sentences(n: int, seed: int) -> list[tuple[str, int]]:
    """``n`` seeded toy sentences of 3-12 words; label 1 where more words are in :data:`POSITIVE` than in
    :data:`NEGATIVE`."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.choices(WORDS, k=rng.randint(3, 12))
        score = sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words)
        rows.append((" ".join(words) + " .", int(score > 0)))
    return rows


def write_sst2(folder: Path, train: int = 64, dev: int = 32) -> Path:
    """``train.tsv`` and ``dev.tsv`` with SST-2's columns (``sentence<TAB>label``) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", train, 0), ("dev", dev, 1)):
        rows = "".join(f"{text}\t{label}\n" for text, label in sentences(n, seed))
        (folder / f"{split}.tsv").write_text("sentence\tlabel\n" + rows)
    return folder


def write_bert(folder: Path) -> Path:
    """A BERT (2 layers, hidden 32, random weights) and its uncased WordPiece tokenizer over :data:`WORDS`,
    saved like a Hugging Face model folder (``from_pretrained(folder)`` loads both)."""
    import torch
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *WORDS]
    folder.mkdir(parents=True, exist_ok=True)
    BertWordPieceTokenizer({w: i for i, w in enumerate(vocab)}).save(str(folder / "tokenizer.json"))
    BertTokenizerFast(tokenizer_file=str(folder / "tokenizer.json")).save_pretrained(folder)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)  # fmt: skip
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return folder


def write_timm(folder: Path, arch: str = "test_efficientnet", image_size: int = 32) -> Path:
    """A timm model with random weights in timm's own folder format (``local-dir:<folder>``), whose data
    config asks for ``image_size`` px inputs."""
    import timm
    import torch
    from timm.models import save_for_hf

    torch.manual_seed(0)
    overlay = {"input_size": (3, image_size, image_size)}
    model = timm.create_model(arch, pretrained=False, num_classes=10, pretrained_cfg_overlay=overlay)
    save_for_hf(model, str(folder), safe_serialization=True)
    return folder


def tiny_shared(root: Path, *parts: str) -> Path:
    """A folder laid out like ``../shared`` holding the stand-ins for ``parts`` (default: all of
    :data:`MINILM`, :data:`EFFICIENTNET`, :data:`SST2`); returns ``root``."""
    writers = {MINILM: write_bert, EFFICIENTNET: write_timm, SST2: write_sst2}
    for part in parts or writers:
        writers[part](root / part)
    return root


def tiny_zoo(root: Path, *names: str) -> None:
    """Replace the zoo entries ``names`` (in this process) by ones that build in seconds, and build them in a
    cache in ``root``.

    ``gpt2-mini.shakespeare``: a 2-layer GPT-2 (hidden 32, BPE vocabulary 300) pretrained for 20 steps on
    toy sentences (in a shared folder of its own, given to the build); ``resnet10t.digits04``: timm
    ``test_resnet`` trained 1 epoch on digits 0-4. Both are built as the real ones are (``zoo.build``) and
    used by name (``ImageClassifier(model_name_or_path=...)``).
    """
    from lightning_recipes import registry, zoo

    os.environ["LIGHTNING_RECIPES_CACHE"] = str(root / "cache")  # never the user's cache
    shared = root / "smoke-shared"
    for name in names:
        if name == "gpt2-mini.shakespeare":
            source = shared / "toy.txt"
            source.parent.mkdir(parents=True, exist_ok=True)
            source.write_text("<|endoftext|>".join(text for text, _ in sentences(400, seed=2)))
            registry.ZOO[name] = registry.GPT2Weights(
                "gpt2-mini.smoke", "toy.txt", "(written by benchmarks/_smoke.py)", None, n_layer=2,
                n_head=2, n_embd=32, n_positions=64, vocab_size=300, block_size=32, batch_size=8, steps=20,
            )  # fmt: skip
        elif name == "resnet10t.digits04":
            registry.ZOO[name] = registry.DigitsWeights("test_resnet", (0, 1, 2, 3, 4), epochs=1)
        else:
            raise ValueError(f"no smoke stand-in for zoo entry {name!r}")
        zoo.build(name, source=shared)
