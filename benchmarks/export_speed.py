"""Export cost, file sizes and inference throughput of a checkpoint vs its TorchScript and ONNX exports.

Two fine-tuned models, each as a Lightning checkpoint of one optimizer step (AdamW) on random inputs, as
``lightning run`` saves it (weights + optimizer state):

* image: ``ImageClassifier`` on EfficientNet-Lite0 (ImageNet weights from
  ``../shared/models/efficientnet_lite0``) with a new 10-class head (a DTD-10 fine-tune's shape), inputs
  at its data config's size (224 px);
* text: ``TextClassifier`` on MiniLM (``../shared/models/all-MiniLM-L6-v2``) with a 2-class head, one step
  on SST-2 training sentences through ``TextDataModule(max_length=--seq-len)`` (the handshake records the
  length). The head is BERT's own (``head="pretrained"``: pooler + a new classifier), which ``--format hf``
  takes; the ``sst2_minilm_local`` recipe's mean-pooling head exports to TorchScript and ONNX only.

Each checkpoint is exported with ``lightning_recipes.export.export`` (the Python API of ``lightning-recipes
export``) to its family's own format (timm / hf), TorchScript and ONNX. Export time is the wall time of
that call: loading the checkpoint, writing the folder and the parity check (the export reloaded in a fresh
Python process, which imports torch and the format's library: most of the time). Sizes: the checkpoint
file, each export's model file(s) (``*.safetensors``, ``model.pt``, ``model.onnx``) and its whole folder
(tokenizer, model card, ``export.json``).

Throughput, samples/s, at each ``--batch-sizes`` for three runtimes: the checkpoint's module
(``load_from_checkpoint``, eval, ``torch.inference_mode``), TorchScript (``torch.jit.load``) and ONNX
Runtime (``InferenceSession``, ``CPUExecutionProvider``; intra-op threads = torch's ``--threads``, one
inter-op thread). Inputs: random images; texts of exactly ``--seq-len`` tokens (random ids, no padding: the
cost of a batch padded to the max length). Every arm takes its inputs from host memory and returns host
memory (ONNX Runtime's way). After ``--warmup`` untimed calls, each of ``--repeats`` repeats times as many
calls as fill ``--min-seconds``; the median repeat is printed, with the slowest and fastest, and the median
samples per CPU-second of the process (all its threads: it moves less than wall time when other jobs share
the machine). The last column is the largest difference of probabilities from the checkpoint's on the
largest batch.

Run (from the repository root)::

    nice .venv/bin/python benchmarks/export_speed.py --threads 1
    python benchmarks/export_speed.py --device cuda   # ONNX Runtime with CUDAExecutionProvider if installed

``--smoke`` runs the same code on tiny stand-ins for ``../shared`` (timm ``test_efficientnet`` at 32 px, a
2-layer BERT, toy sentences: ``benchmarks/_smoke.py``) with short repeats, in seconds, on any machine (a
check that the script runs; its figures mean nothing).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import _smoke  # noqa: E402
import lightning as L  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from lightning_recipes import ImageClassifier, TextClassifier, TextDataModule, connect  # noqa: E402
from lightning_recipes.export import export  # noqa: E402
from lightning_recipes.export._formats import onnx_unavailable  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LIGHTNING_RECIPES_SHARED", REPO / ".." / "shared")).resolve()
#: The files of an export folder that hold the model (the rest: tokenizer, card, export.json).
MODEL_FILES = ("*.safetensors", "*.bin", "model.pt", "model.onnx", "model.onnx.data")


def one_step_trainer(folder: Path) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", max_steps=1, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=folder,
    )  # fmt: skip


def image_checkpoint(shared: Path, folder: Path) -> Path:
    """EfficientNet-Lite0 with a new 10-class head after one AdamW step on random images, saved."""
    L.seed_everything(0, verbose=False)
    model = ImageClassifier(f"local-dir:{shared / _smoke.EFFICIENTNET}", pretrained=True, num_classes=10)
    c, h, w = model.data_config["input_size"]
    data = TensorDataset(torch.randn(4, c, h, w), torch.randint(0, 10, (4,)))
    trainer = one_step_trainer(folder)
    trainer.fit(model, DataLoader(data, batch_size=4))
    trainer.save_checkpoint(folder / "image.ckpt")
    return folder / "image.ckpt"


def text_checkpoint(shared: Path, folder: Path, max_length: int) -> Path:
    """MiniLM with BERT's classification head (2 new classes) after one AdamW step on SST-2 sentences."""
    L.seed_everything(0, verbose=False)
    dm = TextDataModule(
        train_file=str(shared / _smoke.SST2 / "train.tsv"), val_file=str(shared / _smoke.SST2 / "dev.tsv"),
        text_column="sentence", label_names=["negative", "positive"], train_size=8, max_length=max_length,
        batch_size=8, tokenizer=str(shared / _smoke.MINILM), cache_dir=str(folder / "cache"),
    )  # fmt: skip
    model = TextClassifier(str(shared / _smoke.MINILM), head="pretrained", num_classes=2)
    connect(model, dm)
    trainer = one_step_trainer(folder)
    trainer.fit(model, datamodule=dm)
    trainer.save_checkpoint(folder / "text.ckpt")
    return folder / "text.ckpt"


