"""TextClassifier + TextDataModule vs the Hugging Face ``Trainer``: same model, data, seed, hyperparameters.

MiniLM (``../shared/models/all-MiniLM-L6-v2``, 6 layers, hidden 384) fine-tuned on a seeded subset of
2,000 SST-2 training sentences for 1 epoch, batch 32, AdamW (LR 5e-5, no weight decay), linear decay
to 0, no warmup, gradient clipping at norm 1.0 (all the Trainer's defaults), fp32, max length 128. Both
sides train ``AutoModelForSequenceClassification`` (``head="pretrained"`` on our side) on the very same
tokenised examples (tokenised once, outside the timings) with dynamic padding; then both score the 872 dev
sentences. Training samples/s = 2,000 / wall time of ``fit`` / ``train`` (no validation inside); as the
machine may be shared, samples per CPU-second (``time.process_time``, all threads of the process) is
printed too: it counts the work done and is far less sensitive to other processes than wall time.

The data path differs, which is the point: lightning_recipes draws length-grouped batches
(``group_by_length=True``), the Trainer its default random batches. ``--hf-group-by-length`` adds a
Trainer row with its own length grouping, to show where the speed-up comes from; ``--mean-pooling`` adds
a lightning_recipes row with a new mean-pooling head (``head="new", pooling="mean"``) instead of BERT's
pooler + classifier, MiniLM having been trained as a mean-pooled sentence encoder.

Run (from the repository root; it prints a markdown table)::

    nice .venv/bin/python benchmarks/text_vs_hf_trainer.py --repeats 2 --hf-group-by-length --mean-pooling

``--smoke`` runs all four rows (``--hf-group-by-length --mean-pooling``) for 3 steps of 4 sentences on tiny
stand-ins for ``../shared`` (a 2-layer BERT where MiniLM is, toy sentences: ``benchmarks/_smoke.py``), in
seconds, on any machine (a check that the script runs; its figures mean nothing).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import _smoke

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from lightning_recipes import TextClassifier, TextDataModule, connect  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LIGHTNING_RECIPES_SHARED", REPO / ".." / "shared")).resolve()


def build_data(args: argparse.Namespace, cache: str) -> TextDataModule:
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
        cache_dir=cache,
    )
    dm.setup("fit")
    return dm


def measures(samples: int, seconds: float, cpu: float, accuracy: float) -> dict[str, float]:
    """Wall-clock and CPU-time throughput (CPU time: this process, all threads: steadier when shared)."""
    return {
        "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu, 1),
        "samples_per_s": samples / seconds,
        "samples_per_cpu_s": samples / cpu,
        "accuracy": round(float(accuracy), 4),
    }


def run_lightning(args: argparse.Namespace, dm: TextDataModule, head: str, pooling: str) -> dict[str, float]:
    L.seed_everything(args.seed, verbose=False)
    steps = -(-len(dm.train_set) // args.batch_size)
    model = TextClassifier(
        str(args.model),
        num_classes=2,
        head=head,
        pooling=pooling,
        lr=args.lr,
        # fused AdamW, as the Trainer's default optim="adamw_torch_fused": same update, one kernel
        optimizer=lambda params: torch.optim.AdamW(params, weight_decay=0.0, fused=True),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.0, total_iters=steps),
        scheduler_interval="step",
    )
    connect(model, dm)  # the same tokenizer on both sides; the class names go to the model
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        gradient_clip_val=1.0,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start, cpu = time.perf_counter(), time.process_time()
    trainer.fit(model, datamodule=dm)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    evaluator = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    accuracy = evaluator.validate(model, datamodule=dm, verbose=False)[0]["val/acc"]
    return measures(len(dm.train_set), seconds, cpu, accuracy)


def run_hf_trainer(args: argparse.Namespace, dm: TextDataModule, group_by_length: bool) -> dict[str, float]:
    from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments, set_seed

    set_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(str(args.model), num_labels=2)
    extra: dict[str, Any] = {}
    if group_by_length:
        fields = TrainingArguments.__dataclass_fields__
        if "train_sampling_strategy" in fields:
            extra["train_sampling_strategy"] = "group_by_length"
        else:  # transformers < 5
            extra["group_by_length"] = True
    with tempfile.TemporaryDirectory() as out:
        training_args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=128,
            learning_rate=args.lr,
            weight_decay=0.0,
            num_train_epochs=1,
            lr_scheduler_type="linear",
            warmup_steps=0,
            max_grad_norm=1.0,
            seed=args.seed,
            use_cpu=True,
            eval_strategy="no",
            save_strategy="no",
            logging_strategy="no",
            report_to="none",
            disable_tqdm=True,
            dataloader_num_workers=0,
            **extra,
        )
        trainer = Trainer(
            model=model, args=training_args, train_dataset=dm.train_set, processing_class=dm.tokenizer
        )
        start, cpu = time.perf_counter(), time.process_time()
        trainer.train()
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        # With length grouping the Trainer predicts in a shuffled order: use the labels it returns.
        out = trainer.predict(dm.val_set)
    accuracy = float((np.argmax(out.predictions, -1) == out.label_ids).mean())
    return measures(len(dm.train_set), seconds, cpu, accuracy)


def padded_tokens(dm: TextDataModule) -> dict[str, int]:
    """Tokens the model sees in one epoch (batch size x longest row, summed) for random vs grouped batches."""
    lengths, size = dm.lengths["train"], dm.batch_size
    generator = torch.Generator().manual_seed(0)
    orders = {
        "random": torch.randperm(len(lengths), generator=generator).tolist(),
        "grouped": list(dm.train_dataloader().sampler),
    }
    return {
        name: sum(
            len(b) * max(lengths[i] for i in b)
            for b in (order[j : j + size] for j in range(0, len(order), size))
        )
        for name, order in orders.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="default: <shared>/models/all-MiniLM-L6-v2")
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--repeats", type=int, default=1, help="alternate the runs this many times; median speed"
    )
    parser.add_argument(
        "--hf-group-by-length", action="store_true", help="add a Trainer run with length grouping"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: robust when shared)")
    parser.add_argument("--mean-pooling", action="store_true", help="add a run with a new mean-pooling head")
    parser.add_argument("--shared", type=Path, default=SHARED, help="folder with MiniLM and the SST-2 data")
    parser.add_argument("--smoke", action="store_true", help="tiny stand-ins, 3 steps: checks the script")
    args = parser.parse_args()
    # With more threads than free cores, OpenMP barriers wait on descheduled threads and a step can take
    # 10x longer; one thread per process keeps timings comparable when other jobs share the machine.
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as cache:
        if args.smoke:
            args.shared = _smoke.tiny_shared(Path(cache) / "shared", _smoke.MINILM, _smoke.SST2)
            args.train_size, args.batch_size, args.hf_group_by_length, args.mean_pooling = 12, 4, True, True
        args.model = args.model or args.shared / "models/all-MiniLM-L6-v2"
        if not (args.shared / "data/sst2/train.tsv").is_file() or not args.model.is_dir():
            raise SystemExit(f"Needs {args.shared}/data/sst2 and {args.model} (see ../shared/README.md)")
        dm = build_data(args, cache)
        lengths = dm.lengths["train"]
        mean = statistics.mean(lengths)
        sizes = f"{len(dm.train_set)} train / {len(dm.val_set)} dev sentences"
        print(f"{sizes}, {sum(lengths)} train tokens (mean {mean:.1f})")
        print(f"torch threads: {torch.get_num_threads()}; padded tokens per epoch: {padded_tokens(dm)}")
        runs: dict[str, list[dict[str, float]]] = {}
        names = ["HF Trainer (random batches)", "lightning_recipes (group_by_length)"]
        if args.hf_group_by_length:
            names.append("HF Trainer (group_by_length)")
        if args.mean_pooling:
            names.append("lightning_recipes (group_by_length, mean-pooling head)")
        for _ in range(args.repeats):
            for name in names:
                if name.startswith("lightning"):
                    mean = "mean-pooling" in name
                    head, pooling = ("new", "mean") if mean else ("pretrained", "cls")
                    result = run_lightning(args, dm, head, pooling)
                else:
                    result = run_hf_trainer(args, dm, group_by_length="group_by_length" in name)
                runs.setdefault(name, []).append(result)
                print(f"  {name}: {result}", flush=True)

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    print("\n| run | dev accuracy | train samples/s (wall) | vs HF | samples per CPU-second | vs HF |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, results in runs.items():
        wall, cpu = median(name, "samples_per_s"), median(name, "samples_per_cpu_s")
        accs = ", ".join(f"{a:.4f}" for a in sorted({r["accuracy"] for r in results}))
        print(
            f"| {name} | {accs} | {wall:.1f} | {wall / median(names[0], 'samples_per_s'):.2f}x "
            f"| {cpu:.1f} | {cpu / median(names[0], 'samples_per_cpu_s'):.2f}x |"
        )


if __name__ == "__main__":
    main()
