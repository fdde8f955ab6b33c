"""Reading image splits: class-subfolder folders and ``path,label`` CSV files; the images' content hash."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_warn

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def content_hash(path: Path) -> str:
    """The file's content hash: equal for exact copies, whatever their names."""
    return hashlib.sha1(Path(path).read_bytes(), usedforsecurity=False).hexdigest()


def folder_samples(folder: Path) -> dict[str, list[Path]]:
    """``{class name: [image paths]}`` from ``folder/<class>/*.<image extension>``."""
    if not folder.is_dir():
        raise FileNotFoundError(f"Image folder {folder} does not exist")
    found: dict[str, list[Path]] = {}
    skipped: list[Path] = []
    for d in sorted(folder.iterdir()):
        if d.is_dir():
            files = sorted(p for p in d.rglob("*") if p.is_file() and not p.name.startswith("."))
            found[d.name] = [p for p in files if p.suffix.lower() in IMG_EXTENSIONS]
            skipped += [p for p in files if p.suffix.lower() not in IMG_EXTENSIONS]
    empty = [name for name, paths in found.items() if not paths]
    if empty:
        rank_zero_warn(f"Class folder(s) {empty} in {folder} hold no images and are left out of the classes")
    if skipped:
        kinds = sorted({p.suffix.lower() or "(none)" for p in skipped})
        rank_zero_warn(
            f"{len(skipped)} file(s) in {folder} skipped: extensions {kinds} are not images this data "
            f"module reads ({', '.join(IMG_EXTENSIONS)}); e.g. {skipped[0]}"
        )
    found = {name: paths for name, paths in found.items() if paths}
    if not found:
        raise ValueError(
            f"No images in {folder}: expected {folder}/<class name>/<image> with extensions {IMG_EXTENSIONS}"
        )
    return found


def csv_samples(
    path: Path, label_separator: str | None, options: dict[str, str | None]
) -> tuple[list[tuple[Path, list[str]]], dict[str, list[str]]]:
    """``(image path, [label names])`` rows of a ``path,label`` CSV, and the columns ``options`` name
    (``{"split_column": "split"}``: ``{"split": [values]}``). A path is absolute or relative to the CSV's
    folder."""
    if not path.is_file():
        raise FileNotFoundError(f"CSV file {path} does not exist")
    extra = {column: option for option, column in options.items() if column}
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        missing = [c for c in ("label", "path") if c not in fields]
        missing += [f"{column} ({option})" for column, option in extra.items() if column not in fields]
        if missing:
            raise ValueError(f"{path} lacks column(s) {missing}; it has {reader.fieldnames}")
        table = list(reader)
    if not table:
        raise ValueError(f"CSV file {path} has no rows")
    rows = []
    for number, row in enumerate(table, 1):
        image = path.parent / row["path"]  # an absolute path stays as it is
        if not image.is_file():
            raise FileNotFoundError(
                f"{path}, data row {number}: image {image} does not exist (a path in the CSV is absolute or "
                f"relative to the CSV's folder {path.parent})"
            )
        rows.append((image, row["label"].split(label_separator) if label_separator else [row["label"]]))
    return rows, {column: [row[column] for row in table] for column in extra}
