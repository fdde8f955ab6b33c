"""Splits a user can trust, for ``ImageDataModule`` and ``TextDataModule``: a split column, groups that the
given splits must not share (:func:`check_groups`), and exact copies dropped or kept and reported, with
automatic splits that keep a group or a set of copies on one side (:func:`plan`)."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

ORDER = ("train", "val", "test")
#: Values of a split column (any case, surrounding spaces ignored) and the split each one means.
SPLIT_VALUES = dict(train="train", val="val", validation="val", valid="val", dev="val", test="test")
DUPLICATES = ("keep", "drop")


@dataclass
class Rows:
    """One split's rows as :func:`plan` sees them.

    Args:
        content: a key per row; rows with equal keys are exact copies (a file's sha1, a normalised text).
        groups: ``group_column``'s value per row (``None`` or ``""``: the row is a group of its own).
        strata: the class per row, for a split stratified by class; ``None``: not stratified.
        source: the file (or dataset split) the rows come from, for messages.
        positions: each row's 0-based data row in ``source`` (default: its position in this list).
    """

    content: list[Any]
    groups: list[Any] | None = None
    strata: list[Any] | None = None
    source: str = ""
    positions: list[int] | None = None

    def number(self, i: int) -> int:
        """Row ``i``'s 1-based data row in ``source``."""
        return (self.positions[i] if self.positions is not None else i) + 1


def split_positions(values: Sequence[Any], source: str, column: str) -> dict[str, list[int]]:
    """The rows of each split (``train``/``val``/``test``), by a split column's values.

    Example::

        >>> split_positions(["Train", "dev", " TEST ", "validation"], "labels.csv", "split")
        {'train': [0], 'val': [1, 3], 'test': [2]}
        >>> split_positions(["train", "holdout"], "labels.csv", "split")
        Traceback (most recent call last):
        ...
        ValueError: labels.csv, data row 2: split_column 'split' holds 'holdout', not a split; allowed values (any case): train, val, validation, valid, dev, test
    """  # noqa: E501 (a doctest's expected line)
    positions: dict[str, list[int]] = {split: [] for split in ORDER}
    for row, value in enumerate(values, 1):
        name = SPLIT_VALUES.get(str(value).strip().casefold()) if value is not None else None
        if name is None:
            raise ValueError(
                f"{source}, data row {row}: split_column {column!r} holds {value!r}, not a split; "
                f"allowed values (any case): {', '.join(SPLIT_VALUES)}"
            )
        positions[name].append(row - 1)
    return positions


def check_options(
    split_column: str | None, duplicates: str, val_file: Any, test_file: Any, dataset: Any = None
) -> None:
    """Refuse ``split_column`` with separate val/test files or a dataset, and an unknown ``duplicates``."""
    if duplicates not in DUPLICATES:
        raise ValueError(f"duplicates={duplicates!r} is not one of {list(DUPLICATES)}")
    given = [name for name, file in (("val_file", val_file), ("test_file", test_file)) if file]
    if split_column and given:
        raise ValueError(
            f"split_column={split_column!r} reads every split from train_file's column, and "
            f"{' and '.join(given)} give(s) splits too: use one or the other"
        )
    if split_column and dataset is not None:
        raise ValueError(f"split_column={split_column!r} reads the splits from train_file, not a dataset")


def _rows_text(rows: Rows, positions: list[int]) -> str:
    numbers = sorted(rows.number(i) for i in positions)
    shown = ", ".join(map(str, numbers[:5])) + (f" and {len(numbers) - 5} more" if len(numbers) > 5 else "")
    return f"{rows.source} data row{'s' if len(numbers) > 1 else ''} {shown}"


def check_groups(rows: dict[str, Rows | None], column: str) -> None:
    """Raise a ``ValueError`` naming a group the given splits put on two sides, the splits and the rows."""
    where: dict[Any, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for split, part in rows.items():
        for i, group in enumerate((part.groups if part is not None else None) or []):
            if group is not None and group != "":
                where[group][split].append(i)
    spanning = [(group, splits) for group, splits in where.items() if len(splits) > 1]
    if spanning:
        group, splits = spanning[0]
        (a, rows_a), (b, rows_b) = list(splits.items())[:2]
        more = f" ({len(spanning) - 1} more group(s) span splits too)" if len(spanning) > 1 else ""
        raise ValueError(
            f"group_column {column!r}: group {group!r} is in {a} ({_rows_text(rows[a], rows_a)}) and in {b} "
            f"({_rows_text(rows[b], rows_b)}){more}; a group's rows must all be in one split"
        )


def units(n: int, *keys: Sequence[Any] | None) -> list[int]:
    """A unit id per row: rows sharing a value of any of ``keys`` (``None``/``""``: no value) are one unit.

    Example::

        >>> units(5, ["p1", "p2", "p1", None, None], ["x", "y", "z", "y", "w"])
        [0, 1, 0, 1, 4]
    """
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = i = parent[parent[i]]
        return i

    for key in keys:
        first: dict[Any, int] = {}
        for i, value in enumerate(key or []):
            if value is not None and value != "":
                parent[find(i)] = find(first.setdefault(value, i))
    return [find(i) for i in range(n)]


def hold_out(
    unit_of: list[int], strata: list[Any] | None, share: float, seed: int
) -> tuple[list[int], list[int]]:
    """Positions kept and held out by a seeded split of whole units (scikit-learn's ``train_test_split``),
    stratified by each unit's first class when every class has two units or more. With every row a unit
    of its own this is ``train_test_split`` of the rows."""
    from sklearn.model_selection import train_test_split

    members: dict[int, list[int]] = defaultdict(list)
    for position, unit in enumerate(unit_of):
        members[unit].append(position)
    order = list(members)
    labels = [strata[members[u][0]] for u in order] if strata is not None else None
    stratify = None
    if labels:
        counts, n_test = Counter(labels), math.ceil(share * len(order))
        if min(counts.values()) >= 2 and len(counts) <= min(n_test, len(order) - n_test):
            stratify = labels
    kept, held = train_test_split(order, test_size=share, random_state=seed, stratify=stratify)
    return [p for u in kept for p in members[u]], [p for u in held for p in members[u]]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun if n != 1 else noun[:-1]}"


def plan(
    rows: dict[str, Rows | None], carve: list[tuple[str, float]], seed: int, duplicates: str, noun: str
) -> dict[str, tuple[str, list[int]] | None]:
    """``{split: (the split its rows come from, their positions there)}``.

    With ``duplicates="drop"`` only the first copy of each set of exact copies stays (in the order train,
    val, test). Each ``(split, share)`` of ``carve`` takes that share of train's units (groups, and sets of
    copies) out of train, seeded. One line reports the copies: how many, and which split they cross or would
    have crossed. ``noun`` names the rows (``images``, ``texts``).

    Example::

        >>> rows = {"train": Rows(content=["a", "b", "a", "c", "d", "e"]), "val": None}
        >>> picked = plan(rows, [("val", 0.5)], seed=0, duplicates="keep", noun="texts")
        >>> sorted(picked["train"][1] + picked["val"][1]), picked["val"][0]
        ([0, 1, 2, 3, 4, 5], 'train')
        >>> {0, 2} <= set(picked["train"][1]) or {0, 2} <= set(picked["val"][1])
        True
    """
    present = [s for s in ORDER if rows.get(s) is not None]
    picked: dict[str, tuple[str, list[int]] | None] = {s: None for s in rows}
    picked.update({s: (s, list(range(len(rows[s].content)))) for s in present})
    copies: dict[Any, list[tuple[str, int]]] = defaultdict(list)
    for s in present:
        for i, key in enumerate(rows[s].content):
            copies[key].append((s, i))
    sets = [places for places in copies.values() if len(places) > 1]
    crossing = Counter((s, places[0][0]) for places in sets for s, _ in places if s != places[0][0])
    if duplicates == "drop" and sets:
        later = {place for places in sets for place in places[1:]}
        picked.update(
            {s: (s, [i for i in range(len(rows[s].content)) if (s, i) not in later]) for s in present}
        )
    would_cross: list[str] = []
    for split, share in carve:
        if picked.get("train") is None or share <= 0:
            continue
        positions, train = picked["train"][1], rows["train"]
        strata, groups, content = (
            None if keys is None else [keys[i] for i in positions]
            for keys in (train.strata, train.groups, train.content)
        )
        kept, held = hold_out(units(len(positions), groups, content), strata, share, seed)
        if sets and duplicates == "keep":  # the split without the copies kept together, for the report
            plain_kept, plain_held = hold_out(units(len(positions), groups), strata, share, seed)
            seen = {content[p] for p in plain_kept}
            n = _count(sum(content[p] in seen for p in plain_held), f"{split} {noun}")
            would_cross.append(f"{split}_fraction split (ignoring them, {n} would have had a copy in train)")
        picked["train"] = ("train", [positions[p] for p in kept])
        picked[split] = ("train", [positions[p] for p in held])
    if sets:
        _report(sets, crossing, would_cross, duplicates, noun)
    return picked


def _report(sets: list, crossing: Counter, would_cross: list[str], duplicates: str, noun: str) -> None:
    """One line: the sets of copies, the splits they cross (a warning while they stay), the automatic splits
    they were kept out of, and what was done with them."""
    n_rows = sum(len(places) for places in sets)
    parts = [f"Exact duplicates: {len(sets)} set(s) of identical {noun} ({n_rows} {noun})"]
    for (s, e), n in sorted(crossing.items(), key=lambda item: [ORDER.index(x) for x in item[0]]):
        parts.append(f"{_count(n, f'{s} {noun}')} {'have' if n != 1 else 'has'} an exact copy in {e}")
    if would_cross:
        parts.append("kept on one side of the " + " and the ".join(would_cross))
    elif not crossing:
        parts.append("none across splits")
    if duplicates == "drop":
        parts.append(f"dropped {n_rows - len(sets)} later copies (duplicates='drop')")
    else:
        parts.append("set duplicates='drop' to keep only the first copy")
    (rank_zero_warn if crossing and duplicates == "keep" else rank_zero_info)("; ".join(parts))
