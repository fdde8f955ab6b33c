"""TextClassifier on tiny BERT / DistilBERT models: backbone, head, layer groups, arguments, export.

Training, prediction and DDP: test_text_classifier_training.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_text_models import encode, make_model

from lightning_recipes import TextClassifier
from lightning_recipes._hub import PretrainedLoadError


@pytest.mark.parametrize("kind", ["bert", "distilbert"])
@pytest.mark.parametrize(("head", "pooling"), [("new", "cls"), ("new", "mean"), ("pretrained", "cls")])
def test_backbone_head_and_forward(tmp_path: Path, kind: str, head: str, pooling: str) -> None:
    folder = make_model(tmp_path / kind, kind)
    model = TextClassifier(str(folder), num_classes=3, head=head, pooling=pooling)
    assert type(model.backbone).__name__ == ("BertModel" if kind == "bert" else "DistilBertModel")
    logits = model(encode(model, ["good film", "the plot was dull and boring"]))
    assert logits.shape == (2, 3)
    names = {n for n, _ in model.named_parameters()}
    assert all(n.startswith(("backbone.", "head.")) for n in names)
    # Every parameter is used (no pretrained pooler dangling beside a new head), so DDP needs no
    # find_unused_parameters: a loss over the logits gives every parameter a gradient.
    logits.sum().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    if head == "pretrained":
        assert "classifier" in model.head


def test_pretrained_weights_are_loaded(tiny_bert: Path) -> None:
    from transformers import AutoModel

    reference = AutoModel.from_pretrained(tiny_bert)
    model = TextClassifier(str(tiny_bert), num_classes=2)
    fresh = TextClassifier(str(tiny_bert), num_classes=2, pretrained=False)
    key = "embeddings.word_embeddings.weight"
    assert torch.equal(model.backbone.state_dict()[key], reference.state_dict()[key])
    assert not torch.equal(fresh.backbone.state_dict()[key], reference.state_dict()[key])


@pytest.mark.parametrize("kind", ["bert", "distilbert"])
def test_layer_groups_bottom_to_top(tmp_path: Path, kind: str) -> None:
    model = TextClassifier(str(make_model(tmp_path / kind, kind)), num_classes=2)
    groups = model.layer_groups()
    assert len(groups) == 3
    assert groups[0] is model.backbone.embeddings
    layers = model.backbone.encoder.layer if kind == "bert" else model.backbone.transformer.layer
    assert groups[1] is layers[0] and groups[2] is layers[1]


def test_layer_decay_param_groups(tiny_bert: Path) -> None:
    model = TextClassifier(
        str(tiny_bert), num_classes=2, head="pretrained", lr=1e-3, backbone_lr=1e-4, layer_decay=0.5
    )
    groups = {g["name"]: g for g in model.param_groups()}
    assert list(groups) == ["head", "backbone.0", "backbone.1", "backbone.2"]  # embeddings, layer 0, layer 1
    assert groups["head"]["lr"] == 1e-3
    assert groups["backbone.2"]["lr"] == pytest.approx(1e-4)
    assert groups["backbone.1"]["lr"] == pytest.approx(5e-5)
    assert groups["backbone.0"]["lr"] == pytest.approx(2.5e-5)
    blocks = model.layer_groups()
    for i, block in enumerate(blocks[:-1]):  # the same blocks as layer_groups(), bottom to top
        assert [id(p) for p in groups[f"backbone.{i}"]["params"]] == [id(p) for p in block.parameters()]
    # Every backbone parameter is in exactly one group; the pooler (outside the layers) joins the top one.
    grouped = [id(p) for name, g in groups.items() if name != "head" for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.backbone.parameters())
    assert any(p is model.backbone.pooler.dense.weight for p in groups["backbone.2"]["params"])
    # Frozen blocks leave the optimizer.
    for p in model.layer_groups()[0].parameters():
        p.requires_grad_(False)
    names = [g["name"] for g in model.param_groups()]
    assert names == ["head", "backbone.1", "backbone.2"]
    optimizer = model.configure_optimizers()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-3, 5e-5, 1e-4])


def test_without_decay_two_groups(tiny_bert: Path) -> None:
    model = TextClassifier(str(tiny_bert), num_classes=2, lr=1e-3, backbone_lr=1e-5)
    assert [(g["name"], g["lr"]) for g in model.param_groups()] == [("head", 1e-3), ("backbone", 1e-5)]


def test_invalid_arguments(tiny_bert: Path) -> None:
    with pytest.raises(ValueError, match="pooling='max'"):
        TextClassifier(str(tiny_bert), pooling="max")
    with pytest.raises(ValueError, match="layer_decay must be in"):
        TextClassifier(str(tiny_bert), layer_decay=1.5)
    with pytest.raises(ValueError, match="label_names has 3 names"):
        TextClassifier(str(tiny_bert), num_classes=2, label_names=["a", "b", "c"])


def test_unreachable_hub_id_names_it() -> None:
    with pytest.raises(PretrainedLoadError, match="no-such-org/no-such-model") as info:
        TextClassifier("no-such-org/no-such-model", num_classes=2)
    assert "local" in str(info.value)


def test_gradient_checkpointing_same_loss_and_grads(tiny_bert: Path) -> None:
    inputs = None
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = TextClassifier(
            str(tiny_bert), num_classes=2, dropout=0.0, gradient_checkpointing=checkpointing
        )
        model.train()
        model.backbone.config.hidden_dropout_prob = 0.0
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        inputs = inputs or encode(model, ["good film", "awful dull movie"])
        loss = model.loss(model(inputs), torch.tensor([1, 0]))
        loss.backward()
        results.append((loss.item(), model.backbone.embeddings.word_embeddings.weight.grad.clone()))
    layer = model.backbone.encoder.layer[0]
    assert layer.gradient_checkpointing
    assert results[0][0] == pytest.approx(results[1][0], abs=1e-6)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-6)


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("distilbert", {"head": "pretrained"}),
        ("bert", {"head": "pretrained"}),
        ("bert", {"hidden_dim": 32, "activation": "tanh"}),
        ("distilbert", {"hidden_dim": 32, "activation": "relu"}),
    ],
)
def test_save_pretrained_reads_in_transformers(tmp_path: Path, kind: str, options: dict) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = make_model(tmp_path / kind, kind)
    model = TextClassifier(str(folder), num_classes=3, label_names=["neg", "neu", "pos"], **options).eval()
    torch.nn.init.normal_(
        model.head[-1].weight if "hidden_dim" in options else model.head["classifier"].weight
    )
    out = model.save_pretrained(tmp_path / "export")
    hf = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert hf.config.id2label == {0: "neg", 1: "neu", 2: "pos"} and hf.config.label2id["pos"] == 2
    inputs = dict(tokenizer(["good film", "the plot was dull"], padding=True, return_tensors="pt"))
    with torch.no_grad():
        assert torch.allclose(hf(**inputs).logits, model(inputs), atol=1e-5)


def test_save_pretrained_rejects_inexpressible_head(tiny_bert: Path, tmp_path: Path) -> None:
    model = TextClassifier(str(tiny_bert), num_classes=2, pooling="mean")
    with pytest.raises(ValueError, match="head='pretrained'"):
        model.save_pretrained(tmp_path / "export")
