"""``lightning-recipes export ... --push-to-hub ORG/NAME``: the finished export folder uploaded to the Hugging
Face Hub with ``huggingface_hub`` (``HfApi.create_repo`` then ``HfApi.upload_folder``: one commit), private
unless asked otherwise. The token is huggingface_hub's own (``HF_TOKEN``, else the one ``hf auth login``
stored); a refusal (no token, no write access, offline, no network) is one line saying what to do, and the
local export is left complete."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class PushError(RuntimeError):
    """The upload to the Hub failed; the message is one line saying why and what to do."""


@dataclass(frozen=True)
class Pushed:
    """Where :func:`push_to_hub` uploaded: the repo id, its URL, the commit and whether it is private."""

    repo_id: str
    url: str
    commit: str | None
    private: bool


def check_repo_id(repo_id: str) -> None:
    """A repo id the Hub accepts (``ORG/NAME`` or ``NAME``), else a ``ValueError`` naming it.

    Example::

        >>> check_repo_id("my-org/sst2-minilm")
        >>> check_repo_id("my org/model")
        Traceback (most recent call last):
        ...
        ValueError: --push-to-hub 'my org/model' is not a Hub repo id: give ORG/NAME (letters, digits, -_.)
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise ValueError(
            f"--push-to-hub {repo_id!r} is not a Hub repo id: give ORG/NAME (letters, digits, -_.)"
        ) from exc


def push_to_hub(folder: str | Path, repo_id: str, private: bool = True, message: str | None = None) -> Pushed:
    """Upload the export ``folder`` to the Hub model repo ``repo_id`` in one commit.

    The repo is created if it does not exist (``private``: its visibility; an existing repo keeps its
    own). Files already in the repo that the folder does not hold stay.

    Raises:
        PushError: no token, a token without write access, offline mode, no network, another refusal of
            the Hub or any other failure of the upload; the message is one line saying what to do.
    """
    from huggingface_hub import HfApi

    from lightning_recipes._hub import upload_error

    folder = Path(folder)
    api = HfApi()
    try:
        repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type="model",
            commit_message=message or f"Upload {folder.name} (lightning-recipes export)",
        )
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        reason = upload_error(exc, repo_id) or f"the upload failed ({type(exc).__name__}: {first})"
        raise PushError(reason) from exc
    url = str(getattr(repo, "url", None) or f"https://huggingface.co/{repo_id}")
    return Pushed(repo_id, url, getattr(commit, "oid", None), private)
