"""The handshake (lightning_recipes.connect): what model and data agree on, in one place, one way."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import lightning as L
import pytest

from lightning_recipes import (
    CausalLM,
    DataSpec,
    ImageClassifier,
    ImageDataModule,
    InputSpec,
    TextClassifier,
    TextCorpusDataModule,
    TextDataModule,
    connect,
)
from lightning_recipes.data.bpe import train_bpe_tokenizer

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_recipes"
TINY_GPT2 = {"n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 32, "vocab_size": 300}


def test_image_model_hands_its_data_config_and_takes_the_class_names(image_folder) -> None:
    root = image_folder(classes=("cat", "dog"))
    model = ImageClassifier("test_resnet", num_classes=2, pretrained=False)
    data = ImageDataModule(root=str(root), val_fraction=0.25, batch_size=4)
    assert data.num_classes is None  # a getter reads nothing
    connect(model, data)
    assert data.resolved_data_config()["input_size"] == model.data_config["input_size"]
    assert data.resolved_data_config()["mean"] == model.data_config["mean"]
    assert model.label_names == data.label_names and data.num_classes == 2
    explicit = ImageDataModule(root=str(root), data_config={"input_size": (3, 24, 24)})
    connect(model, explicit)  # an explicit data_config wins over the model's
    assert explicit.resolved_data_config()["input_size"] == (3, 24, 24)


def test_num_classes_that_do_not_match_the_data_name_both(image_folder) -> None:
    root = image_folder(classes=("cat", "dog"))
    model = ImageClassifier("test_resnet", num_classes=5, pretrained=False)
    data = ImageDataModule(root=str(root))
    message = "The data has 2 classes ['cat', 'dog'] but the model was built with num_classes=5"
    with pytest.raises(ValueError, match=re.escape(message)):
        connect(model, data)
    named = ImageClassifier("test_resnet", num_classes=2, pretrained=False, label_names=["ant", "bee"])
    with pytest.raises(
        ValueError, match=r"class names \['cat', 'dog'\] differ from the model's \['ant', 'bee'\]"
    ):
        connect(named, ImageDataModule(root=str(root)))


def tiny_bert_folder(folder: Path) -> Path:
    """A 1-layer BERT with random weights and a WordPiece tokenizer of a few words, saved in ``folder``."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "film", "awful", "movie"]
    folder.mkdir(parents=True)
    BertWordPieceTokenizer({w: i for i, w in enumerate(words)}).save(str(folder / "tokenizer.json"))
    BertTokenizerFast(tokenizer_file=str(folder / "tokenizer.json")).save_pretrained(folder)
    config = BertConfig(vocab_size=16, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)  # fmt: skip
    BertModel(config).save_pretrained(folder)
    return folder


def datamodule(folder: Path, **kwargs) -> TextDataModule:
    return TextDataModule(
        train_file=str(folder / "train.csv"), val_file=str(folder / "dev.csv"), text_column="text",
        cache_dir=str(folder / "cache"), **kwargs,
    )  # fmt: skip


