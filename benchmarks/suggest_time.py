"""How long `lightning-recipes suggest` takes on a few hundred examples, and what its probe costs.

Each case runs ``lightning-recipes suggest`` in a fresh process (imports included, as a user runs it)
and prints its wall time, its CPU time (user + system) and the scenario. On a machine shared with
other jobs the wall time is inflated; with ``--threads 1`` the CPU time is what the command costs,
and bounds its wall time on an idle core. Side by side on the features of one case, the script then fits
the probe ``suggest`` uses (a ridge classifier, closed form) and the obvious alternative (a logistic
regression, iterative), 5-fold CV each, and prints the ratio.

    python benchmarks/suggest_time.py --threads 2
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


def probe_ratio(data: str, backbone: str) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from lightning_recipes import _suggest_data as sd
    from lightning_recipes.suggest import MAX_IMAGE_SIZE, probe_accuracy

    sample = sd.load_images(data, 300, 0)
    features = sd.image_features(sample, backbone, MAX_IMAGE_SIZE, 0).pretrained
    start = time.perf_counter()
    probe_accuracy(features, sample.targets)
    ridge = time.perf_counter() - start
    logistic = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    start = time.perf_counter()
    cross_val_score(logistic, features, sample.targets, cv=StratifiedKFold(5, shuffle=True, random_state=0))
    return ridge, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from lightning_recipes import zoo
    from lightning_recipes.data.digits import export_digits

    zoo.ZOO["resnet10t.digits04"].build()  # once, ahead of the timings (about 30 s on 2 cores)
    root = Path(tempfile.mkdtemp())
    digits = str(export_digits(root, [5, 6, 7, 8, 9], train_per_class=10))  # 50 train + 316 val/test images
    cases = [(digits, "resnet10t.digits04")]
    if SHARED.is_dir():
        cases.append((digits, f"local-dir:{SHARED / 'models' / 'efficientnet_lite0'}"))
        sst2 = root / "sst2_300.tsv"
        sst2.write_text("".join((SHARED / "data" / "sst2" / "dev.tsv").read_text().splitlines(True)[:301]))
        cases.append((str(sst2), str(SHARED / "models" / "all-MiniLM-L6-v2")))
    load = os.getloadavg()[0]
    print(f"threads={args.threads}, load average at start {load:.1f} on {os.cpu_count()} cores")
    print(f"{'data':<28} {'backbone':<24} {'wall s':>7} {'CPU s':>7}  scenario")
    for data, backbone in cases:
        seconds, cpu, scenario = run_suggest(data, backbone, args.threads)
        print(f"{Path(data).name:<28} {Path(backbone).name:<24} {seconds:7.1f} {cpu:7.1f}  {scenario}")
    ridge, logistic = probe_ratio(digits, "resnet10t.digits04")
    print(f"probe on 300 x 512 features, 5-fold CV: ridge {ridge:.2f} s, logistic regression "
          f"{logistic:.2f} s, ratio {logistic / ridge:.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()
