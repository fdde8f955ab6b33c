"""The one place where a pretrained model, tokenizer or dataset that cannot be fetched becomes a clear error.

Every loader of this package (timm backbones, transformers models and tokenizers, ``datasets``) calls
:func:`hub_call`. Failures are recognised by ``huggingface_hub``'s error types (offline mode, no cached
copy, unknown repository or revision, gated repository) and by connection errors anywhere in the
exception chain, and turned into a :class:`PretrainedLoadError` whose hint fits the family: the timm
repository (``timm/<name>``) and ``local-dir:``, a ``--local-dir`` folder for transformers, local files
for datasets.

Offline mode is the ecosystem's own: ``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE=1``), as
``huggingface_hub.is_offline_mode()`` reads it, which transformers, timm and ``datasets`` honour. When it
is not set, :func:`hub_reachable` asks the Hub once per process whether it answers (the library's only
network probe): ``huggingface_hub`` retries a connection that fails five times with back-off (about 25 s
per file, and timm asks for several files) and has no setting to stop that, so a Hub that does not
answer within 3 s makes the loader run in offline mode instead: a cached copy still loads, a missing one
fails at once.
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlparse

Family = Literal["timm", "transformers", "datasets"]
T = TypeVar("T")


class PretrainedLoadError(RuntimeError):
    """A model name, Hub id or local path could not be loaded; the message says how to fix it."""


def looks_like_local_path(name: str) -> bool:
    """A local path rather than a Hub id (``org/name`` or ``name``).

    Example::

        >>> [looks_like_local_path(n) for n in ("gpt2", "org/model", "./model", "/abs/model", "a/b/c")]
        [False, False, True, True, True]
        >>> looks_like_local_path("local-dir:/abs/folder")  # a timm name: timm checks the folder
        False
    """
    if name.startswith(("local-dir:", "hf-hub:", "hf_hub:")):  # timm's prefixes; timm resolves them
        return False
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)


def _hub_errors() -> tuple[type[BaseException], ...]:
    from huggingface_hub import errors

    names = (
        "OfflineModeIsEnabled",
        "LocalEntryNotFoundError",
        "RepositoryNotFoundError",
        "RevisionNotFoundError",
        "GatedRepoError",
    )
    return (ConnectionError, TimeoutError, *(getattr(errors, n) for n in names if hasattr(errors, n)))


def is_unreachable(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception in its cause chain) says the Hub or the network was not reachable,
    or that the id does not exist there.

    Example::

        >>> from huggingface_hub.errors import OfflineModeIsEnabled
        >>> try:
        ...     raise OSError("cannot load") from OfflineModeIsEnabled("offline")
        ... except OSError as e:
        ...     is_unreachable(e), is_unreachable(ValueError("bad value"))
        (True, False)
    """
    kinds = _hub_errors()
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, kinds) or type(exc).__name__ in ("ConnectError", "ConnectTimeout"):  # httpx
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@functools.lru_cache(maxsize=4)
def hub_reachable(endpoint: str | None = None, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub (``huggingface_hub.constants.ENDPOINT``: ``HF_ENDPOINT``, default
    huggingface.co) opens within ``timeout`` seconds; asked once per process and endpoint.

    The one network probe of ``lightning_recipes``: :func:`hub_call` asks it only for a Hub id while
    offline mode is not set, to spare the loader ``huggingface_hub``'s retries.
    """
    if endpoint is None:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    url = urlparse(endpoint)
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def hint(name: str, family: Family, reason: str | None = None) -> str:
    """How to get ``name`` onto a machine without the Hub, in the words of its family.

    Example::

        >>> "hf download timm/resnet50.a1_in1k" in hint("resnet50.a1_in1k", "timm")
        True
        >>> "--local-dir ./gpt2" in hint("gpt2", "transformers")
        True
    """
    if reason is None:
        from huggingface_hub import is_offline_mode

        reason = "HF_HUB_OFFLINE is set" if is_offline_mode() else "the Hugging Face Hub could not be reached"
    repo = name.split(":", 1)[1] if name.startswith(("hf-hub:", "hf_hub:")) else name
    short = repo.split("/")[-1]
    if family == "timm":
        repo = repo if "/" in repo else f"timm/{repo}"
        fix = (
            f"on a machine with network access run `hf download {repo} --local-dir ./{short}` and use "
            f"model_name_or_path `local-dir:./{short}`, or set pretrained: false to start from random weights"
        )
    elif family == "datasets":
        fix = (
            f"on a machine with network access run `hf download {repo} --repo-type dataset --local-dir "
            f"./{short}`, or give local files (train_file/val_file/test_file)"
        )
    else:
        fix = (
            f"on a machine with network access run `hf download {repo} --local-dir ./{short}` and pass "
            f"the folder `./{short}` instead of {name!r}"
        )
    return f"{reason}, and {name!r} is neither in the local cache nor a local folder: {fix}."


def hub_call(
    name: str,
    family: Family,
    what: str,
    fn: Callable[..., T],
    *args: Any,
    remote: bool | None = None,
    **kwargs: Any,
) -> T:
    """Call a loader (``from_pretrained``, ``timm.create_model``, ``load_dataset``) for ``name``.

    A local path that does not exist is a ``FileNotFoundError`` naming it; an unreachable or unknown
    Hub id a :class:`PretrainedLoadError` with :func:`hint`; anything else propagates unchanged.
    ``remote`` says whether the call may need the Hub (default: ``name`` is not an existing local
    path); then, unless offline mode is set (``HF_HUB_OFFLINE``), the Hub is asked once
    (:func:`hub_reachable`) and, if it does not answer, the loader runs offline (a cached copy loads, a
    missing one fails at once).

    Example::

        >>> hub_call("./no-such-model", "transformers", "model", print)
        Traceback (most recent call last):
        ...
        FileNotFoundError: model folder './no-such-model' not found
    """
    if looks_like_local_path(name) and not Path(name).expanduser().exists():
        raise FileNotFoundError(f"{what} folder {name!r} not found")
    if remote is None:
        remote = not (looks_like_local_path(name) or Path(name).expanduser().exists())
    from huggingface_hub import is_offline_mode

    from lightning_recipes._compat import hub_offline

    unanswered = remote and not is_offline_mode() and not hub_reachable()

    try:
        with hub_offline() if unanswered else nullcontext():
            return fn(*args, **kwargs)
    except Exception as exc:
        if Path(name).expanduser().exists() or not is_unreachable(exc):
            raise
        reason = "the Hugging Face Hub could not be reached (no answer within 3 s)" if unanswered else None
        raise PretrainedLoadError(f"Could not load {what} {name!r}: {hint(name, family, reason)}") from exc


def upload_error(exc: BaseException, repo_id: str) -> str | None:
    """What to do about ``exc``, raised by ``HfApi.create_repo``/``upload_folder`` for ``repo_id``, in one
    line; ``None`` when it is none of the Hub's known refusals (no token, no write access, offline, no
    network, a bad repo id).

    Example::

        >>> from huggingface_hub.errors import LocalTokenNotFoundError, OfflineModeIsEnabled
        >>> upload_error(LocalTokenNotFoundError("no token"), "org/model").split(":")[0]
        'not logged in to the Hugging Face Hub (no valid token)'
        >>> upload_error(OfflineModeIsEnabled("offline"), "org/model")
        'HF_HUB_OFFLINE is set: unset it (and check the network) to push to the Hub'
        >>> upload_error(ValueError("something else"), "org/model") is None
        True
    """
    from huggingface_hub import errors

    owner = repo_id.split("/")[0] if "/" in repo_id else "your account"
    login = "run `hf auth login` or set HF_TOKEN"  # huggingface_hub reads both
    if isinstance(exc, errors.HFValidationError):
        return f"{repo_id!r} is not a Hub repo id ({exc}); give ORG/NAME"
    if isinstance(exc, errors.OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set: unset it (and check the network) to push to the Hub"
    status = getattr(getattr(exc, "response", None), "status_code", None)
    first = (str(exc).strip().splitlines() or [""])[0]
    if isinstance(exc, errors.LocalTokenNotFoundError) or status == 401:
        return (
            f"not logged in to the Hugging Face Hub (no valid token): {login}, with write access to {owner}"
        )
    if status == 403:
        return f"your Hub token may not write to {repo_id}: {login} to a token that can write to {owner}"
    if isinstance(exc, errors.RepositoryNotFoundError):
        return f"the Hub has no repo {repo_id} you may write to: check the name, and {login} (write access)"
    if is_unreachable(exc):
        return f"the Hugging Face Hub could not be reached ({type(exc).__name__}: {first}): check the network"
    if isinstance(exc, errors.HfHubHTTPError):
        return f"the Hub refused the upload ({first})"
    return None
