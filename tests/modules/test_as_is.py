"""Models used as-is: the pretrained head's own labels, class_map scoring, and the errors around them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_text_models import save_tiny_classifier

from lightning_recipes import DataSpec, ImageClassifier, TextClassifier, registry, zoo
from lightning_recipes._random_state import SEED_ENV_VARS
from lightning_recipes.modules._heads import resolve_class_map, resolve_label

CATS = ["tabby cat", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"]
DOG_IDS = list(range(151, 269))  # ImageNet-1k's 118 dog breeds


def imagenet_asis(**kwargs) -> ImageClassifier:
    """test_resnet with its own (random) ImageNet-1k classifier: 1,000 outputs named by timm."""
    torch.manual_seed(0)
    return ImageClassifier("test_resnet", pretrained=False, head="pretrained", **kwargs)


def test_own_head_predictions_name_the_imagenet_labels():
    model = imagenet_asis().eval()
    assert model.num_classes == 1000 and model.output_names == model.label_names
    assert model.label_names[281] == "tabby, tabby cat" and model.label_names[151] == "Chihuahua"
    assert model.label_names[134] == "crane (n02012849)" and model.label_names[517] == "crane (n03126707)"
    out = model.predict_step((torch.randn(3, 3, 32, 32), {"path": ["a", "b", "c"]}), 0)
    assert out["probabilities"].shape == (3, 1000) and out["label_names"] == model.label_names
    top = out["probabilities"].argmax(-1).tolist()
    assert out["labels"] == [model.label_names[i] for i in top]
    # The classifier moved out of the model with its weights: backbone + head = timm's own forward.
    assert isinstance(model.head, torch.nn.Linear) and model.head.out_features == 1000
    assert model.backbone(torch.randn(1, 3, 32, 32)).shape == (1, model.head.in_features)


def test_class_map_scores_the_renormalised_mass_of_the_mapped_labels():
    model = imagenet_asis(class_map={"cats": CATS, "dogs": DOG_IDS}).eval()
    assert model.label_names == ["cats", "dogs"] and model.num_classes == 2
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        p = model(images).softmax(-1)
        out = model.predict_step(images, 0)
    cat_mass, dog_mass = p[:, 281:286].sum(-1), p[:, 151:269].sum(-1)
    expected = torch.stack([cat_mass, dog_mass], -1) / (cat_mass + dog_mass)[:, None]
    assert torch.allclose(out["probabilities"], expected, atol=1e-6)
    assert out["label_names"] == ["cats", "dogs"]
    # Loss and metrics speak the two classes: -log of the renormalised mass of the true class.
    target = torch.tensor([0, 1, 1, 0])
    with torch.no_grad():
        logits, _ = model.logits_and_target((images, target))
        loss = model.loss(model.class_logits(logits), target)
    assert loss.item() == pytest.approx(-expected[torch.arange(4), target].log().mean().item(), rel=1e-5)
    assert model.val_metrics["val/acc"].num_classes == 2


def test_class_map_follows_the_datas_class_order_and_needs_every_class():
    model = imagenet_asis(class_map={"dogs": "n02099601", "cats": "tabby cat"})
    model.accept_data_spec(DataSpec(label_names=["cats", "dogs"]))
    assert model.label_names == ["cats", "dogs"] and model._class_ids == [[281], [207]]
    with pytest.raises(ValueError, match=r"does not map the data's class\(es\) \['birds'\].*Add 'birds'"):
        imagenet_asis(class_map={"cats": CATS, "dogs": DOG_IDS}).accept_data_spec(
            DataSpec(label_names=["birds", "cats", "dogs"])
        )
    with pytest.raises(ValueError, match=r"maps \['dogs'\], which the data does not have"):
        imagenet_asis(class_map={"cats": CATS, "dogs": DOG_IDS}).accept_data_spec(
            DataSpec(label_names=["cats"])
        )


def test_own_head_without_class_map_rejects_data_of_other_classes():
    with pytest.raises(ValueError, match=r"not the pretrained head's labels.*give model class_map"):
        imagenet_asis().accept_data_spec(DataSpec(label_names=["cats", "dogs"]))


def test_bad_labels_name_the_label_and_the_closest_ones():
    names = imagenet_asis().label_names
    with pytest.raises(ValueError, match=r"no label 'tabby kat'\. Close names: 'tabby cat'"):
        resolve_label("tabby kat", names)
    with pytest.raises(ValueError, match=r"'crane' is ambiguous: it names 'crane \(n02012849\)' \(id 134\)"):
        resolve_label("crane", names)
    with pytest.raises(ValueError, match="label id 1000 is out of range: the model has 1000 labels"):
        resolve_label(1000, names)
    with pytest.raises(ValueError, match=r"'tiger cat' \(id 282\) is mapped to both 'a' and 'b'"):
        resolve_class_map({"a": ["tabby cat", "tiger cat"], "b": [282]}, names)
    with pytest.raises(ValueError, match="no label 'wolf'"):
        imagenet_asis(class_map={"wolf": "wolf", "dogs": DOG_IDS})


def test_head_choices_and_class_map_need_the_models_own_head():
    with pytest.raises(
        ValueError, match=r"ImageClassifier: head='own' is not one of 'new' .* or 'pretrained'"
    ):
        ImageClassifier("test_resnet", pretrained=False, head="own")
    # the old name of head="pretrained" is gone (no alias): an unknown choice like any other
    with pytest.raises(ValueError, match=r"head='model' is not one of 'new' .* or 'pretrained'"):
        ImageClassifier("test_resnet", pretrained=False, head="model", num_classes=3)
    own = ImageClassifier("test_resnet", pretrained=False, head="pretrained", num_classes=3)
    assert own.head_kind == own.hparams.head == "pretrained"
    with pytest.raises(
        ValueError, match="class_map maps the pretrained head's own labels: give head='pretrained'"
    ):
        ImageClassifier("test_resnet", pretrained=False, num_classes=2, class_map={"a": 1, "b": 2})
    # num_classes with head="pretrained": the architecture's classifier, new, for fine-tuning.
    model = ImageClassifier("test_resnet", pretrained=False, head="pretrained", num_classes=3)
    assert model.head.out_features == 3 and model.output_names is None and model.num_classes == 3


def test_own_head_on_weights_without_a_classifier_is_an_error(tmp_path: Path):
    import timm

    folder = tmp_path / "features_only"
    folder.mkdir()
    save_file(timm.create_model("test_resnet", num_classes=0).state_dict(), str(folder / "model.safetensors"))
    config = {"architecture": "test_resnet", "num_classes": 0, "pretrained_cfg": {"num_classes": 0}}
    (folder / "config.json").write_text(json.dumps(config))
    assert (
        ImageClassifier(f"local-dir:{folder}", num_classes=2).head[-1].out_features == 2
    )  # a new head: fine
    with pytest.raises(ValueError, match=r"head='pretrained': model 'local-dir:.*' has no classifier"):
        ImageClassifier(f"local-dir:{folder}", head="pretrained")


@pytest.fixture
def tiny_digits_zoo(tmp_path, monkeypatch) -> str:
    monkeypatch.setenv("LIGHTNING_RECIPES_CACHE", str(tmp_path / "cache"))
    entry = registry.DigitsWeights("test_resnet", (0, 1), epochs=1)
    monkeypatch.setitem(registry.ZOO, "test_resnet.digits01", entry)
    for name in SEED_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    zoo.build("test_resnet.digits01")
    return "test_resnet.digits01"


def test_zoo_model_as_is_keeps_its_trained_head_and_digit_names(tiny_digits_zoo):
    asis = ImageClassifier(tiny_digits_zoo, head="pretrained")
    saved = load_file(str(registry.built(tiny_digits_zoo)))
    assert asis.label_names == ["0", "1"] and asis.output_names == ["0", "1"]
    assert torch.equal(asis.head.weight, saved["fc.weight"]) and torch.equal(asis.head.bias, saved["fc.bias"])
    # A new head on the same weights loads the backbone only, unchanged.
    new = ImageClassifier(tiny_digits_zoo, num_classes=4)
    for key, value in new.backbone.state_dict().items():
        assert torch.equal(value, saved[key]), key
    assert torch.equal(asis.backbone.conv1[0].weight, new.backbone.conv1[0].weight)


def test_image_checkpoint_of_an_as_is_model_reloads_with_its_classes(tmp_path: Path):
    import lightning as L

    model = imagenet_asis(class_map={"dogs": DOG_IDS, "cats": CATS})
    model.accept_data_spec(DataSpec(label_names=["cats", "dogs"]))
    trainer = L.Trainer(logger=False, enable_checkpointing=False, max_steps=0)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "asis.ckpt")
    loaded = ImageClassifier.load_from_checkpoint(tmp_path / "asis.ckpt").eval()
    assert loaded.label_names == ["cats", "dogs"] and loaded._class_ids == model._class_ids
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(
            loaded.predict_step(images, 0)["probabilities"],
            model.eval().predict_step(images, 0)["probabilities"],
        )


# -- text ----------------------------------------------------------------------------------------


def test_text_own_head_uses_id2label_and_class_map(tmp_path: Path):
    from transformers import AutoModelForSequenceClassification

    folder = save_tiny_classifier(tmp_path / "sst", {0: "NEGATIVE", 1: "POSITIVE"})
    model = TextClassifier(str(folder), head="pretrained").eval()
    assert model.label_names == ["NEGATIVE", "POSITIVE"] and model.num_classes == 2
    reference = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    assert torch.equal(model.head["classifier"].weight, reference.classifier.weight)  # the trained head, kept
    [plain] = model.predict_texts(["good film"])
    assert set(plain["probabilities"]) == {"NEGATIVE", "POSITIVE"}

    mapped = TextClassifier(str(folder), head="pretrained", class_map={"pos": "POSITIVE", "neg": 0}).eval()
    mapped.accept_data_spec(DataSpec(label_names=["neg", "pos"]))
    [out] = mapped.predict_texts(["good film"])
    assert out["probabilities"] == pytest.approx(
        {"neg": plain["probabilities"]["NEGATIVE"], "pos": plain["probabilities"]["POSITIVE"]}, abs=1e-6
    )
    assert mapped.hf_config().id2label == {0: "NEGATIVE", 1: "POSITIVE"}  # the head still speaks its labels
    with pytest.raises(ValueError, match=r"no label 'positiv'\. Close names: 'POSITIVE'"):
        TextClassifier(str(folder), head="pretrained", class_map={"pos": "positiv", "neg": 0})


def test_text_own_head_on_a_base_model_is_an_error(tmp_path: Path):
    folder = save_tiny_classifier(tmp_path / "base", None)
    with pytest.raises(
        ValueError, match=r"has none \(its weights lack \['classifier.bias', 'classifier.weight'"
    ):
        TextClassifier(str(folder), head="pretrained")
    # With num_classes the architecture's head is trained: fine, as before.
    assert TextClassifier(str(folder), head="pretrained", num_classes=3).head["classifier"].out_features == 3


def test_text_checkpoint_of_an_as_is_model_reloads_offline_with_its_classes(tmp_path: Path):
    import lightning as L

    folder = save_tiny_classifier(tmp_path / "sst", {0: "NEGATIVE", 1: "POSITIVE"})
    model = TextClassifier(str(folder), head="pretrained", class_map={"pos": "POSITIVE", "neg": "NEGATIVE"})
    model.accept_data_spec(DataSpec(label_names=["neg", "pos"]))
    trainer = L.Trainer(logger=False, enable_checkpointing=False, max_steps=0)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "asis.ckpt")
    loaded = TextClassifier.load_from_checkpoint(tmp_path / "asis.ckpt")
    assert loaded.label_names == ["neg", "pos"] and loaded.output_names == ["NEGATIVE", "POSITIVE"]
    texts = ["good film", "bad film"]
    for got, want in zip(loaded.predict_texts(texts), model.predict_texts(texts), strict=True):
        assert got["label"] == want["label"]
        assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-6)
