"""TextCorpusDataModule (lightning_recipes/data/corpus.py): tokenising, caching, blocks and splits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_recipes import TextCorpusDataModule
from lightning_recipes.data._blocks import chunk_blocks, expand_files
from lightning_recipes.data.bpe import train_bpe_tokenizer


@pytest.fixture
def corpus(tmp_path: Path, write_corpus) -> dict[str, Path]:
    files = [write_corpus(tmp_path / "text" / f"part{i}.txt", lines=60, seed=i) for i in range(3)]
    tok = tmp_path / "tok"
    train_bpe_tokenizer(files, vocab_size=300, output_dir=tok)
    return {"root": tmp_path / "text", "tokenizer": tok, "cache": tmp_path / "cache"}


def make(corpus: dict[str, Path], **kwargs) -> TextCorpusDataModule:
    options = {
        "train_file": str(corpus["root"] / "*.txt"),
        "tokenizer": str(corpus["tokenizer"]),
        "block_size": 16,
        "batch_size": 4,
        "cache_dir": str(corpus["cache"]),
    }
    return TextCorpusDataModule(**{**options, **kwargs})


def rows(blocks: torch.Tensor) -> list[tuple[int, ...]]:
    return sorted(tuple(r) for r in blocks.tolist())


def test_chunk_blocks_loses_and_duplicates_nothing() -> None:
    tokens = torch.arange(1003)
    blocks = chunk_blocks(tokens, 10)
    assert blocks.shape == (100, 10)
    assert torch.equal(blocks.flatten(), torch.arange(1000))  # in order, each once; the 3-token tail dropped
    assert chunk_blocks(torch.arange(9), 10).shape == (0, 10)
    with pytest.raises(ValueError, match="block_size must be >= 2"):
        chunk_blocks(tokens, 1)


def test_tokens_are_the_files_text_joined_by_eos(corpus: dict[str, Path]) -> None:
    dm = make(corpus)
    tok = dm.prepare_tokenizer()
    expected: list[int] = []
    for path in sorted(corpus["root"].glob("*.txt")):
        expected += tok(path.read_text(), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    tokens = dm.tokenize("train")
    assert tokens.dtype == torch.int32
    assert tokens.tolist() == expected
    assert tok.decode(tokens.tolist()).count("<|endoftext|>") == 3


def test_splits_partition_the_blocks_exactly(corpus: dict[str, Path]) -> None:
    dm = make(corpus, val_fraction=0.2, test_fraction=0.1)
    dm.setup("fit")
    tokens = dm.tokenize("train")
    every = chunk_blocks(tokens, 16)
    assert tokens.numel() - every.numel() < 16  # only the tail shorter than a block is dropped
    parts = [dm.train_set.blocks, dm.val_set.blocks, dm.test_set.blocks]
    n = every.shape[0]
    assert [p.shape[0] for p in parts] == [
        n - round(0.2 * n) - round(0.1 * n),
        round(0.2 * n),
        round(0.1 * n),
    ]
    # the union of the splits is every block exactly once (as a multiset of rows)
    assert rows(torch.cat(parts)) == rows(every)
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].dtype == torch.long and batch["input_ids"].shape == (4, 16)


def test_split_is_seeded(corpus: dict[str, Path]) -> None:
    def val_rows(seed: int) -> list[tuple[int, ...]]:
        dm = make(corpus, seed=seed, val_fraction=0.3)
        dm.setup("fit")
        return rows(dm.val_set.blocks)

    assert val_rows(1) == val_rows(1)
    assert val_rows(1) != val_rows(2)


def test_val_file_replaces_the_random_split(corpus: dict[str, Path], tmp_path: Path, write_corpus) -> None:
    held_out = write_corpus(tmp_path / "held_out.txt", lines=30, seed=99)
    dm = make(corpus, val_file=str(held_out))
    dm.setup("fit")
    assert torch.equal(dm.val_set.blocks, chunk_blocks(dm.tokenize("val"), 16))
    assert torch.equal(dm.train_set.blocks, chunk_blocks(dm.tokenize("train"), 16))
    with pytest.raises(ValueError, match="No test data"):
        dm.test_dataloader()


def test_val_file_alone_serves_evaluation(corpus: dict[str, Path]) -> None:
    dm = make(corpus, train_file=None, val_file=str(corpus["root"] / "part1.txt"))
    dm.setup("validate")
    assert dm.train_set is None and dm.test_set is None
    assert torch.equal(dm.val_set.blocks, chunk_blocks(dm.tokenize("val"), 16))
    with pytest.raises(ValueError, match="No train data"):
        dm.train_dataloader()


def test_tokens_are_cached_and_invalidated_when_a_file_changes(corpus: dict[str, Path], monkeypatch) -> None:
    first = make(corpus).tokenize("train")
    assert len(list((corpus["cache"] / "corpus").glob("*.pt"))) == 1

    def fail(self, split):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(TextCorpusDataModule, "_documents", fail)
    assert torch.equal(make(corpus).tokenize("train"), first)
    monkeypatch.undo()
    path = corpus["root"] / "part0.txt"
    path.write_text(path.read_text() + "the king said.\n")
    second = make(corpus).tokenize("train")
    assert second.numel() > first.numel()
    assert len(list((corpus["cache"] / "corpus").glob("*.pt"))) == 2


def test_bpe_vocab_size_trains_and_reuses_a_tokenizer(
    corpus: dict[str, Path], tmp_path: Path, monkeypatch
) -> None:
    from transformers import AutoTokenizer

    out = tmp_path / "run" / "tokenizer"
    dm = make(corpus, tokenizer=None, bpe_vocab_size=290, tokenizer_dir=str(out))
    dm.prepare_data()
    assert len(dm.tokenizer) == 290
    assert AutoTokenizer.from_pretrained(str(out)).get_vocab() == dm.tokenizer.get_vocab()

    import lightning_recipes.data.corpus as corpus_module

    def fail(*args, **kwargs):
        raise AssertionError("the saved tokenizer should have been reused")

    monkeypatch.setattr(corpus_module, "train_bpe_tokenizer", fail)
    again = make(corpus, tokenizer=None, bpe_vocab_size=290, tokenizer_dir=str(out))
    assert again.prepare_tokenizer().get_vocab() == dm.tokenizer.get_vocab()
    with pytest.raises(AssertionError, match="reused"):  # another vocab size retrains
        make(corpus, tokenizer=None, bpe_vocab_size=280, tokenizer_dir=str(out)).prepare_tokenizer()


def test_datasets_dataset_with_validation_split(corpus: dict[str, Path], tmp_path: Path) -> None:
    import datasets

    lines = (corpus["root"] / "part0.txt").read_text().splitlines()
    data = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"content": lines[:40]}),
            "validation": datasets.Dataset.from_dict({"content": lines[40:]}),
        }
    )
    data.save_to_disk(str(tmp_path / "ds"))
    dm = TextCorpusDataModule(
        dataset=str(tmp_path / "ds"),
        text_column="content",
        tokenizer=str(corpus["tokenizer"]),
        block_size=8,
        cache_dir=str(corpus["cache"]),
    )
    dm.setup("fit")
    tok = dm.prepare_tokenizer()
    expected = [i for line in lines[40:] for i in tok(line)["input_ids"] + [tok.eos_token_id]]
    assert dm.tokenize("val").tolist() == expected  # one row = one document, each followed by EOS
    assert torch.equal(dm.val_set.blocks, chunk_blocks(torch.tensor(expected, dtype=torch.int32), 8))
    with pytest.raises(ValueError, match="Column 'text' not in dataset"):
        TextCorpusDataModule(dataset=str(tmp_path / "ds"), tokenizer=str(corpus["tokenizer"])).setup("fit")


def test_dataloader_settings(corpus: dict[str, Path]) -> None:
    dm = make(corpus, num_workers=2, batch_size=3)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert (loader.num_workers, loader.batch_size, loader.persistent_workers) == (2, 3, True)


def test_bad_input_names_the_problem(corpus: dict[str, Path], tmp_path: Path, write_corpus) -> None:
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        expand_files(str(tmp_path / "nothing-here" / "*.txt"))
    with pytest.raises(ValueError, match="at most one of tokenizer"):
        make(corpus, bpe_vocab_size=300)
    with pytest.raises(ValueError, match="needs a tokenizer.*connect"):  # neither, and no model connected
        make(corpus, tokenizer=None).prepare_tokenizer()
    with pytest.raises(ValueError, match="Give train_file"):
        TextCorpusDataModule(tokenizer="x")
    with pytest.raises(ValueError, match="not both"):
        TextCorpusDataModule(train_file="a.txt", dataset="wikitext", tokenizer="x")
    with pytest.raises(ValueError, match="give train_file too"):
        TextCorpusDataModule(val_file="a.txt", bpe_vocab_size=300)
    tiny = write_corpus(tmp_path / "tiny.txt", lines=1, seed=0)
    with pytest.raises(ValueError, match="fewer tokens than block_size=512"):
        make(corpus, train_file=str(tiny), block_size=512).setup("fit")


def test_dataset_from_a_local_folder_of_json_files(corpus: dict[str, Path], tmp_path: Path) -> None:
    import json

    lines = (corpus["root"] / "part2.txt").read_text().splitlines()
    folder = tmp_path / "jsonl"
    folder.mkdir()
    for split, rows in (("train", lines[:45]), ("validation", lines[45:])):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    dm = TextCorpusDataModule(
        dataset=str(folder), tokenizer=str(corpus["tokenizer"]), block_size=8, cache_dir=str(corpus["cache"])
    )
    dm.setup("fit")
    tok = dm.prepare_tokenizer()
    expected = [i for line in lines[:45] for i in tok(line)["input_ids"] + [tok.eos_token_id]]
    assert dm.tokenize("train").tolist() == expected
    assert dm.val_set is not None and dm.test_set is None


def test_an_empty_text_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match=r"empty\.txt'\] are empty"):
        expand_files(str(tmp_path / "*.txt"))


def test_table_files_give_the_rows_of_text_column(corpus: dict[str, Path], tmp_path: Path) -> None:
    table = tmp_path / "reviews.tsv"
    sentences = ["a good film .", 'it \'s "bad" , really', "the king said"]
    rows = "".join(f"{s}\t{i % 2}\ttitle {i}\n" for i, s in enumerate(sentences))
    table.write_text("sentence\tlabel\ttitle\n" + rows)
    dm = make(corpus, train_file=str(table), text_column="sentence", val_fraction=0.0)
    tok = dm.prepare_tokenizer()
    eos = [tok.eos_token_id]
    expected = [t for s in sentences for t in tok(s, add_special_tokens=False)["input_ids"] + eos]
    assert dm.tokenize("train").tolist() == expected  # each row one document; quotes kept, labels left out
    titles = make(corpus, train_file=str(table), text_column="title", val_fraction=0.0).tokenize("train")
    assert tok.decode(titles.tolist()) == "title 0<|endoftext|>title 1<|endoftext|>title 2<|endoftext|>"
    with pytest.raises(ValueError, match=r"Column 'text' not in train file .*reviews.tsv.*'sentence'"):
        make(corpus, train_file=str(table), val_fraction=0.0).tokenize("train")
    with pytest.raises(ValueError, match="Column 'label' of train file .* holds int64, not text"):
        make(corpus, train_file=str(table), text_column="label", val_fraction=0.0).tokenize("train")
    bpe = TextCorpusDataModule(
        str(table), text_column="sentence", bpe_vocab_size=270, cache_dir=str(tmp_path)
    )
    reference = train_bpe_tokenizer(texts=sentences, vocab_size=270)  # the column, not the raw file
    assert bpe.prepare_tokenizer().backend_tokenizer.to_str() == reference.backend_tokenizer.to_str()