def test_the_data_states_the_task_and_a_model_of_another_is_refused(tmp_path: Path, image_folder) -> None:
    root = image_folder(splits=("",), classes=("a", "b"), per_class=2)
    (root / "multi.csv").write_text("path,label\na/0.png,a|b\nb/0.png,b\na/1.png,a\nb/1.png,a|b\n")
    multilabel = ImageDataModule(train_file=str(root / "multi.csv"), label_separator="|", val_fraction=0.0)
    assert multilabel.data_spec().task == "multilabel"
    assert ImageDataModule(root=str(root), val_fraction=0.0).data_spec().task == "multiclass"
    message = (
        "The data module's task is 'multilabel' but the model's is task='multiclass'; they must agree: set "
        "model task: multilabel (model.init_args.task in a recipe)"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        connect(ImageClassifier("test_resnet", num_classes=2, pretrained=False), multilabel)
    model = ImageClassifier("test_resnet", num_classes=2, pretrained=False, task="multilabel")
    connect(model, multilabel)  # the same task: the names are adopted
    assert model.label_names == ["a", "b"]

    bert = tiny_bert_folder(tmp_path / "bert")
    folder = tmp_path / "data"
    folder.mkdir()
    for name in ("train", "dev"):
        (folder / f"{name}.csv").write_text("text,label\ngood film,0.9\nawful movie,0.1\n")
    regression = datamodule(folder, task="regression")
    assert regression.data_spec().task == "regression"
    with pytest.raises(ValueError, match="task is 'regression' but the model's is task='multiclass'"):
        connect(TextClassifier(str(bert), num_classes=2), regression)
    connect(TextClassifier(str(bert), num_classes=1, task="regression"), regression)
    spec = DataSpec(label_names=["x", "y"], task="multiclass")
    with pytest.raises(ValueError, match="task is 'multiclass' but the model's is task='multilabel'"):
        model.accept_data_spec(spec)  # wherever the spec reaches the model, not only through connect
    assert DataSpec(label_names=["x", "y"]).task is None  # a data module that does not say: no check


def test_label_names_of_model_and_data_share_one_logger(tmp_path: Path, image_folder) -> None:
    """Lightning logs the model's and the data module's hyperparameters together and refuses a key the two
    give different values: ``label_names`` (the option of both) stays the model's."""
    from lightning.pytorch.loggers import CSVLogger

    root = image_folder(splits=("",), classes=("a", "b"), per_class=4)
    data = ImageDataModule(root=str(root), label_names=["b", "a"], val_fraction=0.5, image_size=16)
    model = ImageClassifier("test_resnet", num_classes=2, pretrained=False, label_names=None)
    connect(model, data)
    trainer = L.Trainer(max_steps=1, limit_val_batches=1, logger=CSVLogger(tmp_path),
                        enable_checkpointing=False, enable_progress_bar=False)  # fmt: skip
    trainer.fit(model, datamodule=data)
    assert model.label_names == ["b", "a"] and "label_names" not in data.hparams_initial


def test_text_tokenizer_goes_model_to_data_and_a_different_one_is_refused(tmp_path: Path) -> None:
    bert = tiny_bert_folder(tmp_path / "bert")
    other = tmp_path / "other-tok"
    train_bpe_tokenizer(texts=["good film awful movie"] * 20, vocab_size=270, output_dir=other)
    folder = tmp_path / "data"
    folder.mkdir()
    for name in ("train", "dev"):
        (folder / f"{name}.csv").write_text("text,label\ngood film,pos\nawful movie,neg\n")
    model = TextClassifier(str(bert), num_classes=2)
    data = datamodule(folder)
    connect(model, data)
    assert data.tokenizer is model.tokenizer
    assert model.label_names == ["neg", "pos"] and model.max_length == data.max_length == 128
    assert data.data_spec().tokenizer is model.tokenizer
    same = datamodule(folder, tokenizer=str(bert))  # the same tokenizer named twice is fine
    connect(model, same)
    with pytest.raises(ValueError, match="differ.*Remove tokenizer="):
        connect(model, datamodule(folder, tokenizer=str(other)))


def test_lm_tokenizer_comes_from_the_side_that_makes_it(tmp_path: Path, write_corpus) -> None:
    text = write_corpus(tmp_path / "a.txt", lines=50, seed=0)
    scratch = CausalLM(config=TINY_GPT2)
    bpe = TextCorpusDataModule(str(text), bpe_vocab_size=280, block_size=16, cache_dir=str(tmp_path / "c"))
    connect(scratch, bpe)  # from scratch: the data's BPE tokenizer goes to the model
    assert scratch.tokenizer is bpe.tokenizer and len(scratch.tokenizer) == 280
    folder = tmp_path / "pretrained"
    scratch.save_pretrained(folder)
    pretrained = CausalLM(model_name_or_path=str(folder))  # brings its tokenizer
    with pytest.raises(ValueError, match="remove bpe_vocab_size"):
        connect(
            pretrained, TextCorpusDataModule(str(text), bpe_vocab_size=280, cache_dir=str(tmp_path / "c"))
        )
    plain = TextCorpusDataModule(str(text), block_size=16, cache_dir=str(tmp_path / "c"))
    connect(pretrained, plain)  # no tokenizer on the data side: the model's is used
    assert plain.tokenizer is pretrained.tokenizer


def test_plain_lightning_objects_take_no_part() -> None:
    class Plain(L.LightningDataModule):
        pass

    model = ImageClassifier("test_resnet", num_classes=2, pretrained=False)
    connect(model, Plain())  # nothing to exchange, nothing raised
    assert model._label_names is None
    assert DataSpec(label_names=["a", "b"]).num_classes == 2 and InputSpec().tokenizer is None


def _reaching_back(tree: ast.AST) -> list[int]:
    """Lines reading ``trainer.datamodule``/``.lightning_module`` (also by ``getattr``) or ``self.opts``."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            owner = (
                node.value.attr if isinstance(node.value, ast.Attribute) else getattr(node.value, "id", "")
            )
            if (node.attr in ("datamodule", "lightning_module") and owner in ("trainer", "_trainer")) or (
                node.attr == "opts" and owner == "self"
            ):
                lines.append(node.lineno)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "getattr" and len(node.args) > 1:
            name = node.args[1]
            if isinstance(name, ast.Constant) and name.value in ("datamodule", "lightning_module"):
                lines.append(node.lineno)
    return lines


def test_no_module_reaches_back_up_the_chain() -> None:
    """Data flows one way: no module, data module or callback reads the other side through the trainer,
    and options are not kept in a second store (``self.opts``)."""
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{line}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for line in _reaching_back(ast.parse(path.read_text()))
    ]
    assert not offenders, "data flowing back up at " + ", ".join(offenders)
    assert _reaching_back(
        ast.parse("x = getattr(self.trainer, 'datamodule', None)\ny = trainer.lightning_module")
    )


def test_renamed_options_have_one_name_and_no_alias(tmp_path: Path) -> None:
    scratch = CausalLM(config=TINY_GPT2)
    scratch.save_pretrained(tmp_path / "lm")
    lm = CausalLM(model_name_or_path=str(tmp_path / "lm"))
    assert lm.hparams.model_name_or_path == str(tmp_path / "lm")
    with pytest.raises(TypeError, match="pretrained_model_name_or_path"):
        CausalLM(pretrained_model_name_or_path=str(tmp_path / "lm"))
    dm = TextCorpusDataModule(dataset="wikitext", dataset_config="raw", bpe_vocab_size=300)
    assert dm.dataset_config == "raw"
    with pytest.raises(TypeError, match="dataset_config_name"):
        TextCorpusDataModule(dataset="wikitext", dataset_config_name="raw", bpe_vocab_size=300)
    bert = tiny_bert_folder(tmp_path / "bert")
    model = TextClassifier(str(bert), tokenizer=str(bert))
    assert model.hparams.tokenizer == str(bert) and model.tokenizer is not None
    with pytest.raises(TypeError, match="tokenizer_name_or_path"):
        TextClassifier(str(bert), tokenizer_name_or_path=str(bert))
    for old in ({"classes": ["a"]}, {"train_csv": "x.csv"}):
        with pytest.raises(TypeError, match=next(iter(old))):
            ImageDataModule(root=str(tmp_path), **old)
    with pytest.raises(TypeError, match="backbone"):
        ImageClassifier(backbone="test_resnet", pretrained=False)
    with pytest.raises(TypeError, match="labels"):
        TextDataModule(train_file="x.csv", labels=["a"])
    with pytest.raises(TypeError, match="train_files"):
        TextCorpusDataModule(train_files="x.txt")
    assert importlib.util.find_spec("lightning_recipes._deprecation") is None
