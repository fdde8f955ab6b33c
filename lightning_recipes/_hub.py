"""Clear errors for pretrained weights that cannot be fetched (no network, unknown id)."""

from __future__ import annotations

import os


class PretrainedLoadError(RuntimeError):
    """A model name, Hub id or local path could not be loaded; the message says how to fix it."""


def offline_hint(name: str) -> str:
    """The fix for a Hub id that cannot be reached, naming the id."""
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    reason = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face Hub could not be reached"
    return (
        f"{reason}, and {name!r} is neither in the local cache nor a local folder. "
        f"On a machine with network access run `hf download {name} --local-dir ./{name.split('/')[-1]}` "
        f"and pass that folder instead (for timm: `local-dir:./{name.split('/')[-1]}`), "
        "or set pretrained=False to start from random weights."
    )


def is_network_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or its cause chain) comes from an unreachable or offline Hub."""
    markers = (
        "offline",
        "connection",
        "resolve",
        "network",
        "localentrynotfound",
        "cannot find the requested",
    )
    while exc is not None:
        text = f"{type(exc).__name__} {exc}".lower()
        if any(m in text for m in markers):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
