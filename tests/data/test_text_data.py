"""TextDataModule over local csv/tsv/json/jsonl/parquet files with a tiny WordPiece tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lightning_recipes import TextDataModule

WORDS = [
    "good",
    "great",
    "fun",
    "bad",
    "awful",
    "dull",
    "film",
    "movie",
    "the",
    "plot",
    "was",
    "a",
    "very",
    "long",
    "and",
    "boring",
]


@pytest.fixture
def tokenizer_dir(tmp_path: Path) -> Path:
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    folder = tmp_path / "tok"
    folder.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    BertWordPieceTokenizer({w: i for i, w in enumerate(vocab)}, lowercase=True).save(
        str(folder / "tokenizer.json")
    )
    BertTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), model_max_length=64).save_pretrained(
        folder
    )
    return folder


def write_csv(path: Path, rows: list[tuple], header: tuple = ("text", "label"), sep: str = ",") -> str:
    path.write_text(sep.join(header) + "\n" + "\n".join(sep.join(map(str, r)) for r in rows) + "\n")
    return str(path)


def make_dm(tokenizer_dir: Path, train: str, **kwargs) -> TextDataModule:
    options = {
        "text_column": "text",
        "tokenizer": str(tokenizer_dir),
        "batch_size": 4,
        "cache_dir": str(tokenizer_dir.parent / "cache"),
    }
    dm = TextDataModule(train_file=train, **{**options, **kwargs})
    dm.setup("fit")
    return dm


ROWS = [("good film", "pos"), ("bad film", "neg"), ("great fun", "pos"), ("awful plot", "neg")]


def test_tsv_with_integer_labels_and_names(tokenizer_dir: Path, tmp_path: Path) -> None:
    # SST-2's layout: sentence<TAB>label with 0/1; quotes inside a sentence must survive (no CSV quoting).
    rows = [('a "good" film', 1), ("bad film", 0), ("dull", 0)]
    train = write_csv(tmp_path / "train.tsv", rows, ("sentence", "label"), "\t")
    dm = make_dm(tokenizer_dir, train, text_column="sentence", label_names=["negative", "positive"])
    assert dm.label_names == ["negative", "positive"] and dm.num_classes == 2
    assert dm.train_set["labels"] == [1, 0, 0]
    assert len(dm.train_set) == 3


def test_string_labels_sorted_and_unknown_label_named(tokenizer_dir: Path, tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", ROWS)
    dm = make_dm(tokenizer_dir, train)
    assert dm.label_names == ["neg", "pos"]
    assert dm.train_set["labels"] == [1, 0, 1, 0]
    val = write_csv(tmp_path / "val.csv", [("good", "pos"), ("meh", "neutral")])
    with pytest.raises(ValueError, match=r"Unknown label value\(s\) \['neutral'\] in the val data"):
        make_dm(tokenizer_dir, train, val_file=val)


def test_missing_column_lists_columns(tokenizer_dir: Path, tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", ROWS)
    with pytest.raises(
        ValueError,
        match=r"Column 'sentence' not found in the train data \(file .*train\.csv'\); "
        r"its columns are \['text', 'label'\]",
    ):
        make_dm(tokenizer_dir, train, text_column="sentence")
    with pytest.raises(ValueError, match=r"Column 'target' not found"):
        make_dm(tokenizer_dir, train, label_column="target")


def test_missing_file_and_bad_extension(tokenizer_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train file .*nope.csv"):
        make_dm(tokenizer_dir, str(tmp_path / "nope.csv"))
    (tmp_path / "data.xlsx").write_text("x")
    with pytest.raises(ValueError, match=r"unsupported extension"):
        make_dm(tokenizer_dir, str(tmp_path / "data.xlsx"))
    with pytest.raises(ValueError, match="exactly one of dataset"):
        TextDataModule()


@pytest.mark.parametrize("fmt", ["json", "jsonl", "parquet"])
def test_json_jsonl_parquet(tokenizer_dir: Path, tmp_path: Path, fmt: str) -> None:
    records = [{"text": t, "label": label} for t, label in ROWS]
    path = tmp_path / f"train.{fmt}"
    if fmt == "parquet":
        import pandas as pd

        pd.DataFrame(records).to_parquet(path)
    elif fmt == "json":
        path.write_text(json.dumps(records))
    else:
        path.write_text("\n".join(json.dumps(r) for r in records))
    dm = make_dm(tokenizer_dir, str(path))
    assert dm.label_names == ["neg", "pos"] and len(dm.train_set) == 4


def test_sentence_pairs_use_token_types(tokenizer_dir: Path, tmp_path: Path) -> None:
    rows = [("good film", "great fun", 1), ("bad plot", "good film", 0)]
    train = write_csv(tmp_path / "train.csv", rows, ("premise", "hypothesis", "label"))
    dm = make_dm(tokenizer_dir, train, text_column="premise", text_pair_column="hypothesis")
    first = dm.train_set[0]
    # [CLS] good film [SEP] great fun [SEP]: the second segment has token type 1.
    assert first["input_ids"] == [2, 5, 11, 3, 6, 7, 3]
    assert first["token_type_ids"] == [0, 0, 0, 0, 1, 1, 1]


def test_multilabel_and_regression_targets(tokenizer_dir: Path, tmp_path: Path) -> None:
    train = write_csv(tmp_path / "ml.csv", [("good film", "pos|film"), ("bad", "neg")])
    dm = make_dm(tokenizer_dir, train, task="multilabel", label_separator="|")
    assert dm.label_names == ["film", "neg", "pos"]
    batch = next(iter(dm.train_dataloader()))
    assert batch["labels"].dtype == torch.float32
    assert sorted(batch["labels"].tolist()) == [[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]]
    train = write_csv(tmp_path / "reg.csv", [("good film", 4.5), ("bad", 1)])
    dm = make_dm(tokenizer_dir, train, task="regression")
    assert dm.num_classes == 1 and dm.label_names is None
    assert sorted(next(iter(dm.train_dataloader()))["labels"].tolist()) == [1.0, 4.5]


def test_dynamic_padding_and_truncation(tokenizer_dir: Path, tmp_path: Path) -> None:
    long = " ".join(["very"] * 30)
    train = write_csv(tmp_path / "train.csv", [("good", "pos"), ("bad film", "neg"), (long, "pos")])
    dm = make_dm(tokenizer_dir, train, max_length=10, batch_size=2, eval_batch_size=3, val_fraction=0.0)
    assert [len(ids) for ids in dm.train_set["input_ids"]] == [3, 4, 10]
    assert dm.lengths["train"] == [3, 4, 10]
    loader = dm._loader("train")  # unshuffled view of the same collate path
    shapes = [b["input_ids"].shape for b in loader]
    assert shapes == [torch.Size([3, 10])]  # eval batch size 3, padded to the longest row only
    batch = dm.collate([dm.train_set[0], dm.train_set[1]])
    assert batch["input_ids"].shape == (2, 4)
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]


def test_group_by_length_cuts_padding(tokenizer_dir: Path, tmp_path: Path) -> None:
    import random

    rng = random.Random(0)
    rows = [
        (" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40))), rng.choice("ab"))
        for _ in range(1024)
    ]
    train = write_csv(tmp_path / "train.csv", rows)

    def padded_tokens(group: bool) -> tuple[int, list[int]]:
        torch.manual_seed(0)
        dm = make_dm(tokenizer_dir, train, batch_size=16, group_by_length=group)
        batches = list(dm.train_dataloader())
        seen = sorted(i for b in batches for i in b["input_ids"][:, 1].tolist())
        return sum(b["input_ids"].numel() for b in batches), seen

    random_tokens, random_seen = padded_tokens(False)
    grouped_tokens, grouped_seen = padded_tokens(True)
    assert grouped_seen == random_seen  # the same examples, each once
    real = sum(make_dm(tokenizer_dir, train).lengths["train"])
    assert grouped_tokens < 0.7 * random_tokens
    assert real <= grouped_tokens < 1.1 * real  # 1024 rows: megabatches of 256 sorted by length


def test_length_grouped_order_is_seeded_per_epoch(tokenizer_dir: Path, tmp_path: Path) -> None:
    # Every DDP rank must draw the same order (Lightning shards it), whatever the global RNG does.
    rows = [(" ".join(["good"] * (1 + i % 30)), "ab"[i % 2]) for i in range(200)]
    train = write_csv(tmp_path / "train.csv", rows)
    orders = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        sampler = make_dm(tokenizer_dir, train, batch_size=8, group_by_length=True).train_dataloader().sampler
        orders.append([list(sampler), list(sampler)])
    assert orders[0] == orders[1]  # same seed: same order on every "rank"
    epoch0, epoch1 = orders[0]
    assert epoch0 != epoch1 and sorted(epoch0) == sorted(epoch1) == list(range(200))


def test_tokenised_once_and_cached(
    tokenizer_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train = write_csv(tmp_path / "train.csv", ROWS)
    first = make_dm(tokenizer_dir, train)
    files = [f["filename"] for f in first.train_set.cache_files]
    calls = []
    from transformers import PreTrainedTokenizerBase

    original = PreTrainedTokenizerBase.__call__
    monkeypatch.setattr(
        PreTrainedTokenizerBase, "__call__", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    second = make_dm(tokenizer_dir, train)
    assert calls == []  # read back from the cache, not tokenised again
    assert [f["filename"] for f in second.train_set.cache_files] == files
    assert second.train_set["input_ids"] == first.train_set["input_ids"]
    write_csv(tmp_path / "train.csv", [*ROWS, ("good good good", "pos")])  # changed data: re-read
    assert len(make_dm(tokenizer_dir, train).train_set) == 5
    calls.clear()
    assert second.train_set["input_ids"] == first.train_set["input_ids"]
    third = make_dm(tokenizer_dir, train, max_length=2)  # other options: a new cache entry
    assert calls and all(len(ids) == 2 for ids in third.train_set["input_ids"])


def test_train_size_and_val_fraction_are_seeded(tokenizer_dir: Path, tmp_path: Path) -> None:
    # distinct texts (exact copies would be kept on one side of the split, see test_splits.py)
    rows = [(" ".join(WORDS[: 1 + i % 10] + [WORDS[10 + i // 10]]), "ab"[i % 2]) for i in range(40)]
    train = write_csv(tmp_path / "train.csv", rows)
    a = make_dm(tokenizer_dir, train, train_size=20, val_fraction=0.25)
    b = make_dm(tokenizer_dir, train, train_size=20, val_fraction=0.25)
    c = make_dm(tokenizer_dir, train, train_size=20, val_fraction=0.25, seed=1)
    assert (len(a.train_set), len(a.val_set)) == (15, 5)
    assert a.train_set["input_ids"] == b.train_set["input_ids"]
    assert a.train_set["input_ids"] != c.train_set["input_ids"]


def test_no_tokenizer_and_no_split_errors(tmp_path: Path, tokenizer_dir: Path) -> None:
    train = write_csv(tmp_path / "train.csv", ROWS)
    dm = TextDataModule(train_file=train, text_column="text", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="needs a tokenizer"):
        dm.setup("fit")
    dm = make_dm(tokenizer_dir, train)
    with pytest.raises(ValueError, match="No test data: give test_file"):
        dm.test_dataloader()


def test_dataset_folder_splits_and_hidden_test_labels(tokenizer_dir: Path, tmp_path: Path) -> None:
    # A dataset name may be a local dataset folder (as the Hub's layout): splits come from file names.
    folder = tmp_path / "glue_like"
    folder.mkdir()
    write_csv(folder / "train.csv", [("good film", 1), ("bad film", 0)], ("sentence", "label"))
    write_csv(folder / "test.csv", [("fun", -1), ("dull", -1)], ("sentence", "label"))
    options = {"dataset": str(folder), "text_column": "sentence", "tokenizer": str(tokenizer_dir)}
    dm = TextDataModule(**options, test_split=None, cache_dir=str(tmp_path / "cache"))
    dm.setup("fit")
    assert len(dm.train_set) == 2 and dm.label_names == ["0", "1"]
    with pytest.raises(ValueError, match=r"val_split='validation' is not a split of .*\['train', 'test'\]"):
        dm.val_dataloader()
    dm = TextDataModule(**options, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(
        ValueError, match=r"Unknown label value\(s\) \['-1'\] in the test data.*validation split"
    ):
        dm.setup("fit")


def test_unreachable_hub_dataset_names_it(tokenizer_dir: Path, tmp_path: Path) -> None:
    from lightning_recipes._hub import PretrainedLoadError

    dm = TextDataModule(
        dataset="no-such-org/no-such-dataset", tokenizer=str(tokenizer_dir), cache_dir=str(tmp_path)
    )
    with pytest.raises(PretrainedLoadError, match="no-such-org/no-such-dataset.*train_file"):
        dm.setup("fit")


def test_an_empty_or_header_only_file_is_named(tmp_path: Path) -> None:
    from lightning_recipes.data._text_files import load_split_file

    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text("text,label\n")
    with pytest.raises(ValueError, match=r"train file '.*empty.csv' is empty"):
        load_split_file(str(tmp_path / "empty.csv"), "train", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=r"val file '.*header.csv' has no rows"):
        load_split_file(str(tmp_path / "header.csv"), "val", str(tmp_path / "cache"))


def test_length_grouped_order_follows_the_trainer_epoch_on_resume(
    tokenizer_dir: Path, tmp_path: Path
) -> None:
    """Lightning calls set_epoch(N) before epoch N: a run resumed at epoch 2 draws epoch 2's order."""
    rows = [(" ".join(["good"] * (1 + i % 30)), "ab"[i % 2]) for i in range(200)]
    train = write_csv(tmp_path / "train.csv", rows)
    uninterrupted = (
        make_dm(tokenizer_dir, train, batch_size=8, group_by_length=True).train_dataloader().sampler
    )
    orders = []
    for epoch in range(3):
        uninterrupted.set_epoch(epoch)
        orders.append(list(uninterrupted))
    resumed = make_dm(tokenizer_dir, train, batch_size=8, group_by_length=True).train_dataloader().sampler
    resumed.set_epoch(2)
    assert list(resumed) == orders[2] and orders[2] != orders[0]
