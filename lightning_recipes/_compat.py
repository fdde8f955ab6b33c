"""MERGE-PLACEHOLDER: replaced by the compat branch."""

from __future__ import annotations

from typing import Any


def dataset_fingerprint(ds: Any) -> str:
    """The fingerprint ``datasets`` keeps for a ``Dataset`` (private ``_fingerprint``; datasets 4.x)."""
    return ds._fingerprint
