"""Renamed options: the old name keeps working for a while, with a warning naming the new one."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.utilities import rank_zero_deprecation


def renamed(owner: str, old: str, old_value: Any, new: str, new_value: Any) -> Any:
    """The value of option ``new``, taking ``old`` (deprecated) when only that one is given.

    Example::

        >>> renamed("CausalLM", "pretrained_model_name_or_path", None, "model_name_or_path", "gpt2")
        'gpt2'
    """
    if old_value is None:
        return new_value
    if new_value is not None and new_value != old_value:
        raise ValueError(f"{owner}: give {new}={new_value!r} or its old name {old}={old_value!r}, not both")
    rank_zero_deprecation(f"{owner}: `{old}` was renamed `{new}`; the old name will be removed in 0.3")
    return old_value
