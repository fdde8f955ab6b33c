"""Training throughput on one GPU: TextClassifier vs the Hugging Face ``Trainer`` (BERT-base, bf16), MFU,
and the EfficientNet-Lite0 image recipe's images/s with the backbone trainable and frozen.

BERT-base is built from its config (random weights: speed does not depend on them), sequence length
128, batch 32, ``bf16-mixed``; both sides train ``AutoModelForSequenceClassification`` (``head="pretrained"``
on ours) on the very same random token ids, with fused AdamW, for ``--steps`` optimizer steps of
which the first ``--warmup`` are not timed. The Trainer runs with its fastest settings here: ``bf16``,
``adamw_torch_fused``, no logging, no saving, ``dataloader_pin_memory``; ``--compile`` compiles both
models (``torch.compile``). Printed: samples/s of each, their ratio, and the model FLOPs utilisation
(MFU) of each:

    FLOPs per token = 6 N + 12 L H S        (N parameters without the embeddings; L layers, H hidden
                                             size, S sequence length: forward + backward, attention
                                             scores included; PaLM, appendix B)
    MFU = FLOPs per token x tokens/s / peak dense bf16 FLOP/s of the device (PEAK_BF16 below)

Images: ``efficientnet_lite0`` (timm, random weights; the architecture of the recipe
``recipes/image/finetune_efficientnet_local.yaml``) at 224 px, batch 64, ``bf16-mixed``: images/s
with the whole network training, then with the backbone frozen (the frozen phase:
``FreezeUnfreeze(unfreeze_at_epoch=None)``), and the frozen epoch's cost as a fraction of a full one.

Run on the GPU (from the repository root)::

    python benchmarks/gpu_throughput.py --steps 60 --warmup 10
    python benchmarks/gpu_throughput.py --steps 60 --warmup 10 --compile

``--tiny --device cpu`` runs the same code end to end with a 2-layer BERT and tiny images on CPU
(a check that the script works; its figures mean nothing). ``--smoke`` is that for 3 steps (1 untimed)
on 1 thread: seconds, on any machine (the test suite runs it).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from functools import partial
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lightning as L  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from lightning_recipes import ImageClassifier, TextClassifier  # noqa: E402
from lightning_recipes.callbacks import FreezeUnfreeze  # noqa: E402

#: Peak dense bf16 tensor FLOP/s (no sparsity) from the vendors' data sheets, by a part of the device name
#: (``torch.cuda.get_device_name()``); the first match wins, so the more specific names come first.
PEAK_BF16 = {
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,  # SXM5 (e.g. "NVIDIA H100 80GB HBM3")
    "H200": 989e12,
    "GH200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10G": 70e12,
    "A10": 125e12,
    "RTX 4090": 165e12,
}

BERT_BASE = {"model_type": "bert"}  # BertConfig's defaults are BERT-base: 12 layers, 768 wide, 12 heads
BERT_TINY = {"model_type": "bert", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 2,
             "intermediate_size": 128, "vocab_size": 1000}  # fmt: skip


def peak_flops(device: torch.device) -> tuple[str, float | None]:
    """The device's name and its peak bf16 FLOP/s from :data:`PEAK_BF16` (``None``: not in the table)."""
    if device.type != "cuda":
        return "CPU", None
    name = torch.cuda.get_device_name(device)
    return name, next((flops for key, flops in PEAK_BF16.items() if key in name), None)


def flops_per_token(config: Any, seq_len: int, params: int) -> float:
    """``6 N + 12 L H S`` training FLOPs per token; N without the embedding tables."""
    embeddings = (
        config.vocab_size + config.max_position_embeddings + config.type_vocab_size
    ) * config.hidden_size
    n = params - embeddings
    return 6 * n + 12 * config.num_hidden_layers * config.hidden_size * seq_len


