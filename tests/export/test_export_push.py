"""``lightning-recipes export ... --push-to-hub ORG/NAME`` (lightning_recipes/export/_push.py): the finished
export uploaded with ``HfApi.create_repo`` + ``upload_folder``, private unless ``--public``; the Hub's
refusals (raised here as huggingface_hub raises them) are one line saying what to do, and the local export
stays complete. ``HfApi`` is patched: no network."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
from export_helpers import save_checkpoint
from huggingface_hub import HfApi
from huggingface_hub.errors import LocalTokenNotFoundError, OfflineModeIsEnabled, Response
from huggingface_hub.utils import hf_raise_for_status

from lightning_recipes import ImageClassifier
from lightning_recipes.cli import main
from lightning_recipes.export import PushError, push_to_hub

#: Everything an image export folder holds, uploaded as one commit.
EXPORT_FILES = {"README.md", "config.json", "export.json", "model.safetensors"}


@pytest.fixture(scope="module")
def image_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = ImageClassifier("test_resnet", pretrained=False, num_classes=2, label_names=["cat", "dog"])
    return save_checkpoint(model, tmp_path_factory.mktemp("image") / "image.ckpt")


class FakeHub:
    """Records ``HfApi.create_repo``/``upload_folder`` calls (with the files of the folder at upload time),
    or raises ``error`` from the first."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, error: Exception | None = None) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.error = error
        monkeypatch.setattr(HfApi, "create_repo", self.create_repo)
        monkeypatch.setattr(HfApi, "upload_folder", self.upload_folder)

    def create_repo(self, repo_id: str, **kwargs):
        from huggingface_hub import RepoUrl

        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        if self.error is not None:
            raise self.error
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, **kwargs):
        from huggingface_hub import CommitInfo

        files = {
            p.relative_to(kwargs["folder_path"]).as_posix() for p in Path(kwargs["folder_path"]).rglob("*")
        }
        self.calls.append(("upload_folder", {**kwargs, "files": files}))
        url = f"https://huggingface.co/{kwargs['repo_id']}/commit/abc123"
        return CommitInfo(commit_url=url, commit_message="", commit_description="", oid="abc123")


def http_module():
    """The HTTP client huggingface_hub uses (its ``Response``'s module: httpx or its successor)."""
    return importlib.import_module(Response.__module__)


def http_error(status: int) -> Exception:
    """The error huggingface_hub raises for a ``status`` answer to ``create_repo``."""
    http = http_module()
    request = http.Request("POST", "https://huggingface.co/api/repos/create")
    try:
        hf_raise_for_status(Response(status, request=request, json={"error": "refused"}))
    except Exception as exc:
        return exc
    raise AssertionError(f"hf_raise_for_status passed a {status}")


def test_an_export_is_pushed_private_in_one_upload(image_ckpt, tmp_path, monkeypatch, capsys) -> None:
    hub = FakeHub(monkeypatch)
    args = ["export", str(image_ckpt), "--to", str(tmp_path / "out"), "--push-to-hub", "my-org/pets"]
    assert main(args) == 0, capsys.readouterr().err
    assert "Pushed to https://huggingface.co/my-org/pets (private; commit abc123)" in capsys.readouterr().out
    (create, created), (upload, uploaded) = hub.calls
    assert (create, created) == (
        "create_repo",
        {"repo_id": "my-org/pets", "private": True, "exist_ok": True, "repo_type": "model"},
    )
    assert upload == "upload_folder" and uploaded["repo_id"] == "my-org/pets"
    assert Path(uploaded["folder_path"]) == tmp_path / "out"  # the finished folder, not its temporary name
    assert uploaded["files"] >= EXPORT_FILES

    hub.calls.clear()
    assert main([*args[:3], str(tmp_path / "public"), *args[4:], "--public"]) == 0
    assert hub.calls[0][1]["private"] is False and "(public;" in capsys.readouterr().out


def test_without_a_token_the_export_stays_and_the_error_says_to_log_in(
    image_ckpt, tmp_path, monkeypatch, capsys
) -> None:
    hub = FakeHub(monkeypatch, http_error(401))
    out = tmp_path / "out"
    assert main(["export", str(image_ckpt), "--to", str(out), "--push-to-hub", "my-org/pets"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: push to the Hub: not logged in")
    assert "run `hf auth login` or set HF_TOKEN" in err
    assert f"the export is complete in {out} (push it later: hf upload my-org/pets {out} --private)" in err
    assert {p.name for p in out.iterdir()} >= EXPORT_FILES and len(hub.calls) == 1
    assert not list(tmp_path.glob(".out.export-*"))


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (
            LocalTokenNotFoundError("Token is required"),
            "not logged in to the Hugging Face Hub (no valid token)",
        ),
        (lambda: http_error(403), "your Hub token may not write to my-org/pets: run `hf auth login`"),
        (OfflineModeIsEnabled("offline mode is enabled"), "HF_HUB_OFFLINE is set: unset it"),
        (ConnectionError("Name or service not known"), "could not be reached (ConnectionError: Name or"),
        (lambda: http_module().ConnectError("[Errno -2] Name"), "could not be reached (ConnectError: [Errno"),
        (lambda: http_error(500), "the Hub refused the upload (Server error '500"),
        (RuntimeError("disk\nfull"), "the upload failed (RuntimeError: disk)"),
    ],
)
def test_each_refusal_of_the_hub_is_one_line_saying_what_to_do(error, says, tmp_path, monkeypatch) -> None:
    FakeHub(monkeypatch, error() if callable(error) else error)
    (tmp_path / "README.md").write_text("card")
    with pytest.raises(PushError) as info:
        push_to_hub(tmp_path, "my-org/pets")
    assert says in str(info.value) and "\n" not in str(info.value)


def test_a_bad_repo_id_or_a_lone_public_is_refused_before_exporting(
    image_ckpt, tmp_path, monkeypatch, capsys
) -> None:
    hub = FakeHub(monkeypatch)
    out = tmp_path / "out"
    assert main(["export", str(image_ckpt), "--to", str(out), "--push-to-hub", "my org/pets"]) == 2
    assert "--push-to-hub 'my org/pets' is not a Hub repo id: give ORG/NAME" in capsys.readouterr().err
    assert main(["export", str(image_ckpt), "--to", str(out), "--public"]) == 2
    assert "--public needs --push-to-hub ORG/NAME" in capsys.readouterr().err
    assert not out.exists() and hub.calls == []
