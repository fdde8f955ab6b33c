"""Reading text splits: from a local file, or the splits of a Hub dataset."""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import chain
from pathlib import Path
from typing import Any

from lightning_recipes._hub import hub_call
from lightning_recipes.data._splits import ORDER, Rows, check_groups, plan, split_positions

BUILDERS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".txt": "text",
    ".label": "label_text",
}
#: ``format`` values: the ``datasets`` builders, and the line formats read here.
FORMATS = ("csv", "json", "parquet", "text", "label_text", "text_label")
#: Line formats: ``text`` (one text per line), ``label_text`` (``LABEL text``: the first word is the label,
#: as in TREC's ``.label`` files), ``text_label`` (``text<delimiter>label``, split at the last delimiter).
LINE_FORMATS = ("text", "label_text", "text_label")


def file_format(path: str | Path, format: str | None = None, delimiter: str | None = None) -> str:
    """The format a file is read in: ``format`` if given, else by extension (``.txt`` with a ``delimiter``
    is ``text_label``).

    Example::

        >>> file_format("train.label"), file_format("train.txt"), file_format("train.txt", delimiter=";")
        ('label_text', 'text', 'text_label')
    """
    if format is not None:
        if format not in FORMATS:
            raise ValueError(f"format={format!r} is not one of {list(FORMATS)}")
        return format
    suffix = Path(path).suffix.lower()
    if suffix not in BUILDERS:
        raise ValueError(
            f"File {str(path)!r}: unsupported extension {suffix!r}; use one of {sorted(BUILDERS)} "
            f"or set format= to one of {list(FORMATS)}"
        )
    return "text_label" if BUILDERS[suffix] == "text" and delimiter else BUILDERS[suffix]


def check_encoding(encoding: str, option: str = "encoding") -> None:
    """Raise naming the option if ``encoding`` is not a text codec Python knows.

    Example::

        >>> check_encoding("latin-9x")
        Traceback (most recent call last):
        ValueError: encoding='latin-9x' is not a text encoding Python knows (e.g. utf-8, latin-1, cp1252)
    """
    try:
        known = getattr(codecs.lookup(encoding), "_is_text_encoding", True)
    except (LookupError, TypeError):
        known = False
    if not known:
        raise ValueError(
            f"{option}={encoding!r} is not a text encoding Python knows (e.g. utf-8, latin-1, cp1252)"
        )


def check_decodes(path: str | Path, encoding: str, what: str) -> None:
    """Raise a ``UnicodeDecodeError`` naming the file, the line and the byte, and the option to set,
    if ``path`` is not text in ``encoding``. The file is decoded as one stream (fed line by line), so a
    multi-byte encoding (utf-16) is located right too."""
    decoder = codecs.getincrementaldecoder(encoding)()
    fed = newlines = 0
    with open(path, "rb") as f:
        for piece in chain(f, [b""]):
            state = decoder.getstate()
            try:
                newlines += decoder.decode(piece, final=not piece).count("\n")
            except UnicodeDecodeError as exc:
                decoder.setstate(state)  # the text before the error, for its line number
                decoder.errors = "replace"
                before = decoder.decode(exc.object[len(state[0]) : exc.start]) if exc.start else ""
                line, byte = newlines + before.count("\n") + 1, fed - len(state[0]) + exc.start
                raise UnicodeDecodeError(
                    exc.encoding,
                    exc.object,
                    exc.start,
                    exc.end,
                    unreadable(
                        what,
                        path,
                        encoding,
                        f"line {line}, byte {byte} (0x{exc.object[exc.start]:02x}) cannot be decoded",
                    ),
                ) from None
            except UnicodeError as exc:  # no position: utf-16's "stream does not start with BOM"
                raise UnicodeError(unreadable(what, path, encoding, f"{exc} (line {newlines + 1})")) from None
            fed += len(piece)


def unreadable(what: str, path: str | Path, encoding: str, detail: str) -> str:
    """The message of a file that does not decode: the file, where, and the option to set."""
    name = codecs.lookup(encoding).name
    bom = f"; {name}-le or {name}-be for {name} without a BOM" if name in ("utf-16", "utf-32") else ""
    return (
        f"{what} {str(path)!r} is not {encoding} text: {detail}. Set encoding= to the "
        f"file's encoding (e.g. encoding: latin-1{bom})"
    )


@contextmanager
def located_decode_errors(path: str | Path, encoding: str, what: str) -> Iterator[None]:
    """Reading ``path`` inside this block: a decoding error (also one ``datasets`` wraps) becomes
    :func:`check_decodes`' error naming the line, the byte and the option; the file is read a second time
    only then. A ``UnicodeError`` with no position (pandas' "UTF-16 stream does not start with BOM"), or
    one the second reading does not find, names the file and the option."""
    try:
        yield
    except Exception as exc:
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, UnicodeError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            check_decodes(path, encoding, what)
            raise UnicodeError(unreadable(what, path, encoding, str(cause))) from exc
        raise


