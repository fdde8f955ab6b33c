"""The zoo's fine-tuned text classifier: built like TextClassifier(head="pretrained"), loaded as-is."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_recipes import TextClassifier, zoo
from lightning_recipes._zoo_text import FinetunedTextClassifier, _SourceTextClassifier, shared_file


def tiny_encoder(folder: Path) -> Path:
    """A 1-layer BERT base model (no classification head) and a WordPiece tokenizer."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import AutoModel, BertConfig, BertTokenizerFast

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=16, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    AutoModel.from_config(config).save_pretrained(folder)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film", "dull", "fun"]
    BertWordPieceTokenizer({w: i for i, w in enumerate(vocab)}).save(str(folder / "tokenizer.json"))
    BertTokenizerFast(tokenizer_file=str(folder / "tokenizer.json")).save_pretrained(folder)
    return folder


def test_source_model_matches_text_classifier_with_its_own_head(tmp_path: Path):
    """Same parts, draws, parameter groups and outputs as TextClassifier(head="pretrained", num_classes=2)."""
    encoder = str(tiny_encoder(tmp_path / "enc"))
    L.seed_everything(0, verbose=False)
    source = _SourceTextClassifier(encoder, ["negative", "positive"], lr=1e-4)
    L.seed_everything(0, verbose=False)
    reference = TextClassifier(encoder, head="pretrained", num_classes=2, lr=1e-4)
    assert list(source.state_dict()) == list(reference.state_dict())
    for a, b in zip(source.state_dict().values(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    groups = [(g["name"], g["lr"], len(g["params"])) for g in source.param_groups()]
    assert groups == [(g["name"], g["lr"], len(g["params"])) for g in reference.param_groups()]
    batch = dict(source.tokenizer(["good film", "dull"], padding=True, return_tensors="pt"))
    assert torch.equal(source.eval()(batch), reference.eval()(batch))


def test_build_caches_a_finetuned_folder_that_loads_by_name_as_is(tmp_path: Path, monkeypatch):
    shared = tmp_path / "shared"
    tiny_encoder(shared / "enc")
    rows = ["good film\t1", "bad film\t0", "fun film\t1", "dull film\t0"] * 8
    (shared / "train.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    monkeypatch.setenv("LIGHTNING_RECIPES_SHARED", str(shared))
    monkeypatch.setenv("LIGHTNING_RECIPES_CACHE", str(tmp_path / "cache"))
    for name in zoo.SEED_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    entry = FinetunedTextClassifier("tiny.sst2", "enc", "train.tsv", ("negative", "positive"), train_size=16)
    monkeypatch.setitem(zoo.ZOO, "tiny.sst2", entry)
    before = torch.get_rng_state()
    assert zoo.main(["build", "tiny.sst2"]) == 0
    assert torch.equal(torch.get_rng_state(), before)  # the caller's random state is untouched
    folder = entry.path()
    assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()

    model = TextClassifier("tiny.sst2", head="pretrained").eval()
    assert model.labels == ["negative", "positive"] and model.output_names == ["negative", "positive"]
    [out] = model.predict_texts(["good film"])
    assert out["label"] in ("negative", "positive") and sum(out["probabilities"].values()) == pytest.approx(1)
    from transformers import AutoModelForSequenceClassification

    hf = AutoModelForSequenceClassification.from_pretrained(folder)
    assert hf.config.id2label == {0: "negative", 1: "positive"}
    assert not torch.equal(hf.classifier.weight, _untrained_classifier(shared / "enc"))  # it was trained


def _untrained_classifier(encoder: Path) -> torch.Tensor:
    L.seed_everything(0, verbose=False)
    return _SourceTextClassifier(str(encoder), ["negative", "positive"], lr=1e-4).model.classifier.weight


def test_missing_shared_files_say_where_they_were_looked_for(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("LIGHTNING_RECIPES_SHARED", str(tmp_path))
    with pytest.raises(
        FileNotFoundError, match=r"no/such.tsv is not on this machine \(looked in .*LIGHTNING"
    ):
        shared_file("no/such.tsv")
    with pytest.raises(
        ValueError, match="zoo name 'resnet10t.digits04' is a timm backbone, not a transformers model"
    ):
        TextClassifier("resnet10t.digits04", head="pretrained")
