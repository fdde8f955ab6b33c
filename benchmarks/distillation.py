"""Knowledge distillation per family: the distilled student vs the same student on labels only vs the teacher.

Each family runs its shipped distill recipe three ways, on the same data and test set:

* distilled student: the recipe as shipped (``Distillation``: labels + the frozen teacher's softened logits);
* student, labels only: the same recipe with the ``Distillation`` callback removed (same student, same
  initialisation, same steps);
* teacher: the teacher scored on the test set (stage ``test`` only; nothing trained).

Recipes: ``recipes/image/digits_distill_local.yaml`` (the zoo's ``resnet10t.digits04`` teaches a random-init
``regnetx_002``), ``recipes/text/sst2_minilm_distill_local.yaml`` (``minilm-l6.sst2`` teaches its blocks 0, 2,
4) and ``recipes/lm/gpt2_mini_distill_local.yaml`` (``gpt2-mini.shakespeare`` teaches its blocks 0, 2). For
each: test accuracy (perplexity for the LM), parameters, and inference throughput (samples/s of the model's
forward on one test batch, eval mode, median of ``--repeats``). The goal (#21): the student keeps >= 97 % of
the teacher's accuracy at <= half its parameters, and beats the labels-only student.

Run from the repository root (the recipes name ``../shared`` paths)::

    python benchmarks/distillation.py --families image --threads 2
    python benchmarks/distillation.py                      # all three families: tens of minutes on 2 cores

``--smoke`` runs every arm of every family for 2 steps on tiny stand-ins in seconds, from any folder and
without ``../shared`` (``benchmarks/_smoke.py``: a 2-layer BERT classifier, a 2-layer GPT-2 and timm's
``test_resnet`` as the teachers, toy data; its figures mean nothing).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import _smoke
import torch
import yaml

from lightning_recipes.recipe_cli import LightningRecipesCLI

REPO = Path(__file__).resolve().parents[1]
RECIPES = {
    "image": REPO / "recipes" / "image" / "digits_distill_local.yaml",
    "text": REPO / "recipes" / "text" / "sst2_minilm_distill_local.yaml",
    "lm": REPO / "recipes" / "lm" / "gpt2_mini_distill_local.yaml",
}
#: How each family's teacher is scored: the recipe's model, changed by these overrides, stage test only.
TEACHER = {
    "image": [
        "--model.init_args.model_name_or_path=resnet10t.digits04",
        "--model.init_args.pretrained=true",
        "--model.init_args.head=pretrained",
        "--model.init_args.num_classes=null",
    ],
    "text": ["--model.init_args.every_other_block=false"],
    "lm": ["--model.init_args.every_other_block=false"],
}


def without_teacher(recipe: Path, folder: Path) -> Path:
    """A copy of ``recipe`` without its ``Distillation`` callback: the same student on labels only."""
    config = yaml.safe_load(recipe.read_text())
    callbacks = config["trainer"]["callbacks"]
    config["trainer"]["callbacks"] = [c for c in callbacks if not c["class_path"].endswith(".Distillation")]
    assert len(config["trainer"]["callbacks"]) == len(callbacks) - 1, f"{recipe}: no Distillation callback"
    path = folder / f"{recipe.stem}_labels_only.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def throughput(model: torch.nn.Module, batch: Any, repeats: int) -> float:
    """Samples per second of ``model``'s forward on ``batch`` (eval mode, no gradients; median of repeats)."""
    forward = model.logits_and_target if hasattr(model, "logits_and_target") else model.token_nll
    size = len(batch[1]) if isinstance(batch, (list, tuple)) else batch["input_ids"].shape[0]
    model.eval()
    times = []
    with torch.no_grad():
        forward(batch)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            forward(batch)
            times.append(time.perf_counter() - start)
    return size / statistics.median(times)


def run(recipe: Path, out: Path, overrides: list[str], repeats: int) -> dict[str, float]:
    """One arm: the recipe's stages; its test metric, parameters and inference throughput."""
    args = [
        "--config",
        str(recipe),
        f"--trainer.default_root_dir={out}",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        *overrides,
    ]
    cli = LightningRecipesCLI(args=args, run=False, recipe_mode=True)
    metrics = cli.run_stages()["metrics"]
    loader = cli.datamodule.test_dataloader()
    batch = next(iter(loader))
    return {
        "test": metrics.get("test/ppl", metrics.get("test/acc", float("nan"))),
        "params": sum(p.numel() for p in cli.model.parameters()),
        "samples/s": throughput(cli.model, batch, repeats),
    }


