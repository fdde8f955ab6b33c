"""``TextCorpusDataModule``'s files as documents: plain text, the text column of tables, the text part of
labelled lines; read by the readers ``TextDataModule`` uses (:mod:`~lightning_recipes.data._text_files`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from lightning_recipes.data._text_files import BUILDERS, LINE_FORMATS, load_split_file, separator_hint


def corpus_format(path: str | Path, format: str | None = None) -> str:
    """How the corpus reads a file: ``format`` if given, else by extension; ``text`` (the whole file one
    document) for ``.txt`` and any extension not a table's. A ``delimiter`` does not make a ``.txt`` file
    ``text_label`` here (a corpus's ``.txt`` is prose): set ``format: text_label`` for that.

    Example::

        >>> corpus_format("a.txt"), corpus_format("a.md"), corpus_format("a.tsv"), corpus_format("x", "csv")
        ('text', 'text', 'csv', 'csv')
    """
    if format is not None:
        return format
    return BUILDERS.get(Path(path).suffix.lower(), "text")


def file_documents(
    path: Path,
    split: str,
    text_column: str,
    cache_dir: str,
    encoding: str,
    delimiter: str | None,
    format: str | None,
) -> Iterator[list[str]]:
    """The documents of one file, each a list of text pieces: a ``text`` file is one document (read in
    pieces); a table gives one document per row of ``text_column``; a ``label_text``/``text_label`` line
    file one per line, its text part (the labels are left out)."""
    from lightning_recipes.data.bpe import _read_lines

    how = corpus_format(path, format)
    if how == "text":
        yield list(_read_lines([path], encoding=encoding))
    elif how in LINE_FORMATS:
        yield from (
            [text] for text in load_split_file(str(path), split, cache_dir, encoding, delimiter, how)["text"]
        )
    else:
        yield from (
            [text] for text in table_column(path, split, text_column, cache_dir, encoding, delimiter, how)
        )


def table_column(
    path: Path, split: str, column: str, cache_dir: str, encoding: str, delimiter: str | None, how: str
) -> list[str]:
    """The ``column`` of a table file, one document per row."""
    table = load_split_file(str(path), split, cache_dir, encoding, delimiter, how)
    if column not in table.column_names:
        hint = separator_hint(table.column_names, path, how, delimiter)
        raise ValueError(
            f"Column {column!r} not in {split} file {str(path)!r}; it has {table.column_names}{hint}"
            f"{'' if hint else '. Set text_column.'}"
        )
    dtype = table.features[column].dtype
    if dtype not in ("string", "large_string"):
        raise ValueError(
            f"Column {column!r} of {split} file {str(path)!r} holds {dtype}, not text: set "
            f"text_column to a text column of {table.column_names}"
        )
    return table[column]
