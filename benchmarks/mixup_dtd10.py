"""Mixup/CutMix and label smoothing vs. plain fine-tuning on DTD-10, at equal epochs.

Runs ``recipes/image/finetune_efficientnet_local.yaml`` (EfficientNet-Lite0, ImageNet weights from
``../shared``) on ``../shared/data/dtd10`` in three arms, each for the same number of epochs and seeds:
as shipped, with ``label_smoothing: 0.1``, and with ``label_smoothing: 0.1`` plus the ``Mixup`` callback
(mixup 0.8 / CutMix 1.0, timm's ImageNet recipe values). The recipe's ``EarlyStopping`` is left out in
every arm so that all run the same epochs (mixup changes how ``val/loss`` moves); everything else is as
shipped. Prints test accuracy per seed, the mean, the difference to the shipped arm in points, and the
wall time.

    python benchmarks/mixup_dtd10.py --epochs 10 --seeds 0 1 2

Each epoch trains on 400 images at 224 px and validates on 400: on a GPU, seconds; on 2 shared CPU cores
one arm's first 2 epochs took over 10 minutes (not finished; no figures recorded yet). Few epochs favour
the shipped arm: mixup is a regulariser that needs longer schedules to pay off.

``--smoke`` runs every arm for one seed and one epoch on stand-ins (timm's ``test_efficientnet`` with
random weights, 32 px, a toy three-class image folder; ``benchmarks/_smoke.py``), in seconds: a check
that the script runs (its figures mean nothing).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import _smoke
import yaml

from lightning_recipes.cli import run_recipe

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "image" / "finetune_efficientnet_local.yaml"
SHARED = REPO / ".." / "shared"
MIXUP = {
    "class_path": "lightning_recipes.callbacks.Mixup",
    "init_args": {"mixup_alpha": 0.8, "cutmix_alpha": 1.0},
}
ARMS = {
    "as shipped": (0.0, False),
    "label smoothing 0.1": (0.1, False),
    "mixup/CutMix + label smoothing 0.1": (0.1, True),
}


def recipe_for(mixup: bool, folder: Path) -> Path:
    """The shipped recipe without ``EarlyStopping`` (equal epochs), with the ``Mixup`` callback if asked."""
    recipe = yaml.safe_load(RECIPE.read_text())
    callbacks = [c for c in recipe["trainer"]["callbacks"] if not c["class_path"].endswith("EarlyStopping")]
    recipe["trainer"]["callbacks"] = [*callbacks, *([MIXUP] if mixup else [])]
    path = folder / f"recipe_{'mixup' if mixup else 'plain'}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def run(arm: str, seed: int, shared: Path, out: Path, overrides: list[str]) -> tuple[float, float]:
    smoothing, mixup = ARMS[arm]
    out.mkdir(parents=True)
    start = time.perf_counter()
    summary = run_recipe(
        str(recipe_for(mixup, out)),
        [
            f"--seed_everything={seed}",
            f"--model.init_args.model_name_or_path=local-dir:{shared / _smoke.EFFICIENTNET}",
            f"--model.init_args.label_smoothing={smoothing}",
            f"--data.init_args.root={shared / 'data' / 'dtd10'}",
            f"--trainer.default_root_dir={out}",
            f"--trainer.logger.init_args.save_dir={out}",
            "--trainer.enable_progress_bar=false",
            *overrides,
        ],
    )
    return summary["metrics"]["test/acc"], time.perf_counter() - start


def toy_dtd(root: Path) -> None:
    """Three classes of 8 striped/dotted/flat 40 px images per split, laid out like ``data/dtd10``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        for c, name in enumerate(("banded", "dotted", "flat")):
            (root / split / name).mkdir(parents=True)
            for i in range(8):
                pixels = rng.integers(0, 60, (40, 40, 3)).astype(np.uint8)
                if c == 0:
                    pixels[::4] = 220
                elif c == 1:
                    pixels[::5, ::5] = 220
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--override", action="append", default=[], help="extra recipe override, repeatable")
    parser.add_argument("--smoke", action="store_true", help="stand-ins, 1 epoch: checks the script")
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {arm: [] for arm in ARMS}
    with tempfile.TemporaryDirectory() as tmp:
        shared = SHARED.resolve()
        if args.smoke:
            shared = _smoke.tiny_shared(Path(tmp) / "shared", _smoke.EFFICIENTNET)
            toy_dtd(shared / "data" / "dtd10")
            args.seeds, args.epochs = [0], 1
            args.override = [
                *args.override,
                "--model.init_args.num_classes=3",
                "--data.init_args.batch_size=8",
            ]
        overrides = [f"--trainer.max_epochs={args.epochs}", *args.override]
        for seed in args.seeds:
            for i, arm in enumerate(ARMS):
                results[arm].append(run(arm, seed, shared, Path(tmp) / f"{i}-{seed}", overrides))
    print(f"\nepochs: {args.epochs}; overrides: {args.override or 'none'}")
    print(f"| setting | test acc per seed {args.seeds} | mean | vs as shipped, points | mean wall time (s) |")
    print("| --- | --- | --- | --- | --- |")
    base = statistics.mean(a for a, _ in results["as shipped"])
    for arm, runs in results.items():
        accs = [a for a, _ in runs]
        mean = statistics.mean(accs)
        print(
            f"| {arm} | {', '.join(f'{a:.3f}' for a in accs)} | {mean:.3f} | {100 * (mean - base):+.1f} | "
            f"{statistics.mean(t for _, t in runs):.1f} |"
        )


if __name__ == "__main__":
    main()