def megabytes(paths: list[Path]) -> float:
    return sum(p.stat().st_size for p in paths) / 1e6


def export_all(ckpt: Path, formats: list[str], folder: Path) -> list[dict[str, Any]]:
    """Export ``ckpt`` to each format in ``folder/<format>``: time, sizes, parity, the export's record."""
    rows = []
    for fmt in formats:
        start = time.perf_counter()
        done = export(ckpt, folder / fmt, fmt)
        seconds = time.perf_counter() - start
        files = sorted({p for pattern in MODEL_FILES for p in (folder / fmt).glob(pattern)})
        rows.append({
            "format": fmt, "seconds": seconds, "model_mb": megabytes(files), "files": [p.name for p in files],
            "folder_mb": megabytes([p for p in (folder / fmt).rglob("*") if p.is_file()]),
            "parity": done.parity.max_abs_diff, "record": done.record,
        })  # fmt: skip
    return rows


def make_inputs(record: dict[str, Any], batch: int, seq_len: int, vocab: int) -> dict[str, torch.Tensor]:
    """Random inputs named, ordered and shaped as ``export.json`` records them."""
    g = torch.Generator().manual_seed(batch)
    inputs = {}
    for name in record["inputs"]:
        if name == "images":
            inputs[name] = torch.randn(batch, *record["preprocessing"]["input_size"], generator=g)
        elif name == "input_ids":  # past the special and rare tokens where the vocabulary allows
            inputs[name] = torch.randint(1000 if vocab > 2000 else 5, vocab, (batch, seq_len), generator=g)
        elif name == "attention_mask":
            inputs[name] = torch.ones(batch, seq_len, dtype=torch.long)
        else:  # token_type_ids
            inputs[name] = torch.zeros(batch, seq_len, dtype=torch.long)
    return inputs