def read_lines(path: str | Path, format: str, encoding: str, delimiter: str | None, what: str) -> Any:
    """A ``datasets.Dataset`` of a line file: column ``text``, and ``label`` for the labelled formats.

    Example::

        >>> import tempfile
        >>> file = Path(tempfile.mkdtemp()) / "train.label"
        >>> _ = file.write_text("DESC:manner How did serfdom develop ?\\nHUM:ind Who is Bach ?\\n")
        >>> read_lines(file, "label_text", "utf-8", None, "train file")[1]
        {'text': 'Who is Bach ?', 'label': 'HUM:ind'}
    """
    from datasets import Dataset

    with located_decode_errors(path, encoding, what):
        rows = [row for row in Path(path).read_text(encoding=encoding).splitlines() if row.strip()]
    if format == "text":
        return Dataset.from_dict({"text": rows})
    texts, labels = [], []
    sep = delimiter or ";"
    for number, row in enumerate(rows, 1):
        label, _, text = row.partition(" ") if format == "label_text" else row.rpartition(sep)[::-1]
        if not _ or not text.strip():
            shape = "LABEL text" if format == "label_text" else f"text{sep}label"
            raise ValueError(
                f"{what} {str(path)!r}, line {number}: {row[:60]!r} is not `{shape}` (format={format!r}); "
                f"set format= (one of {list(LINE_FORMATS)}) or delimiter= to the file's layout"
            )
        texts.append(text.strip())
        labels.append(label.strip())
    return Dataset.from_dict({"text": texts, "label": labels})


def load_split_file(
    path: str,
    split: str,
    cache_dir: str,
    encoding: str = "utf-8",
    delimiter: str | None = None,
    format: str | None = None,
) -> Any:
    """One split from a local file, in ``format`` (default: by extension, see :func:`file_format`).

    Read with ``Dataset.from_csv``/``from_json``/``from_parquet``, not ``load_dataset``: the latter also
    sends the Hub a download count for the packaged builder, a network request for a local file.
    """
    from datasets import Dataset

    check_encoding(encoding)
    file = Path(path)
    what = f"{split} file"
    if not file.is_file():
        raise FileNotFoundError(f"{what} {path!r} does not exist")
    builder = file_format(file, format, delimiter)
    if file.stat().st_size == 0:
        raise ValueError(f"{what} {path!r} is empty")
    if builder in LINE_FORMATS:
        ds = read_lines(file, builder, encoding, delimiter, what)
    else:
        kwargs: dict[str, Any] = {}
        if builder != "parquet":
            kwargs["encoding"] = encoding
        if file.suffix.lower() == ".tsv" and builder == "csv":
            kwargs.update(delimiter="\t", quoting=3)
        if delimiter is not None and builder == "csv":
            kwargs["delimiter"] = delimiter
        read = {"csv": Dataset.from_csv, "json": Dataset.from_json, "parquet": Dataset.from_parquet}[builder]
        with located_decode_errors(file, encoding, what):  # outside: a decoding error is a ValueError too
            try:
                ds = read(str(file.resolve()), split=split, cache_dir=cache_dir, **kwargs)
            except ValueError as exc:  # datasets: 'Instruction "train" corresponds to no data!'
                raise ValueError(f"{what} {path!r} has no rows (a header only?)") from exc
    if len(ds) == 0:
        raise ValueError(f"{what} {path!r} has no rows (a header only?)")
    return ds


def read_local_files(
    files: dict[str, str | None],
    cache_dir: str,
    columns: dict[str, str],
    encoding: str = "utf-8",
    delimiter: str | None = None,
    format: str | None = None,
) -> dict[str, Any]:
    """``{split: datasets.Dataset | None}`` of ``TextDataModule``'s local files. The line formats' ``text``
    and ``label`` columns are renamed by ``columns``. A predict file is read by its extension (a ``.txt``
    file: one text per line) with the ``delimiter`` only if it is a table."""
    raw = {}
    for split, path in files.items():
        if path is None:
            raw[split] = None
            continue
        how = format if split != "predict" else None
        sep = delimiter if split != "predict" or file_format(path) == "csv" else None
        ds = load_split_file(path, split, cache_dir, encoding, sep, how)
        if file_format(path, how, sep) in LINE_FORMATS:
            ds = ds.rename_columns({k: v for k, v in columns.items() if k in ds.column_names and k != v})
        raw[split] = ds
    return raw


def require_columns(
    ds: Any, needed: list[str], split: str, path: str | None, format: str | None, delimiter: str | None
) -> None:
    """Raise naming the columns found, and for a local file the file, how it was read and the option to
    change."""
    for column in needed:
        if column in ds.column_names:
            continue
        hint, how = "", file_format(path, format, delimiter) if path else None
        if how == "text":
            hint = (
                f"; {path!r} is read as one text per line (format 'text'): for `text;label` lines set "
                "delimiter: ';' (format 'text_label'), for `LABEL text` lines format: label_text"
            )
        elif path is not None and how is not None:
            hint = separator_hint(ds.column_names, path, how, delimiter)
        where = f" (file {path!r})" if path else ""
        raise ValueError(
            f"Column {column!r} not found in the {split} data{where}; its columns are {ds.column_names}{hint}"
        )


