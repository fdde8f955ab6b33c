"""``lightning-recipes export`` of pretrained heads used as-is: an image classifier scoring its data through a
``class_map`` of ImageNet labels, and a text classifier with its own trained head (``id2label``), with and
without a ``class_map``. The export holds the pretrained outputs; ``export.json`` says how the data's
classes are read from them, and a reload without lightning_recipes gives the checkpoint's scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from export_helpers import reload_probabilities, save_checkpoint, text_inputs
from tiny_text_models import save_tiny_classifier

from lightning_recipes import DataSpec, ImageClassifier, TextClassifier
from lightning_recipes.cli import main

CATS = ["tabby cat", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"]
DOG_IDS = list(range(151, 269))  # ImageNet-1k's 118 dog breeds


def export(capsys, ckpt: Path, to: Path, *args: str) -> dict:
    code = main(["export", str(ckpt), "--to", str(to), "--no-wandb", *args])
    assert code == 0, capsys.readouterr().err
    return json.loads((to / "export.json").read_text())


@pytest.mark.parametrize("fmt", ["timm", "torchscript"])
def test_an_as_is_image_classifier_exports_its_pretrained_outputs_and_its_class_map(
    fmt, tmp_path, capsys
) -> None:
    torch.manual_seed(0)
    model = ImageClassifier(
        "test_resnet", pretrained=False, head="pretrained", class_map={"cats": CATS, "dogs": DOG_IDS}
    )
    model.accept_data_spec(DataSpec(label_names=["dogs", "cats"]))  # the data's order, not the map's
    ckpt = save_checkpoint(model, tmp_path / "asis.ckpt")
    record = export(capsys, ckpt, tmp_path / fmt, "--format", fmt)

    assert len(record["label_names"]) == 1000 and record["label_names"][281] == "tabby, tabby cat"
    assert list(record["class_map"]) == ["dogs", "cats"] and record["class_map"]["dogs"] == DOG_IDS
    assert sorted(record["class_map"]["cats"]) == [281, 282, 283, 284, 285]
    images = {"images": torch.randn(4, 3, 32, 32)}
    got = reload_probabilities(fmt, tmp_path / fmt, images, tmp_path)  # 1,000 ImageNet probabilities
    loaded = ImageClassifier.load_from_checkpoint(ckpt).eval()
    with torch.no_grad():
        logits = loaded(images["images"])
        torch.testing.assert_close(got, logits.softmax(-1), atol=1e-5, rtol=0)
        # What a user does with export.json: each class's renormalised probability mass is the module's score
        mass = torch.stack([got[:, ids].sum(-1) for ids in record["class_map"].values()], -1)
        expected = loaded.class_logits(logits).softmax(-1)
    torch.testing.assert_close(mass / mass.sum(-1, keepdim=True), expected, atol=1e-5, rtol=0)
    card = (tmp_path / fmt / "README.md").read_text()
    assert "The model is used as-is: its outputs are the pretrained labels" in card


def test_a_text_classifier_with_its_own_trained_head_exports_its_labels(tmp_path, capsys) -> None:
    folder = save_tiny_classifier(tmp_path / "sst", {0: "NEGATIVE", 1: "POSITIVE"})
    inputs = text_inputs(vocab=8)
    for name, kwargs in {"own": {}, "mapped": {"class_map": {"pos": "POSITIVE", "neg": 0}}}.items():
        model = TextClassifier(str(folder), head="pretrained", **kwargs)
        if kwargs:
            model.accept_data_spec(DataSpec(label_names=["neg", "pos"]))
        ckpt = save_checkpoint(model, tmp_path / f"{name}.ckpt")
        record = export(capsys, ckpt, tmp_path / name)
        config = json.loads((tmp_path / name / "config.json").read_text())
        assert config["id2label"] == {"0": "NEGATIVE", "1": "POSITIVE"}  # the head speaks its own labels
        assert record["label_names"] == ["NEGATIVE", "POSITIVE"]
        assert record.get("class_map") == ({"neg": [0], "pos": [1]} if kwargs else None)
        got = reload_probabilities("hf-text", tmp_path / name, inputs, tmp_path)
        with torch.no_grad():
            expected = TextClassifier.load_from_checkpoint(ckpt).eval()(inputs).softmax(-1)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_an_export_of_a_tta_run_holds_the_single_view_model_and_its_card_says_so(tmp_path, capsys) -> None:
    torch.manual_seed(0)
    model = ImageClassifier("test_resnet", pretrained=False, num_classes=2, tta="flip")
    ckpt = save_checkpoint(model, tmp_path / "tta.ckpt")
    export(capsys, ckpt, tmp_path / "out")
    images = {"images": torch.randn(3, 3, 32, 32)}
    got = reload_probabilities("timm", tmp_path / "out", images, tmp_path)
    with torch.no_grad():  # forward is one view; the averaged views are the module's evaluation_logits
        torch.testing.assert_close(got, model.eval()(images["images"]).softmax(-1), atol=1e-5, rtol=0)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "test-time augmentation (`tta: flip`)" in card and "The exported model scores one view" in card
