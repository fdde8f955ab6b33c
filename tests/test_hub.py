"""Hub failures: one place (_hub.hub_call), HF_HUB_OFFLINE honoured, fast when the Hub does not answer,
hints that fit the family, one network probe in the whole package."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import constants
from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

import lightning_recipes
from lightning_recipes import CausalLM, ImageClassifier, TextClassifier, TextDataModule
from lightning_recipes._hub import PretrainedLoadError, hint, hub_call, hub_reachable


@pytest.fixture
def hub_down(monkeypatch):
    """Offline mode not set, and the Hub endpoint a closed port on this machine (refuses at once)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    hub_reachable.cache_clear()
    yield
    hub_reachable.cache_clear()


def test_an_unanswering_hub_fails_at_once_in_offline_mode(hub_down) -> None:
    assert not hub_reachable()
    with pytest.raises(PretrainedLoadError, match="could not be reached.*hf download") as info:
        CausalLM(model_name_or_path="lightning-recipes-test/no-such-model")
    assert "lightning-recipes-test/no-such-model" in str(info.value)
    seen = []

    def loader() -> None:  # records whether it ran offline, then fails as a missing cache entry does
        from huggingface_hub import is_offline_mode

        seen.append(is_offline_mode())
        raise OSError("not cached") from OfflineModeIsEnabled("offline")

    with pytest.raises(PretrainedLoadError, match="could not be reached"):
        hub_call("org/model", "transformers", "model", loader)
    assert seen == [True]  # the loader ran offline: no request, no retry storm
    assert constants.HF_HUB_OFFLINE is False  # offline mode was only for that call
    assert hub_reachable.cache_info().misses == 1  # the Hub was asked once for all three


def test_offline_mode_set_by_the_user_is_honoured_without_a_probe(monkeypatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets at import
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    hub_reachable.cache_clear()

    def loader() -> None:  # what transformers raises for a model that is not in the cache, offline
        raise OSError("not cached") from LocalEntryNotFoundError("outgoing traffic has been disabled")

    with pytest.raises(PretrainedLoadError, match="HF_HUB_OFFLINE is set, and 'org/model' is neither"):
        hub_call("org/model", "transformers", "model", loader)
    assert hub_reachable.cache_info().misses == 0  # no probe: offline mode says it all


def test_the_hub_probe_is_the_only_network_probe_of_the_package() -> None:
    package = Path(lightning_recipes.__file__).parent
    words = ("socket", "urlopen", "httpx", "requests.")
    probing = sorted(
        path.relative_to(package).as_posix()
        for path in package.rglob("*.py")
        if any(word in path.read_text() for word in words)
    )
    assert probing == ["_hub.py"]  # W&B's fallback relies on wandb's own errors


def test_hints_fit_the_family() -> None:
    timm = hint("resnet50.a1_in1k", "timm")
    assert "hf download timm/resnet50.a1_in1k --local-dir ./resnet50.a1_in1k" in timm
    assert "local-dir:./resnet50.a1_in1k" in timm
    transformers = hint("gpt2", "transformers")
    assert "hf download gpt2 --local-dir ./gpt2" in transformers
    assert "local-dir:" not in transformers and "pretrained" not in transformers
    assert "train_file" in hint("nyu-mll/glue", "datasets") and "--repo-type dataset" in hint(
        "x/y", "datasets"
    )


def test_each_family_names_the_id_and_a_missing_folder_is_not_a_repo_id_error(tmp_path: Path) -> None:
    with pytest.raises(PretrainedLoadError, match="hf download timm/resnet18.a1_in1k"):
        ImageClassifier("resnet18.a1_in1k", num_classes=2)
    with pytest.raises(PretrainedLoadError, match="--local-dir ./no-such-model"):
        TextClassifier("no-such-org/no-such-model", num_classes=2)
    with pytest.raises(FileNotFoundError, match="no-such-folder"):
        TextClassifier(str(tmp_path / "no-such-folder"), num_classes=2)
    with pytest.raises(PretrainedLoadError, match="train_file"):
        dm = TextDataModule(dataset="no-such-org/no-such-dataset", tokenizer=None)
        dm.data_spec()
