"""The command ``lightning-recipes suggest`` prints runs, for every scenario it can print and each family.

Each test runs ``suggest`` on tiny data with the scenario forced (``decide`` patched: the measurement
cannot be steered to each scenario on toy data), takes the exact ``Run:`` line it printed, and runs it
through ``lightning_recipes.cli.main`` in-process from a folder laid out like the checkout (``recipes/``
linked). The only arguments added are :data:`SIZE`, each there to keep the run to seconds.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from lightning_recipes import suggest as sg
from lightning_recipes.cli import main

REPO = Path(__file__).resolve().parents[2]
#: What ``decide`` can answer; adapters is never the data's call (docs/suggest.md).
PRINTED = ("fine-tune", "add-layers", "scratch", "as-is")
#: The only arguments the tests add to the printed command, and why.
SIZE = {
    "trainer.limit_train_batches": "2",  # size: 2 training batches per epoch
    "trainer.limit_val_batches": "1",  # size: 1 validation batch
    "trainer.limit_test_batches": "1",  # size: 1 test batch
    "trainer.limit_predict_batches": "1",  # size: 1 prediction batch (as-is recipes predict)
}


def max_epochs(scenario: str) -> str:
    """Size: 1 epoch; add-layers 2, so that the run goes through its first unfreeze."""
    return "2" if scenario == "add-layers" else "1"


@pytest.fixture
def checkout(tmp_path: Path, monkeypatch) -> Path:
    """A working folder laid out like the checkout: the printed ``recipes/...`` path resolves."""
    work = tmp_path / "repo"
    work.mkdir()
    (work / "recipes").symlink_to(REPO / "recipes")
    monkeypatch.chdir(work)
    return work


def printed_command(argv: list[str], scenario: str, monkeypatch, capsys) -> str:
    monkeypatch.setattr(sg, "decide", lambda m, smaller=False: (scenario, "forced by the test"))
    assert main(["suggest", *argv]) == 0
    out = capsys.readouterr().out
    assert f"Scenario:   {scenario}" in out
    return out.split("Run:")[1].strip().splitlines()[0]


def run_printed(command: str, scenario: str, capsys) -> tuple[dict, str]:
    """Run ``command`` as printed (plus :data:`SIZE`); return the run's saved config and its output."""
    argv = shlex.split(command)
    assert argv[:2] == ["lightning", "run"]
    size = [f"--{k}={v}" for k, v in SIZE.items()] + [f"--trainer.max_epochs={max_epochs(scenario)}"]
    code = main([*argv[1:], *size])
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    run_dir = out.out.split("Run directory:")[1].split()[0]
    return yaml.safe_load((Path(run_dir) / "config.yaml").read_text()), out.out


# -- text ----------------------------------------------------------------------------------------
@pytest.fixture
def text_data(tmp_path: Path) -> dict[str, Path]:
    """A tiny classifier whose labels are negative/positive, and train/test files labelled the same."""
    from tiny_text_models import NEGATIVE, POSITIVE, save_tiny_classifier

    files = {}
    for name, repeat in (("train", 4), ("test", 1)):
        rows = [f"{t},positive" for t in POSITIVE] + [f"{t},negative" for t in NEGATIVE]
        files[name] = tmp_path / f"{name}.csv"
        files[name].write_text("text,label\n" + "\n".join(rows * repeat) + "\n")
    files["model"] = save_tiny_classifier(tmp_path / "sentiment", {0: "negative", 1: "positive"})
    return files


@pytest.mark.parametrize("scenario", PRINTED)
def test_printed_text_command_runs_and_tests_on_the_users_test_file(
    scenario, text_data, checkout, monkeypatch, capsys
):
    model, train, test = (str(text_data[k]) for k in ("model", "train", "test"))
    command = printed_command(
        ["--data", train, "--backbone", model, "--test-file", test], scenario, monkeypatch, capsys
    )
    config, out = run_printed(command, scenario, capsys)
    data, net = config["data"]["init_args"], config["model"]["init_args"]
    assert (data["train_file"], data["test_file"]) == (train, test)
    assert "test" in config["stages"] and "test/acc=" in out  # the user's test file was evaluated
    if scenario == "scratch":  # the recipe's own 4 x 256 BERT and a WordPiece trained on the data
        assert net["model_name_or_path"] is None and net["config"]["hidden_size"] == 256
        assert data["wordpiece_vocab_size"] == 8000
    else:
        assert net["model_name_or_path"] == model


def test_text_command_keeps_a_val_file_and_validates_without_a_test_file(
    text_data, checkout, monkeypatch, capsys
):
    model, train, val = (str(text_data[k]) for k in ("model", "train", "test"))
    command = printed_command(
        ["--data", train, "--backbone", model, "--val-file", val], "scratch", monkeypatch, capsys
    )
    config, out = run_printed(command, "scratch", capsys)
    data = config["data"]["init_args"]
    assert (data["val_file"], data["val_fraction"], data["test_file"]) == (val, 0.0, None)
    assert config["stages"] == ["fit", "validate"] and "val/acc=" in out


def test_image_options_for_text_splits_are_refused(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(ValueError, match="--val-file/--test-file are for a text file's own splits"):
        sg.suggest(str(tmp_path), "test_resnet", test_file="t.csv")


# -- images --------------------------------------------------------------------------------------
@pytest.fixture
def imagenet_named_backbone(tmp_path: Path) -> str:
    """``local-dir:`` of a random test_resnet with ImageNet's 1000-class head (its labels' names)."""
    import timm
    import torch
    from timm.models import save_for_hf

    torch.manual_seed(0)
    folder = tmp_path / "test_resnet_in1k"
    save_for_hf(timm.create_model("test_resnet", num_classes=1000), str(folder), safe_serialization=True)
    return f"local-dir:{folder}"


#: Image recipes train at 224 px with W&B offline or an LR finder: 13-16 s each here, so slow; as-is is fast.
IMAGE = [pytest.param(s, marks=pytest.mark.slow) if s != "as-is" else s for s in PRINTED]


@pytest.mark.parametrize("scenario", IMAGE)
def test_printed_image_command_runs_and_tests_on_the_users_test_folder(
    scenario, imagenet_named_backbone, image_folder, checkout, monkeypatch, capsys
):
    # Folders named after ImageNet labels: the as-is recipe's class_map gets the matched labels.
    root = image_folder(splits=("train", "val", "test"), classes=("tench", "goldfish"), per_class=4)
    monkeypatch.setattr(sg, "MAX_IMAGE_SIZE", 32)  # the probe's cap, lowered: a fast test
    command = printed_command(
        ["--data", str(root), "--backbone", imagenet_named_backbone], scenario, monkeypatch, capsys
    )
    config, out = run_printed(command, scenario, capsys)
    data, net = config["data"]["init_args"], config["model"]["init_args"]
    assert data["root"] == str(root) and "test/acc=" in out  # its test/ folder was evaluated
    if scenario == "scratch":  # the recipe's own architecture at random init
        assert (net["model_name_or_path"], net["pretrained"]) == ("resnet18", False)
    else:
        assert net["model_name_or_path"] == imagenet_named_backbone
