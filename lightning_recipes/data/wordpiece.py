"""WordPiece tokenizer training (BERT's scheme) on a corpus, for encoders trained from scratch."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from lightning_recipes.data.bpe import saved, training_corpus

#: BERT's special tokens, in the order that gives BERT's ids for padding (0) and the rest (1-4).
BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def train_wordpiece_tokenizer(
    files: Sequence[str | Path] | None = None,
    vocab_size: int = 8192,
    output_dir: str | Path | None = None,
    texts: Iterable[str] | None = None,
    min_frequency: int = 2,
    lowercase: bool = True,
) -> Any:
    """Train a WordPiece tokenizer (BERT's scheme) and save it as a Hugging Face tokenizer.

    The text is normalised and split as BERT does (``BertNormalizer``, lower-cased by default, and
    ``BertPreTokenizer``); the vocabulary holds BERT's special tokens ``[PAD]`` (id 0, as
    ``BertConfig.pad_token_id``), ``[UNK]``, ``[CLS]``, ``[SEP]``, ``[MASK]``, the characters of the
    text, and whole words and ``##``-continuations up to ``vocab_size``. Encoded sequences are
    ``[CLS] text [SEP]`` (``[CLS] a [SEP] b [SEP]`` with token type ids for pairs), as BERT expects. The
    saved folder loads with ``transformers.AutoTokenizer.from_pretrained(output_dir)``. The same
    arguments as :func:`~lightning_recipes.data.bpe.train_bpe_tokenizer`, which trains GPT-2's scheme.

    Args:
        files: UTF-8 text files to learn from.
        vocab_size: size of the vocabulary, special tokens included; a small corpus may give fewer.
        output_dir: folder to save the tokenizer to; ``None`` keeps it in memory only.
        texts: strings to learn from, instead of (or besides) ``files``.
        min_frequency: words and pieces seen fewer times get no token of their own.
        lowercase: lower-case (and strip accents from) the text first, as ``bert-base-uncased`` does.

    Returns:
        a ``transformers.PreTrainedTokenizerFast``.

    Example::

        >>> texts = ["a good film", "a bad film", "good fun"] * 20
        >>> tok = train_wordpiece_tokenizer(texts=texts, vocab_size=60)
        >>> tok.convert_ids_to_tokens(tok("A GOOD film!")["input_ids"])  # "!" never occurs in the texts
        ['[CLS]', 'a', 'good', 'film', '[UNK]', '[SEP]']
        >>> tok.pad_token_id, tok("a", "film")["token_type_ids"]
        (0, [0, 0, 0, 1, 1])
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = training_corpus("train_wordpiece_tokenizer", files, texts)
    if vocab_size <= len(BERT_SPECIAL_TOKENS):
        raise ValueError(
            f"vocab_size={vocab_size} is too small: it must exceed the {len(BERT_SPECIAL_TOKENS)} special "
            f"tokens {list(BERT_SPECIAL_TOKENS)} (a few thousand suits a small corpus)"
        )
    pad, unk, cls, sep, mask = BERT_SPECIAL_TOKENS
    tokenizer = Tokenizer(models.WordPiece(unk_token=unk))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(BERT_SPECIAL_TOKENS),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    cls_id, sep_id = tokenizer.token_to_id(cls), tokenizer.token_to_id(sep)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, cls_id), (sep, sep_id)],
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=pad,
        unk_token=unk,
        cls_token=cls,
        sep_token=sep,
        mask_token=mask,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )
    return saved(wrapped, output_dir)