def runtimes(
    module: L.LightningModule, family: str, folder: Path, device: torch.device, threads: int
) -> dict:
    """``{row name: call}`` for the checkpoint's ``module`` and the exports in ``folder``: each call takes
    host inputs (a dict) and returns host logits; a runtime that cannot run here has a note (str) instead."""
    scripted = torch.jit.load(str(folder / "torchscript" / "model.pt"), map_location=device).eval()

    def on(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(device) for k, v in inputs.items()}

    def eager(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.inference_mode():
            args = on(inputs)
            return (module(args["images"]) if family == "image" else module(args)).cpu()

    def torchscript(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.inference_mode():
            return scripted(*on(inputs).values()).cpu()

    calls: dict[str, Any] = {
        "checkpoint module (eager)": eager,
        "TorchScript (torch.jit.load)": torchscript,
    }
    if not (folder / "onnx").is_dir():
        return calls
    import onnxruntime

    provider = "CUDAExecutionProvider" if device.type == "cuda" else "CPUExecutionProvider"
    if provider not in onnxruntime.get_available_providers():
        calls[f"ONNX Runtime ({provider})"] = f"not run: onnxruntime here has no {provider} (onnxruntime-gpu)"
        return calls
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = onnxruntime.InferenceSession(str(folder / "onnx" / "model.onnx"), options, providers=[provider])

    def ort(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {k: v.numpy() for k, v in inputs.items()})[0])

    calls[f"ONNX Runtime ({provider})"] = ort
    return calls


def throughput(call: Callable, inputs: dict, batch: int, args: argparse.Namespace) -> tuple[float, ...]:
    """``(median, slowest, fastest)`` samples/s over ``args.repeats`` repeats after ``args.warmup`` calls, and
    the median samples per CPU-second of this process (all its threads)."""
    for _ in range(args.warmup):
        call(inputs)
    start = time.perf_counter()
    call(inputs)
    per_call = time.perf_counter() - start
    calls = max(1, math.ceil(args.min_seconds / per_call))
    rates, per_cpu = [], []
    for _ in range(args.repeats):
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(calls):
            call(inputs)
        rates.append(batch * calls / (time.perf_counter() - start))
        per_cpu.append(batch * calls / (time.process_time() - cpu))
    return statistics.median(rates), min(rates), max(rates), statistics.median(per_cpu)


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    return logits.float().softmax(-1)


def print_exports(name: str, ckpt: Path, own: str, exported: list[dict[str, Any]], note: str | None) -> None:
    """The export table: each format's export time, sizes (and ratio to the checkpoint's) and parity."""
    ckpt_mb = megabytes([ckpt])
    print(f"\n{name}: export (wall time includes the parity check in a fresh process)\n")
    print("| file | export s (parity included) | model file(s) | model MB | folder MB | vs checkpoint | "
          "parity: max abs diff |\n| --- | --- | --- | --- | --- | --- | --- |")  # fmt: skip
    print(f"| checkpoint (.ckpt: weights + AdamW state) | - | {ckpt.name} | {ckpt_mb:.1f} | {ckpt_mb:.1f} | "
          f"1.00 | - |")  # fmt: skip
    for row in exported:
        label = f"own format ({own})" if row["format"] == own else row["format"]
        sizes = f"{row['model_mb']:.1f} | {row['folder_mb']:.1f} | {row['model_mb'] / ckpt_mb:.2f}"
        print(
            f"| {label} | {row['seconds']:.1f} | {', '.join(row['files'])} | {sizes} | {row['parity']:.2g} |"
        )
    if note:
        print(f"\nONNX not exported: {note}")


def benchmark(name: str, ckpt: Path, family: str, folder: Path, args: argparse.Namespace) -> None:
    """Export ``ckpt``, print its export table, then time each runtime and print the throughput table."""
    own = "timm" if family == "image" else "hf"
    formats = [own, "torchscript", *([] if args.onnx_unavailable else ["onnx"])]
    exported = export_all(ckpt, formats, folder)
    print_exports(name, ckpt, own, exported, args.onnx_unavailable)
    cls = ImageClassifier if family == "image" else TextClassifier
    module = cls.load_from_checkpoint(ckpt, map_location=args.device).eval()
    vocab = module.backbone.get_input_embeddings().num_embeddings if family == "text" else 0
    calls = runtimes(module, family, folder, args.device, args.threads)
    results: dict[str, dict[int, tuple[float, ...]]] = {}
    largest = max(args.batch_sizes)
    reference, diffs = None, {}
    for batch in args.batch_sizes:
        inputs = make_inputs(exported[0]["record"], batch, args.seq_len, vocab)
        for row, call in calls.items():
            if isinstance(call, str):
                continue
            results.setdefault(row, {})[batch] = throughput(call, inputs, batch, args)
            if batch == largest:
                probs = probabilities(call(inputs))
                reference = probs if reference is None else reference
                diffs[row] = float((probs - reference).abs().max())
    shape = f"{args.seq_len} tokens" if family == "text" else "x".join(map(str, inputs["images"].shape[1:]))
    print(f"\n{name}: inference throughput, samples/s (median of {args.repeats}; slowest to fastest), inputs "
          f"{shape}, {args.device.type}, {args.threads} thread(s)\n")  # fmt: skip
    names = ("samples/s", "vs checkpoint", "samples/CPU-s")
    columns = [f"batch {b} {name}" for b in args.batch_sizes for name in names]
    print(f"| runtime | {' | '.join(columns)} | max abs diff of probabilities (batch {largest}) |")
    print("| --- |" + " --- |" * (len(columns) + 1))
    base = results["checkpoint module (eager)"]
    for row in results:
        cells = []
        for b in args.batch_sizes:
            median, slow, fast, per_cpu = results[row][b]
            cells += [
                f"{median:.1f} ({slow:.1f} to {fast:.1f})",
                f"{median / base[b][0]:.2f}",
                f"{per_cpu:.1f}",
            ]
        print(f"| {row} | {' | '.join(cells)} | {diffs[row]:.2g} |")
    for row, note in calls.items():
        if isinstance(note, str):
            print(f"\n{row}: {note}")


def version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed(package)
    except PackageNotFoundError:
        return "not installed"


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    import platform

    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch = ONNX Runtime intra-op threads")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--seq-len", type=int, default=128, help="text: tokens per input (the max length)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per runtime and batch size")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--min-seconds", type=float, default=1.0, help="each repeat times this long at least")
    parser.add_argument("--models", nargs="+", choices=["image", "text"], default=["image", "text"])
    parser.add_argument("--shared", type=Path, default=SHARED, help="folder with the models and SST-2")
    parser.add_argument("--smoke", action="store_true", help="tiny stand-ins: checks the script")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here; run on a GPU machine or use --device cpu")
    if min(args.batch_sizes) < 1 or args.repeats < 1 or args.threads < 1:
        parser.error("--batch-sizes, --repeats and --threads must be at least 1")
    args.device = torch.device(args.device)
    args.onnx_unavailable = onnx_unavailable()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if args.smoke:
            args.shared = _smoke.tiny_shared(Path(tmp) / "shared")
            args.seq_len, args.warmup, args.repeats, args.min_seconds = 32, 1, 2, 0.01
        needed = [args.shared / p for p in (_smoke.EFFICIENTNET, _smoke.MINILM, _smoke.SST2)]
        missing = [str(p) for p in needed if not p.is_dir()]
        if missing:
            raise SystemExit(f"Needs {', '.join(missing)} (see ../shared/README.md), or --shared DIR")
        print(f"torch {torch.__version__}, onnxruntime {version('onnxruntime')}; {cpu_name()} "
              f"({os.cpu_count()} logical CPUs); {args.device.type}, {args.threads} thread(s)")  # fmt: skip
        for family in args.models:
            folder = Path(tmp) / family
            folder.mkdir()
            if family == "image":
                ckpt = image_checkpoint(args.shared, folder)
                benchmark("EfficientNet-Lite0, 10 classes", ckpt, family, folder, args)
            else:
                ckpt = text_checkpoint(args.shared, folder, args.seq_len)
                benchmark("MiniLM-L6, 2 classes", ckpt, family, folder, args)


if __name__ == "__main__":
    main()
