"""Transfer vs. from scratch on the quickstart task (digits 0-4 -> digits 5-9, 20 images per class).

Runs ``recipes/quickstart.yaml`` as shipped (pretrained backbone) and with
``--model.init_args.pretrained=false`` (baseline: same recipe, random init) for several seeds, and
prints test accuracy side by side.

    python benchmarks/quickstart_transfer.py --seeds 0 1 2
    python benchmarks/quickstart_transfer.py --override=--data.init_args.train_per_class=5

``--smoke`` runs both arms for one seed and 2 epochs, with the zoo backbone replaced by timm's
``test_resnet`` trained 1 epoch on digits 0-4 (``benchmarks/_smoke.py``), in seconds: a check that the
script runs (its figures mean nothing).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import _smoke

from lightning_recipes.cli import run_recipe

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"


def run(pretrained: bool, seed: int, out: Path, overrides: list[str]) -> tuple[float, float]:
    start = time.perf_counter()
    summary = run_recipe(
        str(RECIPE),
        [
            f"--seed_everything={seed}",
            f"--model.init_args.pretrained={str(pretrained).lower()}",
            f"--trainer.default_root_dir={out}",
            f"--trainer.logger.init_args.save_dir={out}",
            "--trainer.enable_progress_bar=false",
            *overrides,
        ],
    )
    return summary["metrics"]["test/acc"], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--override", action="append", default=[], help="extra recipe override, repeatable")
    parser.add_argument("--smoke", action="store_true", help="a tiny backbone, 2 epochs: checks the script")
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {"transfer (resnet10t.digits04)": [], "from scratch": []}
    with tempfile.TemporaryDirectory() as tmp:
        if args.smoke:
            _smoke.tiny_zoo(Path(tmp), "resnet10t.digits04")
            args.seeds, args.override = [0], [*args.override, "--trainer.max_epochs=2"]
        for seed in args.seeds:
            results["transfer (resnet10t.digits04)"].append(
                run(True, seed, Path(tmp) / f"t{seed}", args.override)
            )
            results["from scratch"].append(run(False, seed, Path(tmp) / f"s{seed}", args.override))
    print(f"\noverrides: {args.override or 'none'}")
    print(f"| setting | test acc per seed {args.seeds} | mean | mean wall time (s) |")
    print("| --- | --- | --- | --- |")
    for name, runs in results.items():
        accs = [a for a, _ in runs]
        print(
            f"| {name} | {', '.join(f'{a:.3f}' for a in accs)} | {statistics.mean(accs):.3f} | "
            f"{statistics.mean(t for _, t in runs):.1f} |"
        )


if __name__ == "__main__":
    main()
