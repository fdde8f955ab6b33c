"""The search space of ``lightning-recipes tune``: recipe options and the distribution each is drawn from.

A dimension is written ``KEY=DIST`` (``--space``) or ``KEY: DIST`` (a space file), ``KEY`` a recipe option
as ``lightning run`` overrides it (``model.init_args.lr``) and ``DIST`` one of:

=====================  ==============================================================
``loguniform:LOW:HIGH``  a float, log-uniform (``trial.suggest_float(log=True)``)
``uniform:LOW:HIGH``     a float, uniform (``trial.suggest_float``)
``int:LOW:HIGH``         an integer, both ends included (``trial.suggest_int``)
``choice:A,B,C``         one of the values, each read as YAML (``trial.suggest_categorical``);
                         in a space file also a YAML list
=====================  ==============================================================

:func:`check_keys` refuses a key the parsed recipe does not have, naming the closest options.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["KINDS", "Dimension", "SearchSpaceError", "check_keys", "parse_dimension", "read_space_file"]

#: The distributions, as written before the first ``:``.
KINDS = ("loguniform", "uniform", "int", "choice")
_FORMS = "loguniform:LOW:HIGH, uniform:LOW:HIGH, int:LOW:HIGH or choice:A,B,C"
#: What ``suggest_categorical`` takes (optuna stores these as they are).
_CHOICE_TYPES = (str, int, float, bool, type(None))


class SearchSpaceError(ValueError):
    """A search-space entry that cannot be used: its message names the entry and the fix."""


@dataclass(frozen=True)
class Dimension:
    """One recipe option to search and its distribution.

    Attributes:
        key: the recipe option (``model.init_args.lr``); also the optuna parameter's name.
        kind: one of :data:`KINDS`.
        low: lower end (``loguniform``, ``uniform``, ``int``).
        high: upper end, included.
        choices: the values of a ``choice``.

    Example::

        >>> import optuna
        >>> dim = parse_dimension("model.init_args.lr=loguniform:1e-5:1e-3")
        >>> dim.kind, dim.low, dim.high
        ('loguniform', 1e-05, 0.001)
        >>> trial = optuna.create_study().ask()
        >>> 1e-5 <= dim.suggest(trial) <= 1e-3
        True
    """

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """Draw this option's value for ``trial`` (an ``optuna.Trial``)."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high))
        return trial.suggest_float(self.key, self.low, self.high, log=self.kind == "loguniform")

    def extremes(self) -> tuple[Any, ...]:
        """The values that bound what :meth:`suggest` can return: both ends, or every choice."""
        if self.kind == "choice":
            return self.choices
        if self.kind == "int":
            return (int(self.low), int(self.high))
        return (self.low, self.high)

    def describe(self) -> str:
        """The distribution as written: ``loguniform:1e-05:0.001``, ``choice:16,32``."""
        if self.kind == "choice":
            return "choice:" + ",".join(c if isinstance(c, str) else json.dumps(c) for c in self.choices)
        return f"{self.kind}:{self.extremes()[0]}:{self.extremes()[1]}"


