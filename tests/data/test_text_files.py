"""Text files as they come: encodings, `LABEL text` and `text;label` line files, delimiters, and errors that
name the file, the line, the byte and the option to set (TextDataModule and TextCorpusDataModule)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_text_data import make_dm, write_csv
from tiny_text_models import make_tokenizer

from lightning_recipes import TextCorpusDataModule, TextDataModule


@pytest.fixture
def tokenizer_dir(tmp_path: Path) -> Path:
    return make_tokenizer(tmp_path / "tok")


LATIN1_LINES = [
    "DESC:manner How did serfdom develop ?",
    "HUM:ind Who painted the caf\xe9 ?",
    "DESC:def What is a film ?",
]


def write_latin1(path: Path, lines: list[str]) -> str:
    path.write_bytes("\n".join(lines).encode("latin-1") + b"\n")
    return str(path)


def test_a_latin1_label_file_fails_naming_line_byte_and_option_then_reads(tokenizer_dir, tmp_path):
    train = write_latin1(tmp_path / "train.label", LATIN1_LINES)
    with pytest.raises(UnicodeDecodeError) as info:
        make_dm(tokenizer_dir, train)
    offset = len(LATIN1_LINES[0]) + 1 + LATIN1_LINES[1].index("\xe9")
    assert f"train file {train!r} is not utf-8 text: line 2, byte {offset} (0xe9)" in str(info.value)
    assert "encoding: latin-1" in str(info.value)

    dm = make_dm(tokenizer_dir, train, encoding="latin-1")
    assert dm.label_names == ["DESC:def", "DESC:manner", "HUM:ind"]
    raw = dm._raw()["train"]
    assert raw[1] == {"text": "Who painted the caf\xe9 ?", "label": "HUM:ind"}
    assert len(dm.train_set) == 3


def test_text_label_lines_get_the_module_column_names_and_split_at_the_last_delimiter(
    tokenizer_dir, tmp_path
):
    train = tmp_path / "train.txt"
    train.write_text("a good film;joy\nthe plot; was dull;sadness\n\ngreat fun;joy\n")
    dm = make_dm(tokenizer_dir, str(train), delimiter=";", text_column="sentence")
    rows = dm._raw()["train"]
    assert rows.column_names == ["sentence", "label"]
    assert rows[1] == {"sentence": "the plot; was dull", "label": "sadness"} and len(rows) == 3
    assert dm.label_names == ["joy", "sadness"]


def test_a_predict_txt_stays_one_text_per_line_beside_labelled_lines(tokenizer_dir, tmp_path):
    train = tmp_path / "train.txt"
    train.write_text("a good film;joy\nthe plot was dull;sadness\n")
    predict = tmp_path / "predict.txt"
    predict.write_text("a film; the plot\ngreat fun\n")
    dm = make_dm(tokenizer_dir, str(train), delimiter=";", predict_file=str(predict))
    assert dm._raw()["predict"]["text"] == ["a film; the plot", "great fun"]


def test_format_overrides_the_extension(tokenizer_dir, tmp_path):
    train = tmp_path / "questions.data"
    train.write_text("NUM:date When was the film made ?\nHUM:ind Who made it ?\n")
    with pytest.raises(ValueError, match=r"unsupported extension '\.data'.*set format="):
        make_dm(tokenizer_dir, str(train))
    dm = make_dm(tokenizer_dir, str(train), format="label_text")
    assert dm.label_names == ["HUM:ind", "NUM:date"]
    with pytest.raises(ValueError, match=r"format='lines' is not one of \['csv', 'json'"):
        make_dm(tokenizer_dir, str(train), format="lines")


def test_wrong_layouts_name_the_file_the_line_and_the_option(tokenizer_dir, tmp_path):
    txt = tmp_path / "train.txt"
    txt.write_text("a good film;joy\nthe plot was dull;sadness\n")
    with pytest.raises(
        ValueError, match=r"Column 'label' not found.*read as one text per line.*delimiter: ';'"
    ):
        make_dm(tokenizer_dir, str(txt))

    semicolons = write_csv(tmp_path / "train.csv", [("a good film", "joy")], sep=";")
    with pytest.raises(
        ValueError, match=r"one column: is the separator other than ','\? Set delimiter="
    ) as info:
        make_dm(tokenizer_dir, semicolons)
    assert f"in the train data (file {semicolons!r})" in str(info.value)
    dm = make_dm(tokenizer_dir, semicolons, delimiter=";")
    assert dm.label_names == ["joy"]

    ragged = tmp_path / "ragged.label"
    ragged.write_text("DESC:manner How did it develop ?\nHUM:ind\n")
    with pytest.raises(ValueError, match=r"ragged\.label', line 2: 'HUM:ind' is not `LABEL text`"):
        make_dm(tokenizer_dir, str(ragged))


def test_a_latin1_csv(tokenizer_dir, tmp_path):
    train = write_latin1(tmp_path / "train.csv", ["text,label", "caf\xe9 film,pos", "dull plot,neg"])
    with pytest.raises(UnicodeDecodeError, match=r"line 2, byte 14 \(0xe9\)"):
        make_dm(tokenizer_dir, train, text_column="text").setup("fit")
    dm = make_dm(tokenizer_dir, train, encoding="latin-1")
    assert dm._raw()["train"]["text"] == ["caf\xe9 film", "dull plot"]


def test_the_corpus_module_reads_latin1_text_and_prompts(tmp_path):
    text = write_latin1(tmp_path / "novel.txt", ["Le caf\xe9 est ouvert.", "Il pleut."] * 40)
    prompts = write_latin1(tmp_path / "prompts.txt", ["Le caf\xe9"])
    kwargs = dict(train_file=text, bpe_vocab_size=300, block_size=8)
    with pytest.raises(UnicodeDecodeError, match=r"novel\.txt' is not utf-8 text: line 1, byte 6"):
        TextCorpusDataModule(**kwargs, cache_dir=str(tmp_path / "c1")).setup("fit")
    with pytest.raises(UnicodeDecodeError, match=r"predict_file .*prompts\.txt' is not utf-8 text: line 1"):
        TextCorpusDataModule(
            predict_file=prompts, tokenizer=str(tmp_path), cache_dir=str(tmp_path / "c1")
        ).setup("predict")
    kwargs["predict_file"] = prompts
    dm = TextCorpusDataModule(**kwargs, encoding="latin-1", cache_dir=str(tmp_path / "c2"))
    dm.setup("fit")
    ids = dm.prepare_tokenizer()("Le caf\xe9")["input_ids"]
    assert dm.prepare_tokenizer().decode(ids) == "Le caf\xe9"
    dm.setup("predict")
    assert dm.predict_set.prompts == ["Le caf\xe9"]


@pytest.mark.slow
def test_trec_as_it_comes(shared_dir, tmp_path):
    # the original TREC training file: `COARSE:fine question` lines in Latin-1 (../shared/README.md)
    train = shared_dir / "data" / "trec6" / "train_5500.label"
    dm = TextDataModule(
        train_file=str(train),
        text_column="text",
        encoding="latin-1",
        val_fraction=0.1,
        wordpiece_vocab_size=2000,
        cache_dir=str(tmp_path / "cache"),
    )
    dm.setup("fit")
    assert len(dm.train_set) + len(dm.val_set) == 5452
    assert len(dm.label_names) == 50 and {n.split(":")[0] for n in dm.label_names} == {
        "ABBR",
        "DESC",
        "ENTY",
        "HUM",
        "LOC",
        "NUM",
    }


def test_a_decoding_error_is_located_only_when_one_happened(tmp_path):
    from lightning_recipes.data._text_files import located_decode_errors

    file = write_latin1(tmp_path / "train.csv", ["text,label", "caf\xe9,pos"])
    located = pytest.raises(UnicodeDecodeError, match=r"train file .* line 2, byte 14 \(0xe9\)")
    with located, located_decode_errors(file, "utf-8", "train file"):
        try:
            Path(file).read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:  # as datasets wraps it
            raise RuntimeError("An error occurred while generating the dataset") from exc
    # any other error passes through unchanged
    with pytest.raises(KeyError, match="other"), located_decode_errors(file, "utf-8", "train file"):
        raise KeyError("other")


def test_an_encoding_that_still_fails_is_located(tokenizer_dir, tmp_path):
    for name in ("train.label", "train.csv"):
        lines = LATIN1_LINES if name.endswith(".label") else ["text,label", "caf\xe9 film,pos"]
        train = write_latin1(tmp_path / name, lines)
        with pytest.raises(UnicodeDecodeError, match=r"is not ascii text: line 2, byte \d+ \(0xe9\)") as info:
            make_dm(tokenizer_dir, train, encoding="ascii")
        assert repr(train) in str(info.value) and "Set encoding=" in str(info.value)


def test_an_unknown_encoding_names_the_option_before_any_file_is_read(tmp_path):
    from lightning_recipes._suggest_data import load_texts

    known = r"encoding='latin-9x' is not a text encoding Python knows \(e\.g\. utf-8, latin-1"
    with pytest.raises(ValueError, match=known):
        TextDataModule(train_file=str(tmp_path / "train.label"), encoding="latin-9x")
    with pytest.raises(ValueError, match=known):
        TextCorpusDataModule(train_file=str(tmp_path / "a.txt"), encoding="latin-9x")
    with pytest.raises(ValueError, match=known):  # suggest --encoding reads through load_split_file
        load_texts(write_csv(tmp_path / "t.csv", [("a", "b")]), "text", "label", 8, 0, encoding="latin-9x")
    with pytest.raises(ValueError, match="encoding='base64' is not a text encoding"):
        TextDataModule(train_file=str(tmp_path / "train.csv"), encoding="base64")


def test_utf16_without_a_bom_names_the_file_and_the_option(tokenizer_dir, tmp_path):
    train = tmp_path / "train.csv"
    train.write_bytes("text,label\ncaf\xe9 film,pos\ndull plot,neg\n".encode("utf-16-le"))
    with pytest.raises(UnicodeError, match=r"train file .*train\.csv' is not utf-16 text: .*BOM") as info:
        make_dm(tokenizer_dir, str(train), encoding="utf-16")
    assert "utf-16-le or utf-16-be for utf-16 without a BOM" in str(info.value)
    dm = make_dm(tokenizer_dir, str(train), encoding="utf-16-le")
    assert dm._raw()["train"]["text"] == ["caf\xe9 film", "dull plot"]
    novel = tmp_path / "novel.txt"
    novel.write_bytes("Le caf\xe9 est ouvert.\n".encode("utf-16-le"))
    with pytest.raises(UnicodeError, match=r"text file .*novel\.txt' is not utf-16 text: .*BOM.*encoding="):
        list(TextCorpusDataModule(str(novel), encoding="utf-16")._documents("train"))


def test_a_utf16_file_is_located_as_one_stream(tmp_path):
    from lightning_recipes.data._text_files import check_decodes

    file = tmp_path / "train.label"
    file.write_bytes("pos ok\npos caf\xe9\n".encode("utf-16") + b"\xff")  # 2 + 2 * 16 bytes, then a stray one
    with pytest.raises(UnicodeDecodeError, match=r"is not utf-16 text: line 3, byte 34 \(0xff\)"):
        check_decodes(file, "utf-16", "train file")
    file.write_bytes("pos ok\npos caf\xe9\n".encode("utf-16"))
    check_decodes(file, "utf-16", "train file")  # a good file passes


def corpus(tmp_path: Path, train: Path, **kwargs) -> TextCorpusDataModule:
    options = {"bpe_vocab_size": 270, "block_size": 4, "cache_dir": str(tmp_path / "cache")}
    return TextCorpusDataModule(str(train), **{**options, **kwargs})


def test_the_corpus_reads_a_semicolon_table_with_delimiter(tmp_path):
    sentences = ["a good film , really", "the plot was dull", "great fun"]
    table = Path(write_csv(tmp_path / "reviews.csv", [(s, i) for i, s in enumerate(sentences)], sep=";"))
    with pytest.raises(
        ValueError,
        match=r"'text' not in train file .*reviews\.csv'.*holds ';': is the separator other than ','\? Set",
    ):
        corpus(tmp_path, table).tokenize("train")
    dm = corpus(tmp_path, table, delimiter=";", val_fraction=0.0)
    assert list(dm._documents("train")) == [[s] for s in sentences]
    dm.setup("fit")
    tok = dm.prepare_tokenizer()
    assert tok.decode(dm.tokenize("train").tolist()).split("<|endoftext|>")[:3] == sentences
    keys = {
        corpus(tmp_path, table, **how)._source_key("train")
        for how in ({}, {"delimiter": ";"}, {"format": "csv"})
    }
    assert len(keys) == 3  # the token cache and the trained tokenizer are keyed by how the files are read


def test_the_corpus_format_overrides_the_extension(tmp_path):
    questions = tmp_path / "questions.data"
    questions.write_text("NUM:date When was the film made ?\nHUM:ind Who made it ?\n")
    dm = corpus(tmp_path, questions, format="label_text")
    assert list(dm._documents("train")) == [["When was the film made ?"], ["Who made it ?"]]  # the text part
    lines = tmp_path / "lines.txt"
    lines.write_text("a good film;joy\nthe plot; was dull;sadness\n")
    assert list(corpus(tmp_path, lines, delimiter=";")._documents("train")) == [[lines.read_text()]]
    texts = corpus(tmp_path, lines, delimiter=";", format="text_label")._documents("train")
    assert list(texts) == [["a good film"], ["the plot; was dull"]]
    table = Path(write_csv(tmp_path / "table.csv", [("a good film", "joy")]))
    assert list(corpus(tmp_path, table, format="text")._documents("train")) == [[table.read_text()]]
    notes = tmp_path / "notes.md"
    notes.write_text('{"text": "one"}\n{"text": "two"}\n')
    assert list(corpus(tmp_path, notes, format="json")._documents("train")) == [["one"], ["two"]]
    with pytest.raises(ValueError, match=r"format='lines' is not one of \['csv', 'json'"):
        corpus(tmp_path, notes, format="lines")
