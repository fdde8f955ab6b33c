"""``lightning-recipes export`` refusing: a checkpoint not from this library, a format the model cannot take,
an adapter a format cannot hold unmerged, an export whose predictions differ (nothing is left behind); and a
classifier's LoRA adapter exported merged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from export_helpers import perturb_lora, reload_probabilities, save_checkpoint, text_inputs

import lightning_recipes.export as export_module
from lightning_recipes import ImageClassifier, TextClassifier
from lightning_recipes.cli import main


@pytest.fixture(scope="module")
def image_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = ImageClassifier("test_resnet", pretrained=False, num_classes=2, label_names=["cat", "dog"])
    return save_checkpoint(model, tmp_path_factory.mktemp("image") / "image.ckpt")


def export(capsys, *args: object) -> tuple[int, str]:
    code = main(["export", *map(str, args)])
    return code, capsys.readouterr().err


def nothing_left(folder: Path) -> bool:
    return not folder.exists() and not list(folder.parent.glob(f".{folder.name}.export-*"))


def test_bad_input_is_one_line_and_exit_code_2(image_ckpt, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    torch.save({"weights": torch.ones(2)}, tmp_path / "plain.pt")
    code, err = export(capsys, tmp_path / "plain.pt", "--to", out)
    assert code == 2 and "plain.pt is not a Lightning checkpoint of a lightning_recipes module" in err

    foreign = {"state_dict": {}, "hyper_parameters": {"_class_path": "torch.nn.Linear"}}
    torch.save(foreign, tmp_path / "foreign.ckpt")
    code, err = export(capsys, tmp_path / "foreign.ckpt", "--to", out)
    assert code == 2 and "was saved from torch.nn.Linear, not from a lightning_recipes module" in err

    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    code, err = export(capsys, tmp_path / "text.ckpt", "--to", out)
    assert code == 2 and "text.ckpt is not a PyTorch checkpoint" in err

    (tmp_path / "empty_run").mkdir()
    code, err = export(capsys, tmp_path / "empty_run", "--to", out)
    assert code == 2 and "holds no checkpoint (expected" in err

    code, err = export(capsys, image_ckpt, "--to", out, "--format", "hf")
    assert (
        code == 2
        and "--format hf does not take an image classifier; it exports as timm, torchscript, onnx" in err
    )

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    code, err = export(capsys, image_ckpt, "--to", tmp_path / "taken")
    assert code == 2 and "exists and is not empty; pass --overwrite" in err
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    assert all(len(e.strip().splitlines()) == 1 for e in [err]) and nothing_left(out)


def test_a_head_timm_cannot_hold_is_refused_naming_the_formats_that_can(tmp_path, capsys) -> None:
    model = ImageClassifier("test_resnet", pretrained=False, num_classes=2, hidden_dim=8)
    ckpt = save_checkpoint(model, tmp_path / "mlp.ckpt")
    code, err = export(capsys, ckpt, "--to", tmp_path / "out")
    assert code == 2 and "one Linear layer" in err and "--format torchscript or onnx take any head" in err
    assert nothing_left(tmp_path / "out")


def test_onnx_on_a_torch_older_than_its_exporter_needs_is_refused_before_any_work(
    image_ckpt, tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.setattr(torch, "__version__", "2.6.0+cu124")
    code, err = export(capsys, image_ckpt, "--to", tmp_path / "out", "--format", "onnx")
    assert code == 2 and "--format onnx needs" in err and nothing_left(tmp_path / "out")
    if "not installed" not in err:  # with the onnx extra, the torch version is what is named
        assert "needs torch >= 2.7 (this is 2.6.0+cu124" in err and "--format torchscript" in err


def test_a_parity_failure_refuses_and_leaves_nothing(image_ckpt, tmp_path, capsys, monkeypatch) -> None:
    write = export_module.write_format

    def corrupt_then_write(source, *args, **kwargs):  # after the checkpoint's reference predictions
        with torch.no_grad():
            next(source.module.head.parameters())[0].add_(0.5)  # one class: softmax changes
        return write(source, *args, **kwargs)

    monkeypatch.setattr(export_module, "write_format", corrupt_then_write)
    code, err = export(capsys, image_ckpt, "--to", tmp_path / "out", "--format", "torchscript")
    assert code == 1 and "export refused: the torchscript export predicts other probabilities" in err
    assert "> tolerance 0.0001" in err and nothing_left(tmp_path / "out")

    # With --overwrite, a refused export leaves the earlier folder as it was.
    (tmp_path / "earlier").mkdir()
    (tmp_path / "earlier" / "model.pt").write_text("earlier")
    code, err = export(
        capsys, image_ckpt, "--to", tmp_path / "earlier", "--format", "torchscript", "--overwrite"
    )
    assert code == 1 and (tmp_path / "earlier" / "model.pt").read_text() == "earlier"


def test_a_classifier_lora_adapter_exports_merged_and_is_refused_unmerged(tmp_path, capsys) -> None:
    import peft
    from tiny_text_models import make_model

    bert = make_model(tmp_path / "bert")
    torch.manual_seed(0)
    adapter = peft.LoraConfig(r=4)
    model = TextClassifier(str(bert), num_classes=2, hidden_dim=32, activation="tanh", adapter=adapter)
    perturb_lora(model)
    ckpt = save_checkpoint(model, tmp_path / "lora.ckpt")

    code, err = export(capsys, ckpt, "--to", tmp_path / "out")
    assert code == 2 and "--format hf without --merge" in err and "pass --merge" in err
    assert nothing_left(tmp_path / "out")

    assert export(capsys, ckpt, "--to", tmp_path / "out", "--merge")[0] == 0
    inputs = text_inputs()
    loaded = TextClassifier.load_from_checkpoint(ckpt).eval()
    with torch.no_grad():
        expected = loaded(inputs).softmax(-1)
        base = TextClassifier(str(bert), num_classes=2, hidden_dim=32, activation="tanh")
        base.head.load_state_dict(loaded.head.state_dict())
        assert (base.eval()(inputs).softmax(-1) - expected).abs().max() > 1e-3  # the adapter matters
    got = reload_probabilities("hf-text", tmp_path / "out", inputs, tmp_path)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