def separator_hint(columns: list[str], path: str | Path, how: str, delimiter: str | None) -> str:
    """For a csv/tsv table read as one column, or with a header that holds another separator: a hint that
    the separator is another, and the option.

    Example::

        >>> separator_hint(["text;label"], "train.csv", "csv", None)
        "; one column: is the separator other than ','? Set delimiter="
        >>> separator_hint(["text;label", "__index_level_0__"], "train.csv", "csv", None)
        "; column 'text;label' holds ';': is the separator other than ','? Set delimiter="
    """
    if how != "csv":
        return ""
    sep = delimiter or ("\t" if Path(path).suffix.lower() == ".tsv" else ",")
    if len(columns) == 1:
        return f"; one column: is the separator other than {sep!r}? Set delimiter="
    for column in columns:
        for other in (c for c in ";\t|," if c != sep and c in column):
            return f"; column {column!r} holds {other!r}: is the separator other than {sep!r}? Set delimiter="
    return ""


def load_hub_splits(
    dataset: str, config: str | None, revision: str | None, splits: dict[str, str | None], cache_dir: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """``({split: datasets.Dataset | None}, {split: why it is absent})`` for the ``splits`` (our split name
    -> the dataset's) of a Hub dataset. A missing train split is an error; another missing split is
    recorded, and raised if that split is ever asked for."""
    from datasets import load_dataset

    loaded = hub_call(
        dataset, "datasets", "dataset", load_dataset, dataset, config, revision=revision, cache_dir=cache_dir
    )
    absent = {}
    for split, name in splits.items():
        if name is not None and name not in loaded:
            message = f"{split}_split={name!r} is not a split of {dataset!r}; it has {list(loaded)}"
            if split == "train":
                raise ValueError(message)
            absent[split] = message
    return {split: loaded.get(name) if name else None for split, name in splits.items()}, absent


def normalised(texts: list[Any], pairs: list[Any] | None = None) -> list[str]:
    """Duplicate keys of texts (and their pair texts): casefolded, whitespace collapsed.

    Example::

        >>> normalised(["A  good\\tfilm", "a good film "], ["Yes", "yes"])
        ['a good film\\x1fyes', 'a good film\\x1fyes']
    """

    def norm(text: Any) -> str:
        return " ".join(str(text or "").casefold().split())

    if pairs is None:
        return [norm(t) for t in texts]
    return [f"{norm(t)}\x1f{norm(p)}" for t, p in zip(texts, pairs, strict=True)]


def resolve_splits(
    raw: dict[str, Any],
    sources: dict[str, str],
    text_column: str,
    pair_column: str | None,
    group_column: str | None,
    split_column: str | None,
    strata_column: str | None,
    duplicates: str,
    train_size: int | None,
    val_fraction: float,
    seed: int,
) -> dict[str, Any]:
    """``TextDataModule``'s splits: ``split_column``'s rows of train, the groups checked, a seeded
    ``train_size`` subset, and exact duplicates (:func:`normalised` texts) and ``val_fraction`` handled by
    :func:`~lightning_recipes.data._splits.plan`. A split that comes out unchanged is the same object."""
    picks: dict[str, list[int] | None] = dict.fromkeys(ORDER)
    raw = dict(raw)
    for split, column in [("train", split_column)] + [(s, group_column) for s in ORDER if raw[s] is not None]:
        if column is not None:
            require_columns(raw[split], [column], split, None, None, None)
    if split_column:
        picks = split_positions(raw["train"][split_column], sources["train"], split_column)
        train = raw["train"]
        raw.update({split: train.select(rows) if rows else None for split, rows in picks.items()})
        sources = dict.fromkeys(ORDER, sources["train"])
    if group_column:
        groups = {s: raw[s] and Rows([], raw[s][group_column], None, sources[s], picks[s]) for s in ORDER}
        check_groups(groups, group_column)
    if train_size is not None and train_size < len(raw["train"]):
        raw["train"] = raw["train"].shuffle(seed=seed).select(range(train_size))

    def rows(ds: Any) -> Rows:
        groups, strata = (ds[c] if c else None for c in (group_column, strata_column))
        return Rows(normalised(ds[text_column], ds[pair_column] if pair_column else None), groups, strata)

    keys = {split: None if raw[split] is None else rows(raw[split]) for split in ORDER}
    carve = [("val", val_fraction)] if raw["val"] is None and val_fraction > 0 else []
    picked = plan(keys, carve, seed, duplicates, "texts")
    out = dict(raw)
    for split, (source, positions) in ((s, p) for s, p in picked.items() if p is not None):
        if source != split or len(positions) != len(raw[split]):
            out[split] = raw[source].select(positions) if positions else None
    return out
