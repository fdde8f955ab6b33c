"""train_wordpiece_tokenizer, and TextDataModule training one on its training split (wordpiece_vocab_size)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_recipes import TextClassifier, TextDataModule, connect
from lightning_recipes.data._tokenizer_cache import STAMP
from lightning_recipes.data.wordpiece import BERT_SPECIAL_TOKENS, train_wordpiece_tokenizer
from lightning_recipes.tokenizer import tokenizer_fingerprint

SENTENCES = ["a good film", "a bad film", "great fun", "the plot was dull", "good fun, great film"]


def test_trained_from_files_saves_a_bert_style_tokenizer(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES * 10) + "\n")
    tok = train_wordpiece_tokenizer([corpus], vocab_size=200, output_dir=tmp_path / "tok")
    vocab = tok.get_vocab()
    assert [vocab[t] for t in BERT_SPECIAL_TOKENS] == [0, 1, 2, 3, 4]  # BERT's ids; pad 0 = BertConfig's
    assert {"good", "film", "dull", "plot"} <= set(vocab)
    assert len(vocab) < 200  # a tiny corpus: every word and piece it has, no more
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert tokenizer_fingerprint(reloaded) == tokenizer_fingerprint(tok)
    encoded = reloaded("Good FILM", "dull")
    assert reloaded.convert_ids_to_tokens(encoded["input_ids"]) == [
        "[CLS]", "good", "film", "[SEP]", "dull", "[SEP]",
    ]  # fmt: skip
    assert encoded["token_type_ids"] == [0, 0, 0, 0, 1, 1]
    assert reloaded.decode(encoded["input_ids"], skip_special_tokens=True) == "good film dull"


def test_bad_arguments_say_what_would_work(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs files .* or texts"):
        train_wordpiece_tokenizer()
    with pytest.raises(ValueError, match=r"vocab_size=5 is too small: it must exceed the 5 special"):
        train_wordpiece_tokenizer(texts=SENTENCES, vocab_size=5)
    with pytest.raises(FileNotFoundError, match="no-such.txt"):
        train_wordpiece_tokenizer([tmp_path / "no-such.txt"])


def write_tsv(path: Path, rows: list[tuple[str, int]]) -> str:
    path.write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))
    return str(path)


def scratch_model(vocab_size: int = 100) -> TextClassifier:
    config = {"model_type": "bert", "vocab_size": vocab_size, "hidden_size": 16, "num_hidden_layers": 1,
              "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 32}  # fmt: skip
    return TextClassifier(None, config=config, num_classes=2)


def test_data_module_trains_on_its_training_split_and_hands_it_to_a_model_from_scratch(
    tmp_path: Path,
) -> None:
    train = write_tsv(tmp_path / "train.tsv", [(s, i % 2) for i, s in enumerate(SENTENCES * 4)])
    dev = write_tsv(tmp_path / "dev.tsv", [("an awful movie", 0), ("zany film", 1)])  # words only in dev
    options = {"train_file": train, "val_file": dev, "label_names": ["neg", "pos"], "batch_size": 4,
               "wordpiece_vocab_size": 100, "cache_dir": str(tmp_path / "cache")}  # fmt: skip
    model, dm = scratch_model(), TextDataModule(**options)
    assert model.tokenizer is None and model.from_scratch
    connect(model, dm)
    assert model.tokenizer is dm.tokenizer
    vocab = model.tokenizer.get_vocab()
    assert {"good", "film", "dull"} <= set(vocab) and not {"awful", "movie", "zany"} & set(vocab)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"][:, 0].eq(vocab["[CLS]"]).all() and model(batch).shape == (4, 2)
    (stamp,) = (tmp_path / "cache" / "tokenizers").glob(f"*/{STAMP}")
    # the same data and size: the saved tokenizer is reused (not retrained); another size: a new one
    again = TextDataModule(**options)
    again.accept_input_spec(scratch_model().input_spec())
    assert again.data_spec().tokenizer.get_vocab() == vocab
    assert len(list((tmp_path / "cache" / "tokenizers").iterdir())) == 1
    TextDataModule(**{**options, "wordpiece_vocab_size": 30}).prepare_tokenizer()
    assert len(list((tmp_path / "cache" / "tokenizers").iterdir())) == 2


def test_trained_tokenizer_must_fit_the_model_and_not_meet_a_pretrained_one(tmp_path: Path) -> None:
    train = write_tsv(tmp_path / "train.tsv", [(s, i % 2) for i, s in enumerate(SENTENCES * 4)])
    options = {"train_file": train, "val_fraction": 0.25, "wordpiece_vocab_size": 100,
               "tokenizer_dir": str(tmp_path / "tok")}  # fmt: skip
    with pytest.raises(ValueError, match=r"The tokenizer has \d+ tokens but the model's vocab_size is 10"):
        connect(scratch_model(vocab_size=10), TextDataModule(**options))
    assert (tmp_path / "tok" / "tokenizer.json").is_file()
    # a model that brings the very tokenizer this data trains (reloaded from a checkpoint) keeps it; any
    # other tokenizer (a pretrained model's) is an error
    reloaded = scratch_model()
    reloaded.tokenizer = TextDataModule(**options).prepare_tokenizer()
    dm = TextDataModule(**options)
    connect(reloaded, dm)
    assert dm.tokenizer is reloaded.tokenizer
    other = scratch_model()
    smaller = {**options, "wordpiece_vocab_size": 30, "tokenizer_dir": str(tmp_path / "tok30")}
    other.tokenizer = TextDataModule(**smaller).prepare_tokenizer()
    with pytest.raises(ValueError, match=r"another \(wordpiece_vocab_size=100\); they differ"):
        connect(other, TextDataModule(**options))
    with pytest.raises(ValueError, match="at most one of tokenizer .* or wordpiece_vocab_size"):
        TextDataModule(**options, tokenizer=str(tmp_path / "tok"))


def test_text_classifier_from_scratch_needs_a_config() -> None:
    with pytest.raises(ValueError, match="needs model_name_or_path .* or config"):
        TextClassifier(None, num_classes=2)
