"""Byte-level BPE training (lightning_recipes/data/bpe.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_recipes.data.bpe import ENDOFTEXT, files_fingerprint, train_bpe_tokenizer


def test_trained_tokenizer_loads_with_autotokenizer_and_round_trips(tmp_path: Path, write_corpus) -> None:
    from transformers import AutoTokenizer

    corpus = write_corpus(tmp_path / "corpus.txt", lines=300)
    trained = train_bpe_tokenizer([corpus], vocab_size=300, output_dir=tmp_path / "tok")
    assert (tmp_path / "tok" / "tokenizer.json").is_file()
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert len(tok) == len(trained) == 300  # 256 bytes + 1 special + 43 merges fit in this corpus
    assert tok.convert_ids_to_tokens(0) == ENDOFTEXT
    assert (tok.eos_token_id, tok.bos_token_id, tok.pad_token_id) == (0, 0, 0)
    # frequent words became single tokens; unseen text still encodes byte by byte, losslessly
    assert len(tok(" the")["input_ids"]) == 1
    text = corpus.read_text()
    assert len(tok(text)["input_ids"]) < 0.5 * len(text.encode())  # merges compress the training text
    text = "Zounds! naïve 東京 ✓\n\tend"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    assert ids == trained(text)["input_ids"]
    assert ENDOFTEXT not in tok.decode(ids)


def test_training_on_texts_equals_training_on_files(tmp_path: Path, write_corpus) -> None:
    corpus = write_corpus(tmp_path / "corpus.txt", lines=120)
    from_file = train_bpe_tokenizer([corpus], vocab_size=280)
    from_texts = train_bpe_tokenizer(texts=[corpus.read_text()], vocab_size=280)
    assert from_file.get_vocab() == from_texts.get_vocab()


def test_bad_arguments_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vocab_size=100 is too small"):
        train_bpe_tokenizer(texts=["abc"], vocab_size=100)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        train_bpe_tokenizer([tmp_path / "missing.txt"], vocab_size=300)
    with pytest.raises(ValueError, match="needs files"):
        train_bpe_tokenizer(vocab_size=300)


def test_files_fingerprint_changes_with_content(tmp_path: Path, write_corpus) -> None:
    path = write_corpus(tmp_path / "a.txt", lines=5)
    before = files_fingerprint([path])
    path.write_text(path.read_text() + "more\n")
    assert files_fingerprint([path]) != before