class Tokens(Dataset):
    """Fixed random token ids (the same for both sides), all positions real, binary labels."""

    def __init__(self, n: int, seq_len: int, vocab: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1000 if vocab > 2000 else 5, vocab, (n, seq_len), generator=g)
        self.labels = torch.randint(0, 2, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.ids[i],
            "attention_mask": torch.ones_like(self.ids[i]),
            "labels": self.labels[i],
        }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock(L.Callback):
    """Wall time from the start of optimizer step ``warmup`` to the end of training."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup, self.device, self.start, self.seconds = warmup, device, None, math.nan

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.start is None and trainer.global_step == self.warmup:
            sync(self.device)
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        sync(self.device)
        self.seconds = time.perf_counter() - self.start


def trainer(args: argparse.Namespace, callbacks: list[L.Callback], steps: int) -> L.Trainer:
    return L.Trainer(
        accelerator=args.device, devices=1, precision=args.precision, max_steps=steps, limit_val_batches=0,
        callbacks=callbacks, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=args.out,
    )  # fmt: skip


def adamw(device: torch.device) -> Any:
    return partial(torch.optim.AdamW, fused=True) if device.type == "cuda" else torch.optim.AdamW


def run_ours(args: argparse.Namespace, config: dict, data: Tokens, device: torch.device) -> tuple[float, int]:
    torch.manual_seed(0)
    model = TextClassifier("bert", pretrained=False, config=config, num_classes=2, head="pretrained", lr=2e-5,
                           optimizer=adamw(device))  # fmt: skip
    params = sum(p.numel() for p in model.parameters())
    if args.compile:
        model.model.compile()
    clock = Clock(args.warmup, device)
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=True, pin_memory=device.type == "cuda",
                        drop_last=True)  # fmt: skip
    trainer(args, [clock], args.steps).fit(model, loader)
    return (args.steps - args.warmup) * args.batch_size / clock.seconds, params


def run_hf(args: argparse.Namespace, config: dict, data: Tokens, device: torch.device) -> float:
    from transformers import AutoModelForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

    from lightning_recipes.modules._hf import build_config

    class HFClock(TrainerCallback):
        def __init__(self) -> None:
            self.start, self.seconds = None, math.nan

        def on_step_begin(self, targs, state, control, **kwargs):
            if self.start is None and state.global_step == args.warmup:
                sync(device)
                self.start = time.perf_counter()

        def on_train_end(self, targs, state, control, **kwargs):
            sync(device)
            self.seconds = time.perf_counter() - self.start

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(build_config({**config, "num_labels": 2}))
    clock = HFClock()
    targs = TrainingArguments(
        output_dir=args.out, per_device_train_batch_size=args.batch_size, max_steps=args.steps,
        learning_rate=2e-5, bf16=args.precision.startswith("bf16"), optim="adamw_torch_fused" if
        device.type == "cuda" else "adamw_torch", report_to=[], save_strategy="no", logging_strategy="no",
        eval_strategy="no", dataloader_pin_memory=device.type == "cuda", dataloader_drop_last=True,
        torch_compile=args.compile, use_cpu=device.type == "cpu", disable_tqdm=True, seed=0,
    )  # fmt: skip
    Trainer(model=model, args=targs, train_dataset=data, callbacks=[clock]).train()
    return (args.steps - args.warmup) * args.batch_size / clock.seconds


class Images(Dataset):
    def __init__(self, n: int, size: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


def run_images(args: argparse.Namespace, device: torch.device, frozen: bool) -> float:
    torch.manual_seed(0)
    backbone = "test_efficientnet" if args.tiny else "efficientnet_lite0"
    model = ImageClassifier(backbone, num_classes=10, pretrained=False, lr=1e-3, optimizer=adamw(device))
    clock = Clock(args.warmup, device)
    callbacks = [clock, FreezeUnfreeze(unfreeze_at_epoch=None)] if frozen else [clock]
    data = Images(args.image_batch * 8, args.image_size)
    loader = DataLoader(data, batch_size=args.image_batch, shuffle=True, pin_memory=device.type == "cuda",
                        drop_last=True)  # fmt: skip
    trainer(args, callbacks, args.steps).fit(model, loader)
    return (args.steps - args.warmup) * args.image_batch / clock.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument(
        "--tiny", action="store_true", help="2-layer BERT, tiny images: checks the script runs"
    )
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10, help="first optimizer steps, not timed")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--image-batch", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--compile", action="store_true", help="torch.compile both text models")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (CPU runs)")
    parser.add_argument("--out", default="runs/benchmarks/gpu_throughput")
    parser.add_argument("--smoke", action="store_true", help="--tiny on CPU, 3 steps: checks the script")
    args = parser.parse_args()
    if args.smoke:
        args.tiny, args.device, args.steps, args.warmup, args.threads = True, "cpu", 3, 1, 1
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here; use --device cpu (with --tiny to check the script)")
    if args.warmup >= args.steps:
        parser.error(f"--warmup ({args.warmup}) must be below --steps ({args.steps})")
    if args.tiny:
        args.seq_len, args.batch_size, args.image_size, args.image_batch = 32, 8, 32, 8
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name, peak = peak_flops(device)
    config = BERT_TINY if args.tiny else BERT_BASE
    from lightning_recipes.modules._hf import build_config

    data = Tokens(args.batch_size * 16, args.seq_len, build_config(config).vocab_size)
    ours, params = run_ours(args, config, data, device)
    hf = run_hf(args, config, data, device)
    per_token = flops_per_token(build_config(config), args.seq_len, params)

    def mfu(samples_per_s: float) -> str:
        return (
            f"{100 * per_token * samples_per_s * args.seq_len / peak:.1f} %" if peak else "n/a (peak unknown)"
        )

    print(f"\ndevice: {name}; peak bf16 {peak / 1e12:.0f} TFLOP/s" if peak else f"\ndevice: {name}")
    timed = args.steps - args.warmup
    print(f"BERT ({params / 1e6:.1f} M parameters), seq {args.seq_len}, batch {args.batch_size}, "
          f"{args.precision}, compile={args.compile}, {timed} timed steps; "
          f"{per_token / 1e9:.4g} GFLOP/token\n")  # fmt: skip
    print("| side | samples/s | MFU |\n| --- | --- | --- |")
    print(f"| TextClassifier (lightning_recipes) | {ours:.1f} | {mfu(ours)} |")
    print(f"| Hugging Face Trainer | {hf:.1f} | {mfu(hf)} |")
    print(f"\nratio TextClassifier / Trainer: {ours / hf:.2f}x")
    full, frozen = run_images(args, device, frozen=False), run_images(args, device, frozen=True)
    backbone = "test_efficientnet" if args.tiny else "efficientnet_lite0"
    print(f"\nimages: {backbone}, {args.image_size} px, batch {args.image_batch}, {args.precision}\n")
    print("| run | images/s | epoch cost vs all layers |\n| --- | --- | --- |")
    print(f"| all layers training | {full:.1f} | 1.00 |")
    print(f"| backbone frozen (FreezeUnfreeze) | {frozen:.1f} | {full / frozen:.2f} |")


if __name__ == "__main__":
    main()
