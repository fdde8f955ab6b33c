"""How long `lightning-recipes suggest` takes on a few hundred examples, and what its probe costs.

Each case runs ``lightning-recipes suggest`` in a fresh process (imports included, as a user runs it)
and prints its wall time, its CPU time (user + system) and the scenario. On a machine shared with
other jobs the wall time is inflated; with ``--threads 1`` the CPU time is what the command costs,
and bounds its wall time on an idle core. Side by side on the features of one case, the script then fits
the probe ``suggest`` uses (a ridge classifier, closed form) and the obvious alternative (a logistic
regression, iterative), 5-fold CV each, and prints the ratio.

    python benchmarks/suggest_time.py --threads 2

``--smoke`` runs the cases that need ``../shared`` on tiny stand-ins of it instead (timm
``test_efficientnet`` with random weights, a 2-layer BERT, 32 toy sentences: ``benchmarks/_smoke.py``)
and skips the zoo backbone's case (its build alone takes 30 s); the probes get 60 images instead of 300:
seconds, on any machine, one thread (a check that the script runs; its figures mean nothing).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _smoke

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LIGHTNING_RECIPES_SHARED", REPO.parent / "shared")).resolve()


def run_suggest(data: str, backbone: str, threads: int) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user + system, of the child process) and the scenario printed."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    code = f"import torch, sys; torch.set_num_threads({threads}); from lightning_recipes.cli import main; "
    code += f"sys.exit(main(['suggest', '--data', {data!r}, '--backbone', {backbone!r}]))"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    scenario = proc.stdout.split("Scenario:")[1].split()[0]
    return seconds, cpu, scenario


def probe_ratio(data: str, backbone: str, examples: int) -> tuple[tuple[int, int], float, float]:
    """The shape of the features of ``examples`` images and the seconds of each probe's 5-fold CV on them."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from lightning_recipes import _suggest_data as sd
    from lightning_recipes.suggest import MAX_IMAGE_SIZE, probe_accuracy

    sample = sd.load_images(data, examples, 0)
    features = sd.image_features(sample, backbone, MAX_IMAGE_SIZE, 0).pretrained
    start = time.perf_counter()
    probe_accuracy(features, sample.targets)
    ridge = time.perf_counter() - start
    logistic = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    start = time.perf_counter()
    cross_val_score(logistic, features, sample.targets, cv=StratifiedKFold(5, shuffle=True, random_state=0))
    return features.shape, ridge, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="tiny stand-ins, 1 thread: checks the script")
    args = parser.parse_args()
    import torch

    from lightning_recipes import zoo
    from lightning_recipes.data.digits import export_digits

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        digits = str(export_digits(root, [5, 6, 7, 8, 9], train_per_class=10))  # 50 train + 316 val/test
        if args.smoke:
            args.threads, shared, cases = 1, _smoke.tiny_shared(root / "shared"), []
        else:
            shared, cases = SHARED, [(digits, "resnet10t.digits04")]
            zoo.build("resnet10t.digits04")  # once, ahead of the timings (about 30 s on 2 cores)
        torch.set_num_threads(args.threads)
        if shared.is_dir():
            cases.append((digits, f"local-dir:{shared / 'models' / 'efficientnet_lite0'}"))
            sst2 = root / "sst2_300.tsv"
            dev = (shared / "data" / "sst2" / "dev.tsv").read_text().splitlines(True)
            sst2.write_text("".join(dev[:301]))  # the header and 300 sentences
            cases.append((str(sst2), str(shared / "models" / "all-MiniLM-L6-v2")))
        load = os.getloadavg()[0]
        print(f"threads={args.threads}, load average at start {load:.1f} on {os.cpu_count()} cores\n")
        print("| data | backbone | wall s | CPU s | scenario |\n| --- | --- | --- | --- | --- |")
        for data, backbone in cases:
            seconds, cpu, scenario = run_suggest(data, backbone, args.threads)
            print(f"| {Path(data).name} | {Path(backbone).name} | {seconds:.1f} | {cpu:.1f} | {scenario} |")
        data, backbone = cases[0]
        (examples, features), ridge, logistic = probe_ratio(data, backbone, 60 if args.smoke else 300)
        print(f"\nprobe on the {examples} x {features} features of {Path(backbone).name}, 5-fold CV:\n")
        print("| probe | s | vs ridge |\n| --- | --- | --- |")
        print(f"| ridge classifier (suggest's) | {ridge:.2f} | 1.0x |")
        print(f"| logistic regression | {logistic:.2f} | {logistic / ridge:.1f}x |")


if __name__ == "__main__":
    main()
