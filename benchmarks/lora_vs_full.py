"""LoRA vs full fine-tuning of MiniLM on SST-2: accuracy, speed, memory, trainable parameters, checkpoint.

MiniLM (``../shared/models/all-MiniLM-L6-v2``, 6 layers, hidden 384) with a new mean-pooling head, on a
seeded subset of 8,000 SST-2 training sentences, 1 epoch at batch 32 (length-grouped batches, max length
128), AdamW (weight decay 0.01), linear decay to 0 without warm-up, fp32; then the 872 dev sentences.

* **full**: every weight trains, LR 5e-5 (the ``sst2_minilm_local`` recipe);
* **lora**: ``peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1)`` on the attention projections
  (``query``/``key``/``value``, the default) + the head, at each LR of ``--lora-lrs`` (LoRA needs a
  higher LR than full fine-tuning); the best on the dev set is LoRA "at its own tuned LR".

Each run is its own process (spawned one after the other), so its peak memory (max RSS, the whole process:
Python, torch, the data and the model) is its own. Samples/s = training sentences / wall time of ``fit``
(no validation inside); samples per CPU-second (all threads of the process) is printed too, as it moves
less when other jobs share the machine. Checkpoint size: ``trainer.save_checkpoint`` after training
(weights + AdamW state; the LoRA run stores only the adapter and head, see ``docs/adapters.md``).

Run (from the repository root; prints a markdown table and the ratios)::

    nice .venv/bin/python benchmarks/lora_vs_full.py --lora-lrs 2e-3 3e-3 5e-3

``--smoke`` runs full fine-tuning and one LoRA run (3 steps of 4 sentences each) on tiny stand-ins for
``../shared`` (a 2-layer BERT, toy sentences: ``benchmarks/_smoke.py``), in seconds, on any machine (a
check that the script runs; its figures mean nothing).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import _smoke

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LIGHTNING_RECIPES_SHARED", REPO / ".." / "shared")).resolve()


def run(args: argparse.Namespace, lr: float, lora: bool, queue: Any) -> None:
    """One training run in this (fresh) process; puts its measures on ``queue``."""
    import lightning as L
    import peft
    import torch

    from lightning_recipes import TextClassifier, TextDataModule, connect
    from lightning_recipes.schedulers import WarmupDecay

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        dm = TextDataModule(
            train_file=str(args.shared / "data/sst2/train.tsv"),
            val_file=str(args.shared / "data/sst2/dev.tsv"),
            text_column="sentence",
            label_names=["negative", "positive"],
            train_size=args.train_size,
            max_length=128,
            batch_size=args.batch_size,
            eval_batch_size=128,
            group_by_length=True,
            seed=args.seed,
            tokenizer=str(args.model),
            cache_dir=tmp,
        )
        dm.setup("fit")
        L.seed_everything(args.seed, verbose=False)
        adapter = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1) if lora else None
        model = TextClassifier(
            str(args.model),
            num_classes=2,
            pooling="mean",
            lr=lr,
            adapter=adapter,
            optimizer=lambda params: torch.optim.AdamW(params, weight_decay=0.01, fused=True),
            lr_scheduler=lambda opt: WarmupDecay(opt, warmup_ratio=0.0, decay="linear"),
            scheduler_interval="step",
        )
        connect(model, dm)
        trainer = L.Trainer(
            accelerator="cpu",
            max_epochs=1,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp,
        )
        start, cpu = time.perf_counter(), time.process_time()
        trainer.fit(model, datamodule=dm)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        trainer.save_checkpoint(Path(tmp) / "model.ckpt")
        checkpoint_mb = (Path(tmp) / "model.ckpt").stat().st_size / 1e6
        evaluator = L.Trainer(
            accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
        )
        accuracy = evaluator.validate(model, datamodule=dm, verbose=False)[0]["val/acc"]
        samples = len(dm.train_set)
    queue.put(
        {
            "run": f"{'LoRA r=8' if lora else 'full fine-tuning'}, LR {lr:g}",
            "lora": lora,
            "accuracy": round(float(accuracy), 4),
            "samples_per_s": round(samples / seconds, 1),
            "samples_per_cpu_s": round(samples / cpu, 1),
            "peak_mib": round(peak_mib),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "checkpoint_mb": round(checkpoint_mb, 2),
            "seconds": round(seconds, 1),
        }
    )


def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Full fine-tuning, then LoRA at each LR, each in a fresh process; their measures in that order."""
    context = multiprocessing.get_context("spawn")
    rows = []
    for lr, lora in [(args.full_lr, False), *((lr, True) for lr in args.lora_lrs)]:
        queue = context.Queue()
        process = context.Process(target=run, args=(args, lr, lora, queue))
        process.start()
        rows.append(queue.get())
        process.join()
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="default: <shared>/models/all-MiniLM-L6-v2")
    parser.add_argument("--train-size", type=int, default=8000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--full-lr", type=float, default=5e-5)
    parser.add_argument("--lora-lrs", type=float, nargs="+", default=[2e-3, 3e-3, 5e-3])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (1: robust if shared)")
    parser.add_argument("--shared", type=Path, default=SHARED, help="folder with MiniLM and the SST-2 data")
    parser.add_argument("--smoke", action="store_true", help="tiny stand-ins, 3 steps: checks the script")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.smoke:
            args.shared = _smoke.tiny_shared(Path(tmp), _smoke.MINILM, _smoke.SST2)
            args.train_size, args.batch_size, args.lora_lrs = 12, 4, [3e-3]
        args.model = args.model or args.shared / "models/all-MiniLM-L6-v2"
        if not (args.shared / "data/sst2/train.tsv").is_file() or not args.model.is_dir():
            raise SystemExit(f"Needs {args.shared}/data/sst2 and {args.model} (see ../shared/README.md)")
        rows = run_all(args)

    full = rows[0]
    best = max((r for r in rows if r["lora"]), key=lambda r: r["accuracy"])
    print(f"\n{args.train_size} SST-2 sentences, 1 epoch, batch {args.batch_size}, {args.threads} thread(s)")
    columns = "run | dev accuracy | train samples/s | samples/CPU-s | peak RSS (MiB) | trainable params"
    print(f"\n| {columns} | checkpoint (MB) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        mark = " (best LoRA)" if r is best else ""
        print(
            f"| {r['run']}{mark} | {r['accuracy']:.4f} | {r['samples_per_s']} | {r['samples_per_cpu_s']} | "
            f"{r['peak_mib']} | {r['trainable']:,} | {r['checkpoint_mb']} |"
        )
    print(
        f"\nbest LoRA vs full: accuracy {100 * (best['accuracy'] - full['accuracy']):+.2f} points, "
        f"checkpoint {100 * best['checkpoint_mb'] / full['checkpoint_mb']:.2f} % of full, "
        f"samples/s {best['samples_per_s'] / full['samples_per_s']:.2f}x, "
        f"samples/CPU-s {best['samples_per_cpu_s'] / full['samples_per_cpu_s']:.2f}x, "
        f"peak RSS {best['peak_mib'] / full['peak_mib']:.2f}x, "
        f"trainable parameters {100 * best['trainable'] / full['trainable']:.2f} %"
    )


if __name__ == "__main__":
    main()
