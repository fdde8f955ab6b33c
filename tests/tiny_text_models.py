"""Tiny BERT / DistilBERT models and a tiny WordPiece tokenizer built in tmp_path, and toy sentiment data.

For the TextClassifier tests (``tests/modules/test_text_classifier*.py``; the ``tiny_bert`` and
``sentiment_csv`` fixtures in ``tests/conftest.py`` call these) and the feature cache's (``make_model``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from lightning_recipes import TextClassifier, TextDataModule

WORDS = [
    "good",
    "great",
    "fine",
    "fun",
    "love",
    "bad",
    "awful",
    "dull",
    "boring",
    "hate",
    "movie",
    "film",
    "the",
    "a",
    "plot",
    "actors",
    "was",
    "is",
]
POSITIVE = ["good film", "great movie", "the plot was fun", "love the actors", "a fine film", "great fun"]
NEGATIVE = ["bad film", "awful movie", "the plot was dull", "hate the actors", "a boring film", "awful dull"]


def make_tokenizer(folder: Path) -> Path:
    """A lower-casing WordPiece tokenizer over ``WORDS``, saved as a transformers tokenizer folder."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    BertWordPieceTokenizer({w: i for i, w in enumerate(vocab)}, lowercase=True).save(
        str(folder / "tokenizer.json")
    )
    BertTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), model_max_length=64).save_pretrained(
        folder
    )
    return folder


def make_model(folder: Path, kind: str = "bert") -> Path:
    """A 2-layer, 32-wide BERT or DistilBERT with random weights plus the tiny tokenizer, in ``folder``."""
    from transformers import AutoModel, BertConfig, DistilBertConfig

    torch.manual_seed(0)
    if kind == "bert":
        config = BertConfig(
            vocab_size=64,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    else:
        config = DistilBertConfig(
            vocab_size=64, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64
        )
    AutoModel.from_config(config).save_pretrained(folder)
    make_tokenizer(folder)
    return folder


def datamodule(folder: Path, **kwargs) -> TextDataModule:
    options = {"text_column": "text", "batch_size": 8, "cache_dir": str(folder / "cache")}
    return TextDataModule(
        train_file=str(folder / "train.csv"),
        val_file=str(folder / "dev.csv"),
        test_file=str(folder / "dev.csv"),
        **{**options, **kwargs},
    )


def encode(model: TextClassifier, texts: list[str]) -> dict[str, torch.Tensor]:
    return dict(model.tokenizer(texts, padding=True, return_tensors="pt"))


def save_tiny_classifier(folder: Path, id2label: dict[int, str] | None) -> Path:
    """A tiny BertForSequenceClassification (``id2label``) with a WordPiece tokenizer; ``None``: a base
    BertModel (no classification head)."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import AutoModel, AutoModelForSequenceClassification, BertConfig, BertTokenizerFast

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=16, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    if id2label is None:
        AutoModel.from_config(config).save_pretrained(folder)
    else:
        config.id2label, config.label2id = id2label, {v: k for k, v in id2label.items()}
        AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film"]
    BertWordPieceTokenizer({w: i for i, w in enumerate(vocab)}).save(str(folder / "tokenizer.json"))
    BertTokenizerFast(tokenizer_file=str(folder / "tokenizer.json")).save_pretrained(folder)
    return folder
