"""Parity: the exported folder loaded back in a fresh Python process that never imports lightning_recipes
(transformers, timm, peft, TorchScript or ONNX Runtime only), the example inputs run through it, and its
probabilities compared with the checkpoint's."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

#: Run in a fresh interpreter: ``LOADER FORMAT FOLDER INPUTS OUTPUT FAMILY ACTIVATION``.
LOADER = r"""
import sys
import torch

fmt, folder, inputs_path, out_path, family, how = sys.argv[1:]
inputs = torch.load(inputs_path)
with torch.no_grad():
    if fmt == "hf" and family == "lm":
        import os
        if os.path.isfile(os.path.join(folder, "adapter_config.json")):
            from peft import AutoPeftModelForCausalLM as Auto
        else:
            from transformers import AutoModelForCausalLM as Auto
        logits = Auto.from_pretrained(folder).eval()(**inputs, use_cache=False).logits
    elif fmt == "hf":
        from transformers import AutoModelForSequenceClassification

        logits = AutoModelForSequenceClassification.from_pretrained(folder).eval()(**inputs).logits
    elif fmt == "timm":
        import timm

        logits = timm.create_model("local-dir:" + folder, pretrained=True).eval()(inputs["images"])
    elif fmt == "torchscript":
        logits = torch.jit.load(folder + "/model.pt")(*inputs.values())
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(folder + "/model.onnx", providers=["CPUExecutionProvider"])
        feed = {k: v.numpy() for k, v in inputs.items()}
        logits = torch.from_numpy(session.run(None, feed)[0])
logits = logits.float()
probs = logits.softmax(-1) if how == "softmax" else logits.sigmoid() if how == "sigmoid" else logits
ours = sorted(m for m in sys.modules if m.split(".")[0] == "lightning_recipes")
if ours:
    sys.exit(f"loading the export imported {ours}")
torch.save(probs, out_path)
"""


@dataclass(frozen=True)
class Parity:
    """The largest absolute difference of probabilities between checkpoint and export, and the tolerance."""

    max_abs_diff: float
    tolerance: float
    examples: int

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance


class ParityError(RuntimeError):
    """The export does not predict what the checkpoint predicts (or does not load on its own)."""


def exported_probabilities(
    fmt: str, folder: Path, inputs: dict[str, Tensor], family: str, how: str
) -> Tensor:
    """The export's probabilities for ``inputs``, computed in a fresh process without lightning_recipes."""
    with tempfile.TemporaryDirectory(prefix="lightning-recipes-parity-") as tmp:
        inputs_path, out_path = Path(tmp) / "inputs.pt", Path(tmp) / "probs.pt"
        torch.save(inputs, inputs_path)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        env.pop("PYTHONPATH", None)
        args = [fmt, str(folder), str(inputs_path), str(out_path), family, how]
        proc = subprocess.run(
            [sys.executable, "-c", LOADER, *args],
            env=env,
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise ParityError(f"the {fmt} export does not load and run without lightning_recipes: {last}")
        return torch.load(out_path)


def check(expected: Tensor, got: Tensor, tolerance: float) -> Parity:
    if got.shape != expected.shape:
        raise ParityError(
            f"the export's outputs have shape {tuple(got.shape)}, the checkpoint's {tuple(expected.shape)}"
        )
    return Parity(float((got - expected).abs().max()), tolerance, int(expected.shape[0]))
