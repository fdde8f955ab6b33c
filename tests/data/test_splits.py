"""Splits a user can trust: split column, groups, exact duplicates and CSV paths, for images and texts."""

from __future__ import annotations

import logging
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_text_models import make_tokenizer

from lightning_recipes import ImageDataModule, TextDataModule

ALLOWED = "allowed values (any case): train, val, validation, valid, dev, test"


def png(path: Path, value: int) -> Path:
    """A tiny PNG whose pixels (and so bytes) differ for each ``value``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((4, 4, 3), np.uint8)
    pixels.flat[:3] = (value % 256, value // 256, 7)
    Image.fromarray(pixels).save(path)
    return path


def images(**kwargs) -> ImageDataModule:
    return ImageDataModule(**{"num_workers": 0, "image_size": 8, "batch_size": 4, **kwargs})


def paths(dataset) -> list[str]:
    return sorted(p.name for p, _ in dataset.samples)


def write_table(path: Path, header: str, rows: list[str]) -> str:
    path.write_text("\n".join([header, *rows]) + "\n")
    return str(path)


def info_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("Exact duplicates")]


# -- split column ---------------------------------------------------------------------------------
def test_image_split_column_is_honoured_and_val_fraction_carves_nothing(tmp_path: Path) -> None:
    values = ["train", "Train", "TRAIN", "validation", "dev", "test", " Test ", "train", "valid", "val"]
    rows = [f"img/{i}.png,{'ab'[i % 2]},{v}" for i, v in enumerate(values)]
    for i in range(len(values)):
        png(tmp_path / "img" / f"{i}.png", i)
    csv = write_table(tmp_path / "labels.csv", "path,label,split", rows)
    data = images(train_file=csv, split_column="split", val_fraction=0.3)
    data.setup("fit")
    assert paths(data.train_set) == ["0.png", "1.png", "2.png", "7.png"]
    assert paths(data.val_set) == ["3.png", "4.png", "8.png", "9.png"]
    assert paths(data.test_set) == ["5.png", "6.png"]
    # a column without val rows: val_fraction carves validation out of the column's train rows
    only = write_table(tmp_path / "only.csv", "path,label,split", [rows[i] for i in (0, 1, 2, 7, 5, 6)])
    carved = images(train_file=only, split_column="split", val_fraction=0.25)
    carved.setup("fit")
    assert (len(carved.train_set), len(carved.val_set), paths(carved.test_set)) == (3, 1, ["5.png", "6.png"])
    assert set(paths(carved.train_set) + paths(carved.val_set)) == {"0.png", "1.png", "2.png", "7.png"}


def test_text_split_column_is_honoured(tmp_path: Path) -> None:
    rows = ["good film,pos,train", "bad film,neg,TRAIN", "great fun,pos,Dev", "awful plot,neg,test"]
    train = write_table(tmp_path / "all.csv", "text,label,split", rows)
    data = TextDataModule(
        train_file=train,
        split_column="split",
        val_fraction=0.5,
        text_column="text",
        tokenizer=str(make_tokenizer(tmp_path / "tok")),
        cache_dir=str(tmp_path / "cache"),
    )
    data.setup("fit")
    assert (len(data.train_set), len(data.val_set), len(data.test_set)) == (2, 1, 1)
    assert data.label_names == ["neg", "pos"] and data.val_set["labels"] == [1]


@pytest.mark.parametrize("kind", ["image", "text"])
def test_unknown_split_value_names_file_row_and_allowed_values(tmp_path: Path, kind: str) -> None:
    png(tmp_path / "a.png", 1)
    rows = ["a.png,x,train", "a.png,x,val", "a.png,x,holdout"]
    csv = write_table(tmp_path / "labels.csv", "path,label,split", rows)
    message = f"{csv}, data row 3: split_column 'split' holds 'holdout', not a split; {ALLOWED}"
    with pytest.raises(ValueError, match=re.escape(message)):
        if kind == "image":
            images(train_file=csv, split_column="split").setup()
        else:
            TextDataModule(train_file=csv, text_column="path", split_column="split", tokenizer="x")._raw()


def test_split_column_with_val_or_test_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split_column='split'.*val_file and test_file give"):
        images(train_file="a.csv", val_file="b.csv", test_file="c.csv", split_column="split")
    with pytest.raises(ValueError, match="split_column='split'.*test_file give.*use one or the other"):
        TextDataModule(train_file="a.csv", test_file="b.csv", split_column="split")
    with pytest.raises(ValueError, match="name columns of train_file"):
        images(root=str(tmp_path), group_column="patient")
    with pytest.raises(ValueError, match=r"duplicates='remove' is not one of \['keep', 'drop'\]"):
        images(root=str(tmp_path), duplicates="remove")
    png(tmp_path / "a.png", 1)
    plain = write_table(tmp_path / "plain.csv", "path,label", ["a.png,x"])
    with pytest.raises(ValueError, match=re.escape("lacks column(s) ['split (split_column)']; it has")):
        images(train_file=plain, split_column="split").setup()
    with pytest.raises(ValueError, match=re.escape("Column 'patient' not found in the train data")):
        TextDataModule(train_file=plain, text_column="path", group_column="patient")._raw()


# -- groups ---------------------------------------------------------------------------------------
def test_image_groups_stay_on_one_side_over_many_seeds(tmp_path: Path) -> None:
    rows = []
    for i in range(36):  # 9 patients of 4 scans each, in two classes
        png(tmp_path / "scans" / f"{i}.png", i)
        rows.append(f"scans/{i}.png,{'ab'[(i // 4) % 2]},p{i // 4}")
    csv = write_table(tmp_path / "scans.csv", "path,label,patient", rows)
    group = {f"{i}.png": f"p{i // 4}" for i in range(36)}
    val_sets = set()
    for seed in range(12):
        data = images(train_file=csv, group_column="patient", val_fraction=0.25, seed=seed)
        data.setup("fit")
        train, val = ({group[name] for name in paths(ds)} for ds in (data.train_set, data.val_set))
        assert not train & val and len(train | val) == 9
        assert len(data.val_set) % 4 == 0 and len(data.val_set) == 4 * 3  # 3 of the 9 patients, whole
        val_sets.add(frozenset(val))
    assert len(val_sets) > 3  # the seed moves the split; the groups stay whole


def test_text_groups_stay_on_one_side(tmp_path: Path) -> None:
    words = ["good", "great", "fun", "bad", "awful", "dull", "film", "movie", "plot", "actors"]
    rows = [f"{words[i % 10]} {words[(i // 10) % 10]} {i},{'ab'[i % 2]},s{i // 5}" for i in range(40)]
    train = write_table(tmp_path / "train.csv", "text,label,speaker", rows)
    tokenizer = str(make_tokenizer(tmp_path / "tok"))
    for seed in range(5):
        data = TextDataModule(
            train_file=train,
            group_column="speaker",
            val_fraction=0.25,
            seed=seed,
            text_column="text",
            tokenizer=tokenizer,
            cache_dir=str(tmp_path / "cache"),
        )
        raw = data._raw()  # the rows as read and split, before tokenising
        train_groups, val_groups = (set(raw[s]["speaker"]) for s in ("train", "val"))
        assert not train_groups & val_groups and len(val_groups) == 2 and len(raw["val"]) == 10


def test_a_group_the_given_splits_put_on_two_sides_is_named(tmp_path: Path) -> None:
    for i in range(5):
        png(tmp_path / f"{i}.png", i)
    rows = ["0.png,a,train,p1", "1.png,a,train,p1", "2.png,b,train,p2", "3.png,b,val,p2", "4.png,a,test,p1"]
    csv = write_table(tmp_path / "labels.csv", "path,label,split,patient", rows)
    expected = (
        f"group_column 'patient': group 'p1' is in train ({csv} data rows 1, 2) and in test "
        f"({csv} data row 5) (1 more group(s) span splits too); a group's rows must all be in one split"
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        images(train_file=csv, split_column="split", group_column="patient").setup()
    text = write_table(tmp_path / "texts.csv", "text,label,split,speaker", ["a,x,train,s1", "b,x,test,s1"])
    with pytest.raises(
        ValueError, match=re.escape("group 's1' is in train (" + text + " data row 1) and in test")
    ):
        TextDataModule(
            train_file=text, text_column="text", split_column="split", group_column="speaker"
        )._raw()


# -- exact duplicates -----------------------------------------------------------------------------
def copies_folder(root: Path, unique: int = 20, copies: int = 3) -> Path:
    """``root/<class>/`` with ``unique`` distinct images and ``copies`` byte-identical copies of some."""
    for i in range(unique):
        png(root / "ab"[i % 2] / f"{i}.png", i)
    for i in range(copies):
        shutil.copy(root / "ab"[i % 2] / f"{i}.png", root / "ab"[i % 2] / f"copy{i}.png")
    return root


def test_image_copies_stay_on_one_side_of_the_automatic_split(tmp_path, caplog) -> None:
    root = copies_folder(tmp_path / "imgs")
    for seed in range(10):
        caplog.clear()
        with caplog.at_level(logging.INFO):
            data = images(root=str(root), val_fraction=0.3, seed=seed)
            data.setup("fit")
        train, val = paths(data.train_set), paths(data.val_set)
        assert len(train) + len(val) == 23
        for i in range(3):
            assert (f"{i}.png" in val) == (f"copy{i}.png" in val), (seed, val)
        [line] = info_lines(caplog)
        assert re.fullmatch(
            r"Exact duplicates: 3 set\(s\) of identical images \(6 images\); kept on one side of the "
            r"val_fraction split \(ignoring them, \d+ val images? would have had a copy in train\); "
            r"set duplicates='drop' to keep only the first copy",
            line,
        )


def test_copies_across_given_splits_are_a_one_line_warning_or_dropped(tmp_path, caplog) -> None:
    root = tmp_path / "imgs"
    for i in range(8):
        png(root / "train" / "ab"[i % 2] / f"{i}.png", i)
        png(root / "test" / "ab"[i % 2] / f"t{i}.png", 100 + i)
    for i in range(3):  # 3 test images are exact copies of training images
        shutil.copy(root / "train" / "ab"[i % 2] / f"{i}.png", root / "test" / "ab"[i % 2] / f"leak{i}.png")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        kept = images(root=str(root), val_fraction=0.0)
        kept.setup()
    lines = [str(w.message) for w in seen if "Exact duplicates" in str(w.message)]
    assert lines == [
        "Exact duplicates: 3 set(s) of identical images (6 images); "
        "3 test images have an exact copy in train; "
        "set duplicates='drop' to keep only the first copy"
    ]
    assert len(kept.test_set) == 11
    with caplog.at_level(logging.INFO):
        dropped = images(root=str(root), val_fraction=0.0, duplicates="drop")
        dropped.setup()
    assert len(dropped.train_set) == 8 and paths(dropped.test_set) == [f"t{i}.png" for i in range(8)]
    assert info_lines(caplog) == [
        "Exact duplicates: 3 set(s) of identical images (6 images); "
        "3 test images have an exact copy in train; "
        "dropped 3 later copies (duplicates='drop')"
    ]


def test_text_duplicates_are_normalised_and_include_the_pair(tmp_path: Path, caplog) -> None:
    rows = [
        "good film,yes,pos",
        "Good   FILM ,yes,pos",  # the same text once casefolded and whitespace collapsed
        "good film,no,pos",  # another pair text: not a copy
        "bad plot,yes,neg",
        "awful plot,yes,neg",
        "dull movie,no,neg",
    ]
    train = write_table(tmp_path / "train.csv", "text,pair,label", rows)
    test = write_table(tmp_path / "test.csv", "text,pair,label", ["BAD plot,yes,neg", "great fun,no,pos"])
    options = {
        "text_column": "text",
        "text_pair_column": "pair",
        "tokenizer": str(make_tokenizer(tmp_path / "t")),
    }
    with caplog.at_level(logging.INFO), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        kept = TextDataModule(train_file=train, test_file=test, cache_dir=str(tmp_path / "c"), **options)
        kept.setup("fit")
    assert [str(w.message) for w in seen if "Exact duplicates" in str(w.message)] == [
        "Exact duplicates: 2 set(s) of identical texts (4 texts); 1 test text has an exact copy in train; "
        "set duplicates='drop' to keep only the first copy"
    ]
    assert (len(kept.train_set), len(kept.test_set)) == (6, 2)
    dropped = TextDataModule(
        train_file=train, test_file=test, duplicates="drop", cache_dir=str(tmp_path / "c"), **options
    )
    dropped.setup("fit")
    assert (len(dropped.train_set), len(dropped.test_set)) == (5, 1)
    assert dropped._raw()["train"]["text"][:2] == ["good film", "good film"]  # the first copy stays


# -- CSV paths ------------------------------------------------------------------------------------
def test_csv_paths_are_absolute_or_relative_to_the_csv_folder(tmp_path: Path, monkeypatch) -> None:
    relative = png(tmp_path / "data" / "imgs" / "rel.png", 1)
    absolute = png(tmp_path / "elsewhere" / "abs.png", 2)
    csv = write_table(tmp_path / "data" / "labels.csv", "path,label", ["imgs/rel.png,a", f"{absolute},b"])
    monkeypatch.chdir(tmp_path / "elsewhere")  # not the CSV's folder: relative paths still resolve
    data = images(train_file="../data/labels.csv", val_fraction=0.0)
    data.setup()
    assert [p.resolve() for p, _ in data.train_set.samples] == [relative, absolute]
    write_table(tmp_path / "data" / "bad.csv", "path,label", ["imgs/rel.png,a", "imgs/gone.png,b"])
    with pytest.raises(FileNotFoundError, match=re.escape("bad.csv, data row 2: image ")) as error:
        images(train_file=str(tmp_path / "data" / "bad.csv")).setup()
    assert f"is absolute or relative to the CSV's folder {Path(csv).parent}" in str(error.value)
