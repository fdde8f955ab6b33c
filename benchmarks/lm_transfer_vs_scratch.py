"""Causal LM: the zoo GPT-2 transferred (fine-tune, add-layers) vs the same architecture from scratch.

Same data (SST-2 training sentences as a corpus, dev sentences for val/test: ``../shared/data/sst2``),
same budget (``--steps`` optimizer steps of 32 x 128 tokens), same tokenizer (the zoo model's byte-level
BPE, so the perplexities are comparable). The arms run the shipped recipes with only their length
changed:

* fine-tune: ``recipes/lm/gpt2_mini_finetune_local.yaml`` (``gpt2-mini.shakespeare``, LR 5e-4);
* add-layers: ``recipes/lm/gpt2_mini_add_layers_local.yaml`` (2 new blocks + untied head on the frozen
  body for half the steps, then everything; 6 layers instead of 4);
* from scratch: the fine-tune recipe with ``model_name_or_path: null`` and the zoo model's config
  (random weights), at the fine-tune LR and at 3e-3 (a from-scratch LR, the zoo's own pretraining LR).

Run from the repository root (the recipes name ``../shared`` paths)::

    python benchmarks/lm_transfer_vs_scratch.py --steps 150 --threads 2
    python benchmarks/lm_transfer_vs_scratch.py --steps 60 --skip-scratch-low-lr   # a shorter run

``--smoke`` runs every arm the same way for 2 steps in seconds, from any folder and without ``../shared``:
the zoo model is replaced by a 2-layer GPT-2 pretrained for 20 steps on toy sentences, the SST-2 files by
tables of toy sentences, batches are 4 x 32 tokens, 1 thread (``benchmarks/_smoke.py``; its figures mean
nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import _smoke
import torch

from lightning_recipes import zoo
from lightning_recipes.cli import run_recipe

REPO = Path(__file__).resolve().parents[1]
LM = REPO / "recipes" / "lm"
#: The project's shared folder: Tiny Shakespeare, which the zoo model is pretrained on.
SHARED = Path(os.environ.get("LIGHTNING_RECIPES_SHARED", REPO / ".." / "shared")).resolve()


def run(recipe: str, out: Path, steps_per_epoch: int, overrides: list[str]) -> tuple[float, float]:
    """``(test perplexity on the dev sentences, wall time in s)`` of one recipe run."""
    start = time.perf_counter()
    summary = run_recipe(
        str(LM / recipe),
        [
            f"--trainer.default_root_dir={out}",
            "--trainer.logger=false",  # a logger would merge the model's and data's differing `tokenizer`
            f"--trainer.limit_train_batches={steps_per_epoch}",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            "--data.init_args.num_workers=0",
            *overrides,
        ],
    )
    return summary["metrics"]["test/ppl"], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps per arm (32 x 128 tokens)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--skip-scratch-low-lr", action="store_true", help="no scratch arm at LR 5e-4")
    parser.add_argument("--smoke", action="store_true", help="2 steps on tiny stand-ins: checks the script")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.threads = 2, 1
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data = smoke_setup(Path(tmp)) if args.smoke else []
        results = run_arms(args, Path(tmp), data)
    best_scratch = min(ppl for name, (ppl, _) in results.items() if name.startswith("from scratch"))
    if args.smoke:
        print("\nsmoke run: tiny stand-ins, 4 x 32 tokens per step; the figures mean nothing")
    else:
        print(f"\n{args.steps} steps x 32 x 128 tokens of SST-2 sentences; test/ppl on the 872 dev sentences")
    print("| arm | test/ppl | best from-scratch ppl / this | wall time (s) |")
    print("| --- | --- | --- | --- |")
    for name, (ppl, seconds) in results.items():
        print(f"| {name} | {ppl:.1f} | {best_scratch / ppl:.2f} | {seconds:.0f} |")


def smoke_setup(tmp: Path) -> list[str]:
    """The stand-ins of ``--smoke`` (zoo model, SST-2 tables); returns the overrides that use them."""
    _smoke.tiny_zoo(tmp, "gpt2-mini.shakespeare")
    sst2 = _smoke.write_sst2(tmp / "sst2")
    return [
        f"--data.init_args.train_file={sst2 / 'train.tsv'}",
        f"--data.init_args.val_file={sst2 / 'dev.tsv'}",
        f"--data.init_args.test_file={sst2 / 'dev.tsv'}",
        "--data.init_args.block_size=32",
        "--data.init_args.batch_size=4",
        "--trainer.limit_val_batches=2",
        "--trainer.limit_test_batches=2",
    ]


def run_arms(args: argparse.Namespace, tmp: Path, data: list[str]) -> dict[str, tuple[float, float]]:
    """``{arm: (test perplexity, wall time)}``; ``data`` overrides every arm's data (``--smoke``)."""
    folder = zoo.build("gpt2-mini.shakespeare", source=SHARED)  # first, outside the timings (once)
    config = json.loads((Path(folder) / "config.json").read_text())
    keys = ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size", "bos_token_id", "eos_token_id")
    config = {k: config[k] for k in (*keys, "resid_pdrop", "embd_pdrop", "attn_pdrop")}
    scratch = ["--model.init_args.model_name_or_path=null", f"--model.init_args.config={json.dumps(config)}",
               f"--data.init_args.tokenizer={folder}"]  # fmt: skip
    arms = {
        "fine-tune (gpt2-mini.shakespeare, LR 5e-4)": ("gpt2_mini_finetune_local.yaml", 1, []),
        "add-layers (+2 blocks, frozen body for half)": ("gpt2_mini_add_layers_local.yaml", 2, []),
        "from scratch, LR 5e-4": ("gpt2_mini_finetune_local.yaml", 1, scratch),
        "from scratch, LR 3e-3": (
            "gpt2_mini_finetune_local.yaml",
            1,
            [*scratch, "--model.init_args.lr=3e-3"],
        ),
    }
    if args.skip_scratch_low_lr:
        del arms["from scratch, LR 5e-4"]
    return {
        name: run(recipe, tmp / str(i), args.steps // epochs, [*overrides, *data])
        for i, (name, (recipe, epochs, overrides)) in enumerate(arms.items())
    }


if __name__ == "__main__":
    main()
