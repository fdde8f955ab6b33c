"""Transfer vs from scratch on text: the same SST-2 subset, budget and batches, three ways to start.

* ``fine-tune``: the pretrained MiniLM (``../shared/models/all-MiniLM-L6-v2``, 6 layers, hidden 384),
  every layer trained from the first step (LR 5e-5, linear decay), a new mean-pooling head;
* ``add-layers``: the same encoder frozen under a new head for the first epoch (head LR 1e-3), then
  unfrozen top group first, one more group each epoch, everything at the last epoch, with layer-wise LR
  decay (:class:`~lightning_recipes.callbacks.FreezeUnfreeze`: ``milestones=[1, ..., epochs - 1]``,
  ``backbone_lr_ratio=0.05``; the model's ``layer_decay=0.8``), as
  ``recipes/text/sst2_minilm_add_layers_local.yaml``;
* ``scratch``: a small BERT built from a config (4 layers, hidden 256, random weights) with a WordPiece
  tokenizer trained on the same training sentences (``wordpiece_vocab_size=8000``; LR 5e-4, 10 % warm-up,
  linear decay), as ``recipes/text/sst2_bert_scratch_local.yaml``.

Same for all three: a seeded subset of ``--train-size`` SST-2 training sentences, ``--epochs`` epochs,
batch 32, max length 64 tokens, length-grouped batches, AdamW (weight decay 0.01), fp32, seed 42; each
is scored on the 872 SST-2 dev sentences after every epoch (the last epoch's accuracy is printed, and the
best). Training samples/s counts the training samples over the wall time of ``fit`` (validation
included, the same 872 sentences for each); samples per CPU-second is steadier on a shared machine.

Run (from the repository root; prints a markdown table; on a shared machine one torch thread gives
repeatable timings, see docs/benchmarks.md; ``--threads 2`` on an idle one)::

    .venv/bin/python benchmarks/text_transfer_vs_scratch.py --threads 1

``--smoke`` runs the three arms for 2 epochs of one step on 16 sentences, with tiny stand-ins for
``../shared`` (a 2-layer BERT where MiniLM is, toy sentences: ``benchmarks/_smoke.py``), in seconds, on
any machine (a check that the script runs; its figures mean nothing).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import _smoke

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lightning as L  # noqa: E402
import torch  # noqa: E402

from lightning_recipes import TextClassifier, TextDataModule, connect  # noqa: E402
from lightning_recipes.callbacks import FreezeUnfreeze  # noqa: E402
from lightning_recipes.schedulers import WarmupDecay  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LIGHTNING_RECIPES_SHARED", REPO / ".." / "shared")).resolve()
MINILM = "models/all-MiniLM-L6-v2"  # in the shared folder
#: The scratch arm's encoder: 4 x 256, 4 heads of 64 dims; vocab_size >= the trained WordPiece's size.
SCRATCH_CONFIG = {
    "model_type": "bert",
    "num_hidden_layers": 4,
    "hidden_size": 256,
    "num_attention_heads": 4,
    "intermediate_size": 1024,
    "max_position_embeddings": 128,
    "vocab_size": 8000,
}


def build_data(args: argparse.Namespace, cache: str, **tokenizer: Any) -> TextDataModule:
    return TextDataModule(
        train_file=str(args.shared / "data/sst2/train.tsv"),
        val_file=str(args.shared / "data/sst2/dev.tsv"),
        text_column="sentence",
        label_names=["negative", "positive"],
        train_size=args.train_size,
        max_length=64,
        batch_size=32,
        eval_batch_size=128,
        group_by_length=True,
        seed=42,
        cache_dir=cache,
        **tokenizer,
    )


def build_arm(name: str, args: argparse.Namespace, cache: str) -> tuple[TextClassifier, TextDataModule, list]:
    adamw = {"optimizer": lambda params: torch.optim.AdamW(params, weight_decay=0.01)}
    if name == "fine-tune":
        model = TextClassifier(
            str(args.shared / MINILM),
            num_classes=2,
            pooling="mean",
            lr=5e-5,
            lr_scheduler=lambda opt: WarmupDecay(opt, warmup_ratio=0.0, decay="linear"),
            scheduler_interval="step",
            **adamw,
        )
        return model, build_data(args, cache), []
    if name == "add-layers":
        model = TextClassifier(
            str(args.shared / MINILM), num_classes=2, pooling="mean", lr=1e-3, layer_decay=0.8, **adamw
        )
        unfreeze = FreezeUnfreeze(milestones=list(range(1, max(args.epochs, 2))), backbone_lr_ratio=0.05)
        return model, build_data(args, cache), [unfreeze]
    model = TextClassifier(
        None,
        config=SCRATCH_CONFIG,
        num_classes=2,
        pooling="mean",
        lr=5e-4,
        lr_scheduler=lambda opt: WarmupDecay(opt, warmup_ratio=0.1, decay="linear"),
        scheduler_interval="step",
        **adamw,
    )
    return model, build_data(args, cache, wordpiece_vocab_size=8000), []


def run(name: str, args: argparse.Namespace, cache: str) -> dict[str, Any]:
    L.seed_everything(42, verbose=False)
    model, dm, callbacks = build_arm(name, args, cache)
    start = time.perf_counter()
    connect(model, dm)  # the scratch arm trains its WordPiece tokenizer here
    dm.setup("fit")  # tokenise once, outside the training time
    prepare = time.perf_counter() - start
    accuracies: list[float] = []

    class Record(L.Callback):
        def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            if not trainer.sanity_checking:
                accuracies.append(float(trainer.callback_metrics["val/acc"]))

    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=args.epochs,
        num_sanity_val_steps=0,
        callbacks=[*callbacks, Record()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start, cpu = time.perf_counter(), time.process_time()
    trainer.fit(model, datamodule=dm)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    samples = len(dm.train_set) * args.epochs
    return {
        "arm": name,
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "vocab": len(model.tokenizer),
        "prepare_s": prepare,
        "seconds": seconds,
        "samples_per_s": samples / seconds,
        "samples_per_cpu_s": samples / cpu,
        "acc_per_epoch": accuracies,
        "dev_sentences": len(dm.val_set),
    }


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--arms", nargs="+", default=["fine-tune", "add-layers", "scratch"])
    parser.add_argument("--shared", type=Path, default=SHARED, help="folder with MiniLM and the SST-2 data")
    parser.add_argument("--smoke", action="store_true", help="tiny stand-ins, 2 steps: checks the script")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        if args.smoke:
            args.shared = _smoke.tiny_shared(Path(cache) / "shared", _smoke.MINILM, _smoke.SST2)
            args.train_size = 16
        if not (args.shared / MINILM).is_dir():
            raise SystemExit(f"{args.shared / MINILM} not found: --shared names the folder holding models/")
        for arm in args.arms:
            rows.append(run(arm, args, cache))
            print(rows[-1], flush=True)
    base = next((r for r in rows if r["arm"] == "fine-tune"), rows[0])
    print(
        f"\n{args.train_size} SST-2 sentences x {args.epochs} epochs, batch 32, max_length 64, "
        f"{args.threads} threads; dev accuracy on {rows[0]['dev_sentences']} sentences\n"
    )
    print(
        "| start | params (M) | vocab | dev acc per epoch | best | samples/s | vs fine-tune | samples/CPU-s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        accs = " / ".join(f"{a:.3f}" for a in r["acc_per_epoch"])
        ratio = r["samples_per_s"] / base["samples_per_s"]
        print(
            f"| {r['arm']} | {r['params_M']:.1f} | {r['vocab']} | {accs} | {max(r['acc_per_epoch']):.3f} | "
            f"{r['samples_per_s']:.1f} | {ratio:.2f}x | {r['samples_per_cpu_s']:.1f} |"
        )


if __name__ == "__main__":
    main()