def smoke_setup(tmp: Path) -> dict[str, list[str]]:
    """The stand-ins of ``--smoke``; returns each family's overrides that use them (2 steps, tiny data)."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    _smoke.tiny_zoo(tmp, "resnet10t.digits04", "gpt2-mini.shakespeare")
    bert = _smoke.write_bert(tmp / "bert")
    labels = {"id2label": {0: "negative", 1: "positive"}, "label2id": {"negative": 0, "positive": 1}}
    torch.manual_seed(0)
    classifier = tmp / "bert-sst2"
    BertForSequenceClassification(BertConfig.from_pretrained(bert, **labels)).save_pretrained(classifier)
    AutoTokenizer.from_pretrained(bert).save_pretrained(classifier)
    sst2 = _smoke.write_sst2(tmp / "sst2")
    corpus = tmp / "toy.txt"
    corpus.write_text("\n".join(text for text, _ in _smoke.sentences(400, seed=3)))
    short = ["--trainer.max_epochs=2", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=2"]
    return {
        "image": [
            *short,  # all of the 226 test digits at 32 px: a few batches, and every class in them
            "--data.init_args.train_per_class=8",
            "--data.init_args.batch_size=16",
            "--model.init_args.model_name_or_path=test_efficientnet",
        ],
        "text": [
            *short,
            "--trainer.limit_test_batches=2",
            f"--model.init_args.model_name_or_path={classifier}",
            f"--data.init_args.train_file={sst2 / 'train.tsv'}",
            f"--data.init_args.val_file={sst2 / 'dev.tsv'}",
            f"--data.init_args.test_file={sst2 / 'dev.tsv'}",
            "--data.init_args.train_size=16",
            "--data.init_args.max_length=32",
            "--data.init_args.batch_size=8",
            "--data.init_args.eval_batch_size=8",
        ],
        "lm": [
            *short,
            "--trainer.limit_test_batches=2",
            f"--data.init_args.train_file={corpus}",
            "--data.init_args.block_size=32",
            "--data.init_args.batch_size=4",
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--families", nargs="+", choices=sorted(RECIPES), default=list(RECIPES))
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--repeats", type=int, default=10, help="timed forward passes per model")
    parser.add_argument("--smoke", action="store_true", help="2 steps on tiny stand-ins: checks the script")
    args = parser.parse_args()
    if args.smoke:
        args.threads, args.repeats = 1, 2
    torch.set_num_threads(args.threads)
    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        small = smoke_setup(Path(tmp)) if args.smoke else {}
        for family in args.families:
            recipe, extra = RECIPES[family], small.get(family, [])
            # The image teacher is the zoo's (TEACHER), not the student's stand-in; text and LM teachers are
            # the student's own source at full depth.
            teacher_extra = [o for o in extra if family != "image" or "model_name_or_path" not in o]
            arms = {
                "distilled student": (recipe, extra),
                "student, labels only": (without_teacher(recipe, Path(tmp)), extra),
                "teacher": (recipe, [*teacher_extra, *TEACHER[family], "--stages=[test]"]),
            }
            results[family] = {
                name: run(path, Path(tmp) / family / str(i), overrides, args.repeats)
                for i, (name, (path, overrides)) in enumerate(arms.items())
            }
    if args.smoke:
        print("\nsmoke run: tiny stand-ins, 2 steps per epoch; the figures mean nothing")
    for family, arms in results.items():
        metric = "test/ppl" if family == "lm" else "test/acc"
        teacher = arms["teacher"]
        print(f"\n{family}: {RECIPES[family].relative_to(REPO)}")
        print(f"| arm | {metric} | vs teacher | params | params vs teacher | samples/s | speed vs teacher |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for name, r in arms.items():
            better, worse = (teacher["test"], r["test"]) if family == "lm" else (r["test"], teacher["test"])
            ratio = better / worse if worse else float("nan")  # a teacher that scores 0: no ratio
            print(
                f"| {name} | {r['test']:.4f} | {ratio:.3f} | {r['params']:,} | "
                f"{r['params'] / teacher['params']:.3f} | {r['samples/s']:.0f} | "
                f"{r['samples/s'] / teacher['samples/s']:.2f} |"
            )


if __name__ == "__main__":
    main()
