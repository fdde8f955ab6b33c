"""Distillation: the loss is Hinton's formula, cached teacher logits are the live ones, the half-depth student
holds the teacher's every other block, and a teacher that cannot teach is refused before training."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from tiny_text_models import datamodule

from lightning_recipes import CausalLM, ImageClassifier, TextClassifier, connect
from lightning_recipes.callbacks import Distillation
from lightning_recipes.callbacks.distillation import row_keys
from lightning_recipes.handshake import TeacherLogits
from lightning_recipes.modules._distillation import distillation_loss, keep_every_other_block

GPT2 = {
    "n_layer": 4,
    "n_embd": 16,
    "n_head": 2,
    "vocab_size": 40,
    "n_positions": 32,
    "bos_token_id": 0,
    "eos_token_id": 0,
}


def hinton(label_loss, student, teacher, t, alpha):
    p = torch.softmax(teacher / t, -1)
    kl = (p * (p.log() - torch.log_softmax(student / t, -1))).sum(-1).mean()
    return alpha * label_loss + (1 - alpha) * t * t * kl


def test_loss_is_the_hand_computed_formula():
    torch.manual_seed(0)
    student, teacher = torch.randn(4, 3), torch.randn(4, 3)
    target = torch.tensor([0, 2, 1, 1])
    ce = F.cross_entropy(student, target)
    for t, alpha in ((1.0, 0.5), (2.0, 0.3), (4.0, 0.0), (2.0, 1.0)):
        got = distillation_loss(ce, student, teacher, t, alpha)
        assert torch.allclose(got, hinton(ce, student, teacher, t, alpha), atol=1e-6)
    assert torch.equal(distillation_loss(ce, student, teacher, 2.0, 1.0), ce)


def test_the_module_trains_on_the_mix_while_a_teacher_teaches():
    model = ImageClassifier("test_resnet", pretrained=False, num_classes=3)
    images, target = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    teacher = torch.randn(4, 3)
    model.eval()  # the same logits twice (no BatchNorm statistics update)
    plain = model.training_step((images, target), 0)
    model.teacher_logits = TeacherLogits(teacher, temperature=2.0, alpha=0.25)
    taught = model.training_step((images, target), 0)
    logits = model(images)
    assert torch.allclose(plain, F.cross_entropy(logits, target))
    assert torch.allclose(taught, hinton(plain, logits, teacher, 2.0, 0.25), atol=1e-6)
    assert not torch.allclose(taught, plain)


def test_causal_lm_loss_counts_only_predicted_positions():
    lm = CausalLM(config=GPT2).eval()  # no dropout: the same logits twice
    ids = torch.randint(0, 40, (2, 6))
    teacher = torch.randn(2, 6, 40)
    lm.teacher_logits = TeacherLogits(teacher, temperature=3.0, alpha=0.5)
    loss = lm.training_step({"input_ids": ids}, 0)
    logits = lm(ids, torch.ones_like(ids))
    nll = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    expected = hinton(nll, logits[:, :-1].flatten(0, 1), teacher[:, :-1].flatten(0, 1), 3.0, 0.5)
    assert torch.allclose(loss, expected, atol=1e-5)


def test_cached_teacher_logits_equal_live_ones():
    teacher = ImageClassifier("test_resnet", pretrained=False, num_classes=3).eval()
    student = ImageClassifier("test_resnet", pretrained=False, num_classes=3)
    callback = Distillation(teacher=teacher)
    callback.check_teacher(teacher, student)
    callback.teacher = teacher
    batch = (torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]))
    live = callback.teacher_logits(batch)
    first = callback.cached_teacher_logits(batch)
    assert len(callback.cache) == 4 and callback.cache_bytes == 4 * 3 * 4
    callback.teacher = None  # a second pass must be served from the cache alone
    again = callback.cached_teacher_logits((batch[0].flip(0), batch[1]))
    assert torch.equal(first, live) and torch.equal(again, live.flip(0))


def test_row_keys_ignore_padding_and_labels():
    a = {
        "input_ids": torch.tensor([[3, 4, 0], [5, 0, 0]]),
        "attention_mask": torch.tensor([[1, 1, 0], [1, 0, 0]]),
    }
    b = {"input_ids": torch.tensor([[5, 0], [3, 4]]), "attention_mask": torch.tensor([[1, 0], [1, 1]])}
    assert row_keys(a) == row_keys(b)[::-1]
    assert row_keys({**a, "labels": torch.tensor([0, 1])}) == row_keys(a)
    assert row_keys((torch.ones(2, 3), torch.zeros(2)))[0] != row_keys((torch.zeros(2, 3), torch.zeros(2)))[0]


def test_every_other_block_copies_the_teachers_blocks_embeddings_and_head(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(**GPT2)).save_pretrained(tmp_path / "gpt2")
    teacher = CausalLM(str(tmp_path / "gpt2"))
    student = CausalLM(str(tmp_path / "gpt2"), every_other_block=True)
    assert student.model.config.n_layer == 2 and len(student.model.transformer.h) == 2
    t_state, s_state = teacher.model.state_dict(), student.model.state_dict()
    for key, value in s_state.items():
        parts = key.split(".")
        if parts[:2] == ["transformer", "h"]:
            parts[2] = str(2 * int(parts[2]))  # student block i is teacher block 2i
        assert torch.equal(value, t_state[".".join(parts)]), key
    # the halved student saves and reloads as itself
    ids = torch.randint(0, 40, (1, 5))
    student.model.save_pretrained(tmp_path / "half")
    assert torch.equal(CausalLM(str(tmp_path / "half")).eval()(ids), student.eval()(ids))


def test_every_other_block_of_a_text_classifier(tiny_bert):
    teacher = TextClassifier(str(tiny_bert), num_classes=2)
    student = TextClassifier(str(tiny_bert), num_classes=2, every_other_block=True)
    assert len(student.backbone.encoder.layer) == 1 and student.backbone.config.num_hidden_layers == 1
    t = teacher.backbone.state_dict()
    for key, value in student.backbone.state_dict().items():
        assert torch.equal(value, t[key]), key  # block 0 is block 0; embeddings the same
    with pytest.raises(ValueError, match="2 or more blocks"):
        keep_every_other_block(student.backbone)


def tiny_sentiment_classifier(tiny_bert):
    """``tiny_bert`` with its own sequence-classification head for the classes of ``sentiment_csv``."""
    from transformers import AutoConfig, BertForSequenceClassification

    config = AutoConfig.from_pretrained(tiny_bert, id2label={0: "neg", 1: "pos"})
    BertForSequenceClassification.from_pretrained(tiny_bert, config=config).save_pretrained(tiny_bert)
    return str(tiny_bert)


def test_teacher_none_is_the_students_source_at_full_depth_and_trains(tiny_bert, sentiment_csv, tmp_path):
    source = tiny_sentiment_classifier(tiny_bert)
    with pytest.raises(ValueError, match="build the student with head: pretrained"):
        Distillation().load_teacher(TextClassifier(source, num_classes=2, every_other_block=True))
    student = TextClassifier(source, head="pretrained", every_other_block=True)
    data = datamodule(sentiment_csv)
    connect(student, data)
    callback = Distillation(temperature=2.0, alpha=0.5)
    seen = []

    class Spy(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append(len(callback.cache))

    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=2,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        callbacks=[callback, Spy()],
    )
    trainer.fit(student, datamodule=data)
    # 24 rows, 12 distinct sentences (sentiment_csv repeats them): all cached in epoch 0, reused in epoch 1
    assert callback.caching and seen[-1] == 12 == seen[len(seen) // 2 - 1]
    assert student.teacher_logits is None and callback.teacher is None
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


def test_teacher_from_a_checkpoint(tmp_path):
    teacher = ImageClassifier("test_resnet", pretrained=False, num_classes=3, label_names=["a", "b", "c"])
    trainer = L.Trainer(logger=False, enable_progress_bar=False)
    trainer.strategy.connect(teacher)
    trainer.save_checkpoint(tmp_path / "teacher.ckpt")
    student = ImageClassifier("test_resnet", pretrained=False, num_classes=3, label_names=["a", "b", "c"])
    loaded = Distillation(teacher=str(tmp_path / "teacher.ckpt")).load_teacher(student)
    assert loaded.label_names == ["a", "b", "c"]
    mine, theirs = loaded.state_dict(), teacher.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


# -- refusals, before training ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"temperature": -2.0}, "temperature must be > 0"),
        ({"alpha": 1.5}, r"alpha must be in \[0, 1\]"),
        ({"alpha": -0.1}, r"alpha must be in \[0, 1\]"),
        ({"cache_memory_mb": -1}, "cache_memory_mb must be >= 0"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Distillation(**kwargs)


def test_a_teacher_that_cannot_teach_is_refused(tmp_path):
    student = ImageClassifier("test_resnet", pretrained=False, num_classes=3, label_names=["a", "b", "c"])
    check = Distillation().check_teacher
    other_labels = ImageClassifier(
        "test_resnet", pretrained=False, num_classes=3, label_names=["a", "c", "b"]
    )
    with pytest.raises(ValueError, match=r"teacher's classes \['a', 'c', 'b'\] are not the student's"):
        check(other_labels, student)
    with pytest.raises(ValueError, match="teacher's classes"):
        check(ImageClassifier("test_resnet", pretrained=False, num_classes=4), student)
    with pytest.raises(ValueError, match="teacher is a CausalLM but the student a ImageClassifier"):
        check(CausalLM(config=GPT2), student)
    with pytest.raises(ValueError, match="vocabulary has 40 tokens but the student's 50"):
        check(CausalLM(config=GPT2), CausalLM(config={**GPT2, "vocab_size": 50}))
    with pytest.raises(ValueError, match="needs a student built with every_other_block: true"):
        Distillation().load_teacher(student)
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="does not load as a ImageClassifier"):
        Distillation(teacher=str(tmp_path / "bad.ckpt")).load_teacher(student)


def test_a_teacher_with_another_tokenizer_is_refused(tiny_bert, tmp_path):
    from tiny_text_models import make_model, make_tokenizer

    other = make_model(tmp_path / "other", "bert")
    from transformers import BertTokenizerFast

    tokenizer = BertTokenizerFast(tokenizer_file=str(make_tokenizer(tmp_path / "tok") / "tokenizer.json"))
    tokenizer.add_tokens(["zebra"])
    tokenizer.save_pretrained(other)
    with pytest.raises(ValueError, match="teacher's tokenizer .* is not the student's"):
        Distillation().check_teacher(
            TextClassifier(str(other), num_classes=2), TextClassifier(str(tiny_bert), num_classes=2)
        )


def test_images_not_prepared_as_the_image_teacher_expects_are_refused(tmp_path):
    from lightning_recipes import DigitsDataModule

    teacher = ImageClassifier("test_resnet", pretrained=False, num_classes=2)
    expected = teacher.data_config
    digits = {"digits": [0, 1], "root": str(tmp_path)}
    spec = DigitsDataModule(**digits, data_config=expected).data_spec()  # what connect() hands the student
    assert spec.image_config["input_size"] == tuple(expected["input_size"])
    Distillation.check_inputs(teacher, spec)
    other = {**expected, "input_size": (3, 32, 32), "mean": (0.5, 0.5, 0.5)}
    with pytest.raises(ValueError, match=r"teacher expects images \{'input_size': \[3, 160, 160\].*makes "):
        Distillation.check_inputs(teacher, DigitsDataModule(**digits, data_config=other).data_spec())
    Distillation.check_inputs(teacher, None)  # no data module (dataloaders given to fit): nothing to compare
