"""Adapters (peft) on every module family: what trains, trainable-only checkpoints, export, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import peft
import pytest
import torch
from torch.utils.data import DataLoader

from lightning_recipes import CausalLM, ImageClassifier, TextClassifier
from lightning_recipes.modules._adapters import BASE_KEY

TEXT = {"input_ids": torch.tensor([[2, 7, 9, 3, 0], [2, 11, 12, 13, 3]]), "attention_mask": torch.ones(2, 5)}


def _bases(folder: Path) -> dict[str, Path]:
    import timm
    from timm.models import save_for_hf
    from transformers import (
        BertConfig,
        BertModel,
        DistilBertConfig,
        DistilBertModel,
        GPT2Config,
        GPT2LMHeadModel,
    )

    torch.manual_seed(0)
    paths = {k: folder / k for k in ("bert", "distilbert", "gpt2", "resnet")}
    small = {"vocab_size": 50, "num_attention_heads": 2}
    BertModel(BertConfig(hidden_size=16, num_hidden_layers=2, intermediate_size=32, **small)).save_pretrained(
        paths["bert"]
    )
    DistilBertModel(
        DistilBertConfig(dim=16, n_layers=2, n_heads=2, hidden_dim=32, vocab_size=50)
    ).save_pretrained(paths["distilbert"])
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64)).save_pretrained(paths["gpt2"])
    save_for_hf(
        timm.create_model("test_resnet", pretrained=False), str(paths["resnet"]), safe_serialization=True
    )
    return paths


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _bases(tmp_path_factory.mktemp("bases"))


def build(family: str, bases: dict[str, Path], adapter=None, **kwargs):
    adapter = peft.LoraConfig(r=4) if adapter is None else adapter
    if family in ("bert", "distilbert"):
        return TextClassifier(str(bases[family]), num_classes=3, adapter=adapter, lr=1e-2, **kwargs)
    if family == "gpt2":
        return CausalLM(str(bases["gpt2"]), adapter=adapter, lr=1e-2, **kwargs)
    return ImageClassifier(f"local-dir:{bases['resnet']}", num_classes=3, adapter=adapter, lr=1e-2, **kwargs)


def batches(family: str) -> list:
    torch.manual_seed(1)
    if family == "gpt2":
        return [{"input_ids": torch.randint(0, 64, (2, 6))} for _ in range(2)]
    if family == "resnet":
        return [(torch.randn(2, 3, 32, 32), torch.tensor([0, 2])) for _ in range(2)]
    return [{**TEXT, "labels": torch.tensor([0, 2])} for _ in range(2)]


def logits(model, family: str) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        if family == "gpt2":
            return model(TEXT["input_ids"] % 64)
        if family == "resnet":
            return model(torch.ones(1, 3, 32, 32))
        return model(TEXT)


FAMILIES = ["bert", "distilbert", "gpt2", "resnet"]


def some_slow(*slow: str) -> list:
    """``FAMILIES`` with those in ``slow`` marked slow (the default suite keeps two families per test)."""
    return [pytest.param(f, marks=pytest.mark.slow) if f in slow else f for f in FAMILIES]


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_freezes_the_base_and_trains_adapter_and_head(family, bases) -> None:
    model = build(family, bases)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    backbone = {id(p) for g in model.param_groups() if g["name"] == "backbone" for p in g["params"]}
    adapter = {id(p) for n, p in model.backbone.named_parameters() if "lora_" in n}
    assert adapter and backbone == adapter  # the backbone's trainable group is the adapter, nothing else
    assert all("lora_" in n or n.startswith("head.") for n in trainable)
    assert (family == "gpt2") != any(n.startswith("head.") for n in trainable)  # GPT-2's head is tied, frozen
    targets = model.peft_model.peft_config["default"].target_modules
    expected = {
        "bert": {"query", "key", "value"},
        "distilbert": {"q_lin", "k_lin", "v_lin"},
        "gpt2": {"c_attn", "c_proj"},
    }
    if family in expected:
        assert set(targets) == expected[family]
    else:  # every Linear and ungrouped Conv2d of the timm model
        assert "conv1.0" in targets and "layer4.0.conv2" in targets


@pytest.mark.parametrize("family", some_slow("distilbert", "gpt2"))
def test_checkpoint_holds_only_what_trained_and_reloads_identically(family, bases, tmp_path) -> None:
    model = build(family, bases)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, DataLoader(batches(family), batch_size=None))
    path = tmp_path / "adapter.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    stored_params = {k for k in checkpoint["state_dict"] if k in dict(model.named_parameters())}
    assert stored_params == trainable
    assert checkpoint[BASE_KEY]["source"] == (
        str(bases[family].resolve()) if family != "resnet" else f"local-dir:{bases['resnet'].resolve()}"
    )
    moments = checkpoint["optimizer_states"][0]["state"]
    assert sum(s["exp_avg"].numel() for s in moments.values()) == sum(
        p.numel() for p in model.parameters() if p.requires_grad
    )
    full = sum(v.numel() for v in model.state_dict().values())
    assert sum(v.numel() for v in checkpoint["state_dict"].values()) < 0.5 * full
    loaded = type(model).load_from_checkpoint(path)
    assert torch.equal(logits(loaded, family), logits(model, family))


def test_a_changed_or_missing_base_is_a_clear_error(bases, tmp_path) -> None:
    import shutil

    from transformers import BertModel

    base = tmp_path / "bert"
    shutil.copytree(bases["bert"], base)
    model = TextClassifier(str(base), num_classes=3, adapter=peft.LoraConfig(r=4))
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, DataLoader(batches("bert"), batch_size=None))
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    changed = BertModel.from_pretrained(base)
    with torch.no_grad():
        changed.embeddings.word_embeddings.weight[0] += 1.0
    changed.save_pretrained(base)
    with pytest.raises(
        ValueError, match=f"its base '{base.resolve()}'.*not those the checkpoint was trained on"
    ):
        TextClassifier.load_from_checkpoint(tmp_path / "a.ckpt")
    shutil.rmtree(base)
    with pytest.raises(FileNotFoundError, match=str(base.resolve())):
        TextClassifier.load_from_checkpoint(tmp_path / "a.ckpt")


def test_linear_probing_uses_the_same_trainable_only_checkpoints(bases, tmp_path) -> None:
    model = ImageClassifier(f"local-dir:{bases['resnet']}", num_classes=3, checkpoint_weights="trainable")
    model.backbone.requires_grad_(False)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, DataLoader(batches("resnet"), batch_size=None))
    trainer.save_checkpoint(tmp_path / "probe.ckpt")
    checkpoint = torch.load(tmp_path / "probe.ckpt", weights_only=False)
    assert {k for k in checkpoint["state_dict"] if "running" not in k and "num_batches" not in k} == {
        "head.1.weight",
        "head.1.bias",
    }
    assert torch.equal(
        logits(ImageClassifier.load_from_checkpoint(tmp_path / "probe.ckpt"), "resnet"),
        logits(model, "resnet"),
    )
    with pytest.raises(ValueError, match="checkpoint_weights='trainable'.*random init"):
        ImageClassifier("test_resnet", pretrained=False, checkpoint_weights="trainable")


@pytest.mark.parametrize("family", some_slow("bert", "distilbert"))
def test_save_pretrained_unmerged_loads_in_peft_and_merged_agrees(family, bases, tmp_path) -> None:
    model = build(family, bases)
    with torch.no_grad():  # a non-zero adapter (LoRA's B starts at zero)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    expected = logits(model, family)
    folder = model.save_pretrained(tmp_path / "adapter")
    assert (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file()
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
    if family in ("gpt2", "resnet"):  # text: test_text_merged_export_agrees_with_the_adapter_model
        merged = model.save_pretrained(tmp_path / "merged", merge=True)
        assert not (merged / "adapter_config.json").exists()
    if family == "gpt2":
        from transformers import AutoModelForCausalLM

        peft_lm = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(bases["gpt2"]), folder)
        plain = AutoModelForCausalLM.from_pretrained(merged)
        ids = TEXT["input_ids"] % 64
        assert torch.allclose(peft_lm.eval()(input_ids=ids).logits, expected, atol=1e-5)
        assert torch.allclose(plain.eval()(input_ids=ids).logits, expected, atol=1e-4)
        return
    from safetensors.torch import load_file

    head = model.head
    head.load_state_dict(load_file(folder / "head.safetensors"))
    if family == "resnet":
        import timm

        base = timm.create_model(f"local-dir:{bases['resnet']}", pretrained=True, num_classes=0)
        peft_net = peft.PeftModel.from_pretrained(base, folder).eval()
        assert torch.allclose(head(peft_net(torch.ones(1, 3, 32, 32))), expected, atol=1e-5)
        plain = timm.create_model(f"local-dir:{merged}", pretrained=True).eval()
        assert torch.allclose(plain(torch.ones(1, 3, 32, 32)), expected, atol=1e-4)
        return
    from transformers import AutoModel

    encoder = peft.PeftModel.from_pretrained(AutoModel.from_pretrained(bases[family]), folder).eval()
    kwargs = {k: TEXT[k] for k in model.input_names if k in TEXT}
    assert torch.allclose(head(encoder(**kwargs).last_hidden_state[:, 0]), expected, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind, head",
    [
        ("bert", {"hidden_dim": 16, "activation": "tanh"}),  # new heads that equal the architecture's own
        ("distilbert", {"hidden_dim": 16, "activation": "relu"}),
        ("bert", {"head": "pretrained"}),
    ],
)
def test_text_merged_export_agrees_with_the_adapter_model(kind, head, bases, tmp_path) -> None:
    from transformers import AutoModelForSequenceClassification

    model = build(kind, bases, **head)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    expected = logits(model, kind)
    folder = model.save_pretrained(tmp_path, merge=True)
    plain = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    kwargs = {k: TEXT[k] for k in model.input_names if k in TEXT}
    assert torch.allclose(plain(**kwargs).logits, expected, atol=1e-4)
    assert torch.equal(logits(model, kind), expected)  # the module keeps its adapter


def test_other_peft_adapters_work_where_peft_supports_them(bases) -> None:
    ia3 = build("bert", bases, adapter=peft.IA3Config())
    assert any("ia3_l" in n for n, p in ia3.named_parameters() if p.requires_grad)
    loha = build("distilbert", bases, adapter={"class_path": "peft.LoHaConfig", "init_args": {"r": 2}})
    assert any("hada_w1" in n for n, p in loha.named_parameters() if p.requires_grad)


def test_bad_adapters_name_the_problem(bases, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"target_modules=\['nope'\].*model_type='bert'.*query"):
        build("bert", bases, adapter=peft.LoraConfig(target_modules=["nope"]))
    with pytest.raises(ValueError, match="cannot be applied to .*timm.*set adapter.init_args.target_modules"):
        build("resnet", bases, adapter=peft.LoraConfig(target_modules=["bn1"]))
    with pytest.raises(ValueError, match="LoHaConfig.*model_type='gpt2'.*Conv1D'> not supported"):
        build("gpt2", bases, adapter=peft.LoHaConfig(r=2))
    with pytest.raises(ValueError, match="new_top_blocks=1 .* and adapter .* do not combine"):
        build("gpt2", bases, new_top_blocks=1)
    with pytest.raises(ValueError, match="prompt-learning method.*peft.LoraConfig"):
        build("gpt2", bases, adapter=peft.PromptTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM"))
    with pytest.raises(ValueError, match="'peft.Nope' is not a peft config class"):
        build("gpt2", bases, adapter={"class_path": "peft.Nope"})
    depthwise = peft.LoraConfig(r=4, target_modules=["conv"])  # a grouped conv: LoRA adapts but cannot merge
    import torch.nn as nn

    from lightning_recipes.modules._adapters import merged_copies, wrap

    net = nn.Sequential()
    net.add_module("conv", nn.Conv2d(4, 4, 3, groups=4))
    with pytest.raises(ValueError, match="merge=True cannot merge this LoraConfig adapter.*merge=False"):
        merged_copies(wrap(net, depthwise))


def test_freeze_unfreeze_refuses_an_adapter_run(bases, tmp_path) -> None:
    from lightning_recipes.callbacks import FreezeUnfreeze

    model = build("resnet", bases)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        callbacks=[FreezeUnfreeze()],
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    with pytest.raises(ValueError, match=r"FreezeUnfreeze does not combine with an adapter \(LoraConfig\)"):
        trainer.fit(model, DataLoader(batches("resnet"), batch_size=None))
    assert all(p.requires_grad == ("lora_" in n) for n, p in model.backbone.named_parameters())


@pytest.mark.slow
def test_wandb_uploads_the_trainable_only_checkpoint(bases, tmp_path, monkeypatch) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_recipes.loggers import WandbLogger

    logger = WandbLogger(project="adapters", save_dir=str(tmp_path), log_model=True)
    uploaded = []
    monkeypatch.setattr(logger.experiment, "log_artifact", lambda artifact, **kw: uploaded.append(artifact))
    model = build("bert", bases)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=logger,
        callbacks=[checkpoint],
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, DataLoader(batches("bert"), batch_size=None))
    logger.experiment.finish()
    files = sorted((tmp_path / "ckpt").glob("*.ckpt"))  # best and last: both uploaded
    uploaded_sizes = sorted(a.manifest.entries["model.ckpt"].size for a in uploaded)
    assert uploaded_sizes == sorted(f.stat().st_size for f in files)
    buffers = {k for k, _ in model.named_buffers()}
    for file in files:
        stored = torch.load(file, weights_only=False)["state_dict"]
        assert {k for k in stored if "lora_" not in k and not k.startswith("head.")} <= buffers