def _number(key: str, text: str, what: str, integer: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SearchSpaceError(f"{key}: {what} {text!r} is not a number") from None
    if not math.isfinite(value) or (integer and value != int(value)):
        kind = "an integer" if integer else "a finite number"
        raise SearchSpaceError(f"{key}: {what} {text!r} must be {kind}")
    return int(value) if integer else value


def _choice(text: str) -> Any:
    value = yaml.safe_load(text) if text.strip() else text
    return value if isinstance(value, _CHOICE_TYPES) else text


def make_dimension(key: str, dist: str | list) -> Dimension:
    """The :class:`Dimension` for ``key`` drawn from ``dist`` (a distribution string, or a list: a choice).

    Example::

        >>> make_dimension("data.init_args.batch_size", "choice:16,32").choices
        (16, 32)
        >>> make_dimension("model.init_args.lr", "uniform:1:0")
        Traceback (most recent call last):
        ...
        lightning_recipes.tune.space.SearchSpaceError: model.init_args.lr: uniform:1:0 needs LOW < HIGH
    """
    if isinstance(dist, list):
        if not dist or not all(isinstance(c, _CHOICE_TYPES) for c in dist):
            raise SearchSpaceError(f"{key}: a choice list needs one or more plain values, got {dist!r}")
        return Dimension(key, "choice", choices=tuple(dist))
    kind, _, rest = str(dist).partition(":")
    if kind not in KINDS or not rest:
        raise SearchSpaceError(f"{key}: {dist!r} is not a distribution; use {_FORMS}")
    if kind == "choice":
        choices = tuple(_choice(c) for c in rest.split(","))
        if len(set(map(repr, choices))) != len(choices):
            raise SearchSpaceError(f"{key}: {dist!r} names a value twice")
        return Dimension(key, kind, choices=choices)
    ends = rest.split(":")
    if len(ends) != 2:
        raise SearchSpaceError(f"{key}: {dist!r} needs two ends: {kind}:LOW:HIGH")
    integer = kind == "int"
    low, high = (_number(key, text, what, integer) for text, what in zip(ends, ("LOW", "HIGH"), strict=True))
    if low >= high:
        raise SearchSpaceError(f"{key}: {dist} needs LOW < HIGH")
    if kind == "loguniform" and low <= 0:
        raise SearchSpaceError(f"{key}: {dist} needs LOW > 0 (a log scale); use uniform:{low}:{high}")
    return Dimension(key, kind, low=low, high=high)


def parse_dimension(text: str) -> Dimension:
    """A ``--space KEY=DIST`` argument as a :class:`Dimension` (see :func:`make_dimension`)."""
    key, sep, dist = text.partition("=")
    key = key.strip().removeprefix("--")
    if not sep or not key or not dist:
        raise SearchSpaceError(
            f"--space {text!r}: write KEY=DIST, e.g. model.init_args.lr=loguniform:1e-5:1e-3"
        )
    return make_dimension(key, dist.strip())


def read_space_file(path: str | Path) -> list[Dimension]:
    """The dimensions of a space file: a YAML mapping of recipe options to distributions.

    Example::

        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "space.yaml"
        >>> _ = p.write_text("model.init_args.lr: loguniform:1e-5:1e-3\\ndata.init_args.batch_size: [16, 32]")
        >>> [d.describe() for d in read_space_file(p)]
        ['loguniform:1e-05:0.001', 'choice:16,32']
    """
    path = Path(path)
    if not path.is_file():
        raise SearchSpaceError(f"--space-file {path}: no such file")
    content = yaml.safe_load(path.read_text())
    if not isinstance(content, Mapping) or not content:
        raise SearchSpaceError(
            f"--space-file {path}: write a YAML mapping, e.g. 'model.init_args.lr: uniform:0:1'"
        )
    return [make_dimension(str(key), value) for key, value in content.items()]


def check_keys(space: Iterable[Dimension], options: Iterable[str]) -> None:
    """Refuse a dimension whose key is not one of the recipe's ``options`` (its parsed config's keys), or
    a key given twice; the error names the closest options.

    Example::

        >>> check_keys([make_dimension("model.init_args.lr_", "uniform:0:1")], ["model.init_args.lr"])
        Traceback (most recent call last):
        ...
        lightning_recipes.tune.space.SearchSpaceError: model.init_args.lr_: the recipe has no such option; \
did you mean model.init_args.lr?
    """
    options = [o for o in options if o != "config"]
    seen: set[str] = set()
    for dim in space:
        if dim.key in seen:
            raise SearchSpaceError(f"{dim.key}: searched twice (in --space and --space-file?); keep one")
        seen.add(dim.key)
        if dim.key in options:
            continue
        section = [o for o in options if o.startswith(dim.key + ".")]
        if section:
            raise SearchSpaceError(
                f"{dim.key}: a section of the recipe, not one option; search one of its options, "
                f"e.g. {section[0]}"
            )
        close = difflib.get_close_matches(dim.key, options, n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}?" if close else "`lightning run RECIPE --help` lists them"
        raise SearchSpaceError(f"{dim.key}: the recipe has no such option; {hint}")
