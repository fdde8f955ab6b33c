from __future__ import annotations

from collections import Counter

import pytest
import torch

from lightning_recipes import DigitsDataModule, ImageDataModule


def dm(**kwargs) -> ImageDataModule:
    kwargs.setdefault("num_workers", 0)
    kwargs.setdefault("image_size", 16)
    kwargs.setdefault("batch_size", 4)
    return ImageDataModule(**kwargs)


def test_split_folders(image_folder):
    root = image_folder(splits=("train", "val", "test"), per_class=4)
    data = dm(root=str(root))
    data.setup("fit")
    assert data.label_names == ["a", "b", "c"] and data.num_classes == 3
    assert (len(data.train_set), len(data.val_set), len(data.test_set)) == (12, 12, 12)
    images, targets, meta = next(iter(data.test_dataloader()))  # evaluation batches name their files
    assert images.shape == (4, 3, 16, 16) and targets.dtype == torch.long
    assert meta["path"] == [str(path) for path, _ in data.test_set.samples[:4]]


def test_single_folder_is_split_stratified_and_seeded(image_folder):
    root = image_folder(splits=("",), per_class=10)
    a, b = (
        dm(root=str(root), val_fraction=0.2, test_fraction=0.1),
        dm(root=str(root), val_fraction=0.2, test_fraction=0.1),
    )
    a.setup(), b.setup()
    assert (len(a.train_set), len(a.val_set), len(a.test_set)) == (21, 6, 3)
    assert Counter(t for _, t in a.val_set.samples) == {0: 2, 1: 2, 2: 2}
    assert a.val_set.samples == b.val_set.samples


def test_csv_single_and_multi_label(tmp_path, image_folder):
    root = image_folder(splits=("",), per_class=2)
    rows = [f"{p.relative_to(root)},{p.parent.name}" for p in sorted(root.rglob("*.png"))]
    (root / "train.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    data = dm(train_file=str(root / "train.csv"), val_fraction=0.0)
    data.setup()
    assert data.label_names == ["a", "b", "c"] and len(data.train_set) == 6
    (root / "multi.csv").write_text("path,label\na/0.png,a|c\nb/0.png,b\n")
    multi = dm(train_file=str(root / "multi.csv"), label_separator="|", val_fraction=0.0)
    multi.setup()
    assert multi.multilabel and multi.train_set.samples[0][1].tolist() == [1.0, 0.0, 1.0]


def test_transforms_follow_explicit_data_config(image_folder):
    root = image_folder(splits=("train",), per_class=2)
    data = ImageDataModule(
        root=str(root),
        val_fraction=0.0,
        num_workers=0,
        data_config={"input_size": (3, 24, 24), "mean": (0.5,) * 3, "std": (0.5,) * 3},
    )
    data.setup()
    assert data.train_set[0][0].shape == (3, 24, 24)


def test_errors_name_the_problem(tmp_path, image_folder):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        dm(root=str(tmp_path / "missing")).setup()
    (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="No images in"):
        dm(root=str(tmp_path / "empty")).setup()
    with pytest.raises(ValueError, match="exactly one of root"):
        ImageDataModule()
    root = image_folder(splits=("train", "val"), per_class=2)
    (root / "val" / "zebra").mkdir()
    (root / "val" / "zebra" / "0.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"Unknown label\(s\) \['zebra'\].*known classes: \['a', 'b', 'c'\]"):
        dm(root=str(root)).setup()
    (root / "train" / "a" / "broken.png").write_bytes(b"not an image")
    data = dm(root=str(root), label_names=["a", "b", "c", "zebra"])
    data.setup()
    broken = [i for i, (p, _) in enumerate(data.train_set.samples) if p.name == "broken.png"][0]
    with pytest.raises(ValueError, match="Cannot read image .*broken.png"):
        data.train_set[broken]
    (tmp_path / "bad.csv").write_text("file,target\nx.png,a\n")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['label', 'path'\]"):
        dm(train_file=str(tmp_path / "bad.csv")).setup()


def test_digits_subset_and_few_shot_cap(tmp_path):
    data = DigitsDataModule(digits=[7, 3], train_per_class=5, root=str(tmp_path), image_size=32)
    data.setup()
    assert data.label_names == ["7", "3"]
    assert Counter(t for _, t in data.train_set.samples) == {0: 5, 1: 5}
    assert len(data.test_set) > 80
    with pytest.raises(ValueError, match="digits must be distinct"):
        DigitsDataModule(digits=[1, 1])


def test_empty_class_folders_and_skipped_files_are_reported_in_one_line_each(image_folder):
    root = image_folder(splits=("",), classes=("cat", "dog"), per_class=3)
    (root / "bird").mkdir()  # an empty class folder
    (root / "cat" / "anim.gif").write_bytes(b"GIF89a")  # not an extension the module reads
    (root / "dog" / "notes.txt").write_text("x")
    dm = ImageDataModule(root=str(root), val_fraction=0.0, data_config={"input_size": (3, 16, 16)})
    with pytest.warns(UserWarning) as record:
        spec = dm.data_spec()
    messages = [str(w.message) for w in record]
    assert spec.label_names == ["cat", "dog"]
    assert [m for m in messages if "hold no images" in m] == [
        f"Class folder(s) ['bird'] in {root} hold no images and are left out of the classes"
    ]
    skipped = [m for m in messages if "skipped" in m]
    assert len(skipped) == 1 and skipped[0].startswith(
        f"2 file(s) in {root} skipped: extensions ['.gif', '.txt']"
    )
