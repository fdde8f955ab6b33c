"""The zoo's fine-tuned text classifier (lightning_recipes/zoo/text.py): TextClassifier(head="pretrained")
fine-tuned by a Trainer, built from an explicit shared folder, loaded as-is once built."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_recipes import TextClassifier, registry, zoo
from lightning_recipes._random_state import SEED_ENV_VARS
from lightning_recipes.registry import TextClassifierWeights, ZooNotBuiltError
from lightning_recipes.schedulers import WarmupDecay
from lightning_recipes.zoo.text import source_model

LABELS = ("negative", "positive")


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


def test_source_model_is_text_classifier_with_its_own_head(tmp_path: Path):
    """The zoo fine-tunes TextClassifier(head="pretrained", num_classes=2) itself: same parts, draws,
    parameter groups and outputs as one built by hand, and its warm-up/linear-decay schedule per step."""
    encoder = tiny_encoder(tmp_path / "enc")
    entry = TextClassifierWeights("tiny.sst2", "enc", "train.tsv", LABELS)
    L.seed_everything(0, verbose=False)
    source = source_model(entry, encoder)
    L.seed_everything(0, verbose=False)
    reference = TextClassifier(str(encoder), head="pretrained", num_classes=2, lr=1e-4)
    assert isinstance(source, TextClassifier) and source.label_names == list(LABELS)
    assert list(source.state_dict()) == list(reference.state_dict())
    for a, b in zip(source.state_dict().values(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    groups = [(g["name"], g["lr"], len(g["params"])) for g in source.param_groups()]
    assert groups == [(g["name"], g["lr"], len(g["params"])) for g in reference.param_groups()]
    batch = dict(source.tokenizer(["good film", "dull"], padding=True, return_tensors="pt"))
    assert torch.equal(source.eval()(batch), reference.eval()(batch))
    schedule = source.scheduler_factory
    assert isinstance(schedule, partial) and schedule.func is WarmupDecay
    assert (
        schedule.keywords == {"warmup_ratio": 0.1, "decay": "linear"} and source.scheduler_interval == "step"
    )


@pytest.fixture
def tiny_sst2(tmp_path: Path, monkeypatch) -> tuple[TextClassifierWeights, Path]:
    """A zoo entry fine-tuning a tiny encoder on 16 toy sentences of a shared folder, in a cold cache."""
    shared = tmp_path / "shared"
    tiny_encoder(shared / "enc")
    rows = ["good film\t1", "bad film\t0", "fun film\t1", "dull film\t0"] * 8
    (shared / "train.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    monkeypatch.setenv("LIGHTNING_RECIPES_CACHE", str(tmp_path / "cache"))
    for name in SEED_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    entry = TextClassifierWeights("tiny.sst2", "enc", "train.tsv", LABELS, train_size=16)
    monkeypatch.setitem(registry.ZOO, "tiny.sst2", entry)
    return entry, shared


def test_build_caches_a_finetuned_folder_that_loads_by_name_as_is(tiny_sst2, monkeypatch, capsys):
    entry, shared = tiny_sst2
    monkeypatch.delenv("LIGHTNING_RECIPES_SHARED")  # the folder is given with --source
    with pytest.raises(ZooNotBuiltError, match=r"zoo build tiny.sst2.*enc, train.tsv.*--source DIR"):
        TextClassifier("tiny.sst2", head="pretrained")  # the core never builds
    before = torch.get_rng_state()
    assert zoo.main(["build", "tiny.sst2", "--source", str(shared)]) == 0
    assert torch.equal(torch.get_rng_state(), before)  # the caller's random state is untouched
    folder = entry.path()
    assert capsys.readouterr().out.splitlines()[-1] == f"tiny.sst2: built {folder}"
    assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()

    model = TextClassifier("tiny.sst2", head="pretrained").eval()
    assert model.label_names == ["negative", "positive"] and model.output_names == ["negative", "positive"]
    [out] = model.predict_texts(["good film"])
    assert out["label"] in ("negative", "positive") and sum(out["probabilities"].values()) == pytest.approx(1)
    from transformers import AutoModelForSequenceClassification

    hf = AutoModelForSequenceClassification.from_pretrained(folder)
    assert hf.config.id2label == {0: "negative", 1: "positive"}
    L.seed_everything(0, verbose=False)
    untrained = source_model(entry, shared / "enc").model.classifier.weight
    assert not torch.equal(hf.classifier.weight, untrained)  # it was trained


def test_missing_shared_files_say_where_they_were_looked_for(tiny_sst2, tmp_path: Path, monkeypatch):
    entry, shared = tiny_sst2
    monkeypatch.setitem(
        registry.ZOO, "tiny.sst2", TextClassifierWeights("tiny.sst2", "enc", "no/such.tsv", LABELS)
    )
    with pytest.raises(
        FileNotFoundError, match=rf"'tiny.sst2' is built from no/such.tsv, not found in {shared}"
    ):
        zoo.build("tiny.sst2", source=shared)
    monkeypatch.setenv("LIGHTNING_RECIPES_SHARED", str(tmp_path / "elsewhere"))
    with pytest.raises(FileNotFoundError, match=r"enc, not found in .*elsewhere \(.*--source DIR"):
        zoo.build("tiny.sst2")
    assert not list((tmp_path / "cache").glob("weights/*"))  # nothing half-built
    with pytest.raises(
        ValueError, match="zoo name 'resnet10t.digits04' is a timm backbone, not a transformers model"
    ):
        TextClassifier("resnet10t.digits04", head="pretrained")
