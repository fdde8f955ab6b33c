"""Tiny checkpoints of each family and an independent reload of an export in a fresh process, for
``tests/export/`` and ``tests/test_run_record.py``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import torch

#: Loads an export with its own ecosystem only and saves its probabilities; fails if lightning_recipes
#: was imported. ``RELOAD FORMAT FOLDER INPUTS OUT``.
RELOAD = r"""
import json, sys
import torch

fmt, folder, inputs_path, out = sys.argv[1:]
inputs = torch.load(inputs_path)
how = json.load(open(folder + "/export.json"))["probabilities"]
with torch.no_grad():
    if fmt == "hf-text":
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        AutoTokenizer.from_pretrained(folder)
        logits = model(**inputs).logits
    elif fmt == "hf-lm":
        from transformers import AutoModelForCausalLM

        logits = AutoModelForCausalLM.from_pretrained(folder).eval()(**inputs).logits
    elif fmt == "peft-lm":
        from peft import AutoPeftModelForCausalLM

        logits = AutoPeftModelForCausalLM.from_pretrained(folder).eval()(**inputs).logits
    elif fmt == "timm":
        import timm

        logits = timm.create_model("local-dir:" + folder, pretrained=True).eval()(*inputs.values())
    elif fmt == "torchscript":
        logits = torch.jit.load(folder + "/model.pt")(*inputs.values())
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(folder + "/model.onnx")
        logits = torch.from_numpy(session.run(None, {k: v.numpy() for k, v in inputs.items()})[0])
assert not [m for m in sys.modules if m.split(".")[0] == "lightning_recipes"]
torch.save(logits.softmax(-1) if how == "softmax" else logits, out)
"""


def skip_without_onnx() -> None:
    """Skip where ``--format onnx`` cannot run (the onnx extra missing, a torch older than its exporter needs:
    ``.ci/oldest`` tests torch 2.5); the refusal itself is tested in test_export_errors.py."""
    import pytest

    from lightning_recipes.export._formats import onnx_unavailable

    reason = onnx_unavailable()
    if reason:
        pytest.skip(reason)


def reload_probabilities(fmt: str, folder: Path, inputs: dict[str, torch.Tensor], tmp: Path) -> torch.Tensor:
    """The export's probabilities for ``inputs``, from a process that never imports lightning_recipes."""
    torch.save(inputs, tmp / "inputs.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    args = [fmt, str(folder), str(tmp / "inputs.pt"), str(tmp / "out.pt")]
    proc = subprocess.run(
        [sys.executable, "-c", RELOAD, *args], env=env, cwd=tmp, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(tmp / "out.pt")


def save_checkpoint(module: L.LightningModule, path: Path) -> Path:
    """A Lightning checkpoint of ``module`` as built (no training)."""
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_epochs=0,
    )
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


def perturb_lora(module: torch.nn.Module) -> None:
    """LoRA starts as a no-op (``lora_B`` = 0): give it values, as training would, so merging matters."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)


def text_inputs(batch: int = 3, length: int = 9, vocab: int = 60, token_types: bool = True) -> dict:
    """Inputs of another shape than the export's examples, with padding in the first row."""
    torch.manual_seed(2)
    ids = torch.randint(5, vocab, (batch, length))
    mask = torch.ones_like(ids)
    mask[0, length - 3 :] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    return {**inputs, "token_type_ids": torch.zeros_like(ids)} if token_types else inputs


def run_tiny_recipe(
    folder: Path,
    model: dict,
    data: dict,
    epochs: int = 2,
    logger: dict | None = None,
    callbacks: tuple[dict, ...] = (),
) -> Path:
    """``lightning run`` of a recipe with ``model`` and ``data`` (class_path + init_args) in ``folder``: a CSV
    logger (or ``logger``) saving under ``folder/run``, a best checkpoint by ``val/acc`` and ``last.ckpt``,
    the curves and ``callbacks``; returns the run directory."""
    import yaml

    from lightning_recipes.cli import main

    logger = logger or {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {}}
    logger = {**logger, "init_args": {**logger["init_args"], "save_dir": str(folder / "run")}}
    checkpoint = {"monitor": "val/acc", "mode": "max", "save_last": True}
    recipe = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "max_epochs": epochs,
            "enable_progress_bar": False,
            "logger": logger,
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": checkpoint},
                {"class_path": "lightning_recipes.callbacks.CurveLogger"},
                *callbacks,
            ],
        },
        "model": model,
        "data": data,
    }
    (folder / "tiny.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["run", str(folder / "tiny.yaml")]) == 0
    name = logger["init_args"].get("project") or "lightning_logs"  # a W&B run's folder is its project's
    return folder / "run" / name / "version_0"


def image_folders(folder: Path, classes: str = "abc", per_class: int = 4) -> Path:
    """``folder/images/{train,val,test}/<class>/<i>.png``: 16 px images, one colour per class plus noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        for c, name in enumerate(classes):
            (folder / "images" / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = np.full((16, 16, 3), 40 + 80 * c, np.uint8) + rng.integers(
                    0, 30, (16, 16, 3), np.uint8
                )
                Image.fromarray(pixels).save(folder / "images" / split / name / f"{i}.png")
    return folder / "images"
