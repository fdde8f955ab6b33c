"""Is ``lightning-recipes suggest`` right on real data? Every scenario's outcome on (data, backbone) pairs.

For each pair (:func:`pairs`: digits few-shot and full, DTD-10, SST-2 and TREC-6 at two sizes each), it

1. runs ``suggest`` (the default probe) on the pair's training data and records what it measured and chose;
2. runs ``suggest --pilot`` (the probe's choice and its runner-up, ``--pilot-budget``, default 50 steps)
   and records its pick;
3. runs the exact command ``suggest`` prints for every scenario with a shipped recipe of the family
   (fine-tune, add-layers, scratch, adapters; as-is where the class names match the backbone's labels),
   with the budget below, and records the test accuracy (``test/acc`` of the run summary, on the best
   checkpoint by the recipe's ``val/acc``), the wall time, the trainable parameters and the checkpoint size;
4. fits a frozen linear probe (logistic regression on standardised frozen features of every training
   example, the features ``suggest`` embeds) and scores it on the test split;
5. prints the table (pairs x scenarios, the probe's and the pilot's pick, their regret: the best measured
   test accuracy minus the pick's) and a grid search of the thresholds ``SIMILAR`` and ``LARGE_PER_CLASS``
   over these pairs: which values minimise the total regret of the rule.

The budget, the same for every scenario (the only changes to the printed commands, all in
:class:`OutcomeCLI`): ``trainer.max_steps`` capped at ``--max-steps`` (the recipe's own epochs otherwise);
no ``LRFinder`` (as ``--pilot``: its 100-step sweep would spend the budget); ``num_workers: 0`` (2 cores);
the run and logger folders in the work folder; for an image scratch recipe (ResNet-18 at 224 px),
``image_size`` set to the probed backbone's input size (32 px for ``resnet10t.digits04``: 224 px costs
seconds a step on a CPU). One seed: the recipes' own (``seed_everything: 42``); the subsets seed 0.

    python benchmarks/suggest_outcomes.py --out outcomes [--pairs sst2_300 trec6] [--max-steps 150]

Results go to ``OUT/outcomes.json`` (written after every run; a rerun skips what is there) and
``OUT/outcomes.md``. ``--smoke`` runs one image pair and one text pair on tiny stand-ins
(``benchmarks/_smoke.py``: timm ``test_resnet`` as ``resnet10t.digits04``, a 2-layer BERT as MiniLM)
with 3 steps a run and 2 a pilot: a check that the script runs (its figures mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import tempfile
import time
from pathlib import Path
from typing import Any

import _smoke
import numpy as np
from typing_extensions import override

from lightning_recipes.recipe_cli import LightningRecipesCLI

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LIGHTNING_RECIPES_SHARED", REPO.parent / "shared")).resolve()
MINILM = "models/all-MiniLM-L6-v2"
#: The scenarios trained for every pair (those with a shipped recipe for the family), then as-is.
TRAINED = ["fine-tune", "add-layers", "scratch", "adapters"]
#: The scenarios ``suggest``'s rule can pick between (besides as-is and distill).
RULE = ["fine-tune", "add-layers", "scratch"]
#: Within this many accuracy points of the best, a pick counts as right.
MARGIN = 0.02


class OutcomeCLI(LightningRecipesCLI):
    """``lightning run`` of a printed command with the table's budget (module docstring) and nothing else."""

    def __init__(self, *args: Any, folder: Path, max_steps: int, image_size: int | None, **kwargs: Any):
        self.folder, self.max_steps, self.image_size = folder, max_steps, image_size
        super().__init__(*args, **kwargs)

    @override
    def before_instantiate_classes(self) -> None:
        config = self.config
        trainer, data, model = config.trainer, config.data.init_args, config.model.init_args
        steps = trainer.get("max_steps") or -1
        trainer.max_steps = self.max_steps if steps < 0 else min(steps, self.max_steps)
        trainer.default_root_dir = str(self.folder)
        trainer.enable_progress_bar = False
        loggers = trainer.get("logger")
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            if getattr(logger, "init_args", None) is not None and "save_dir" in logger.init_args:
                logger.init_args.save_dir = str(self.folder)
        trainer.callbacks = [
            c for c in trainer.get("callbacks") or [] if not str(c.class_path).endswith("LRFinder")
        ]
        if "num_workers" in data:
            data.num_workers = 0
        if data.get("tokenizer_dir"):
            data.tokenizer_dir = str(self.folder / "tokenizer")
        image = str(config.model.class_path).endswith("ImageClassifier")
        if image and model.get("pretrained") is False and self.image_size:
            data.image_size = self.image_size
        super().before_instantiate_classes()


def run_scenario(
    inputs: Any, scenario: str, folder: Path, max_steps: int, image_size: int | None, seed: int | None = None
) -> dict:
    """Test accuracy, wall time, trainable parameters and checkpoint size of ``scenario``'s command."""
    from lightning_recipes.loggers.wandb import finish_runs
    from lightning_recipes.tune.trial import _quiet_seed

    recipe, command = inputs.command(scenario)
    started = time.perf_counter()
    with _quiet_seed():
        cli = OutcomeCLI(
            args=["--config", str(recipe.path), *shlex.split(command)[3:],
                  *([] if seed is None else [f"--seed_everything={seed}"])],  # the CLI seeds before the hook
            run=False, recipe_mode=True, folder=folder, max_steps=max_steps, image_size=image_size,
        )  # fmt: skip
    try:
        summary = cli.run_stages()
    finally:
        finish_runs(cli.trainer)
    ckpt = summary.get("checkpoint")
    return {
        "recipe": recipe.name,
        "command": command,
        "test_acc": summary["metrics"].get("test/acc"),
        "seconds": time.perf_counter() - started,
        "steps": int(cli.trainer.global_step),
        "trainable_params": sum(p.numel() for p in cli.model.parameters() if p.requires_grad),
        "checkpoint_mb": os.path.getsize(ckpt) / 2**20 if ckpt and os.path.exists(ckpt) else None,
    }


def frozen_probe(pair: dict, backbone: str) -> dict:
    """A logistic regression on the standardised frozen pretrained features of all training examples,
    scored on the test split (the features ``suggest`` embeds: pooled timm features, masked-mean tokens)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from lightning_recipes import _suggest_data as sd
    from lightning_recipes.suggest import MAX_IMAGE_SIZE

    started = time.perf_counter()
    if pair["family"] == "image":
        from lightning_recipes.data.image import ImageDataModule

        dm = ImageDataModule(root=pair["data"], val_fraction=0.0, seed=0, num_workers=0)
        classes, rows = dm.data_spec().label_names, dm._rows()  # noqa: SLF001 (as _suggest_data)
        sets = {}
        for split in ("train", "test"):
            items = [path for path, _ in rows[split]]
            targets = np.array([classes.index(labels[0]) for _, labels in rows[split]])
            sample = sd.Sample(classes, [], items, targets, {"datamodule": dm})
            sets[split] = (sd.image_features(sample, backbone, MAX_IMAGE_SIZE, 0).pretrained, targets)
    else:
        sets = {}
        train = sd.load_texts(pair["data"], pair.get("text_column"), pair["label_column"], 10**9, 0)
        test = sd.load_texts(pair["test_file"], pair.get("text_column"), pair["label_column"], 10**9, 0)
        for split, sample in (("train", train), ("test", test)):
            names = [sample.classes[t] for t in sample.targets]  # test ids by the training classes
            sample.targets = np.array([train.classes.index(n) for n in names])
            sets[split] = (sd.text_features(sample, backbone, 128, 0).pretrained, sample.targets)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
    probe.fit(*sets["train"])
    return {
        "recipe": "logistic regression on frozen features",
        "test_acc": float(probe.score(*sets["test"])),
        "seconds": time.perf_counter() - started,
        "trainable_params": int(sets["train"][0].shape[1] * len(np.unique(sets["train"][1]))),
        "checkpoint_mb": None,
    }


# -- the pairs --------------------------------------------------------------------------------------
def write_text(source: Path, out: Path, n: int, skip: int, seed: int, column: str = "label") -> Path:
    """``n`` class-balanced rows of the tsv ``source`` (seeded), after the first ``skip`` of its shuffle."""
    lines = source.read_text().splitlines(True)
    header, rows = lines[0], lines[1:]
    random.Random(seed).shuffle(rows)
    rows = rows[skip:]
    col = header.rstrip("\n").split("\t").index(column)
    by_label: dict[str, list[str]] = {}
    for row in rows:
        by_label.setdefault(row.rstrip("\n").split("\t")[col], []).append(row)
    per = n // len(by_label)
    picked = [row for label in sorted(by_label) for row in by_label[label][:per]]
    random.Random(seed).shuffle(picked)
    out.write_text(header + "".join(picked))
    return out


def write_csv(source: Path, out: Path, per_class: int, seed: int, column: str) -> Path:
    """``per_class`` rows of each class of the csv ``source`` (seeded; all of a rarer class)."""
    import csv

    with source.open(newline="") as f:
        header, *rows = list(csv.reader(f))
    random.Random(seed).shuffle(rows)
    col, taken, picked = header.index(column), {}, []
    for row in rows:
        if taken.get(row[col], 0) < per_class:
            taken[row[col]] = taken.get(row[col], 0) + 1
            picked.append(row)
    with out.open("w", newline="") as f:
        csv.writer(f).writerows([header, *picked])
    return out


def pairs(work: Path, shared: Path, smoke: bool) -> dict[str, dict]:
    """The (data, backbone) pairs, their data written under ``work`` (seeded)."""
    from lightning_recipes.data.digits import export_digits

    work.mkdir(parents=True, exist_ok=True)
    minilm = str(shared / MINILM)
    digits = {"family": "image", "backbone": "resnet10t.digits04"}
    sst2 = shared / "data" / "sst2" / "train.tsv"
    text = {"family": "text", "backbone": minilm, "label_column": "label", "text_column": "sentence"}
    nval = 32 if smoke else 500
    val = str(write_text(sst2, work / "sst2_val.tsv", nval, 0, 0))  # never trained on
    test = str(shared / "data" / "sst2" / ("dev.tsv" if not smoke else "dev.tsv"))
    out = {
        "digits5-9_n10": {**digits, "data": str(export_digits(work, [5, 6, 7, 8, 9], train_per_class=10))},
        "sst2_300": {
            **text, "data": str(write_text(sst2, work / "sst2_300.tsv", 32 if smoke else 300, nval, 0)),
            "val_file": val, "test_file": test,
        },
    }  # fmt: skip
    if smoke:
        return out
    out["digits5-9_full"] = {**digits, "data": str(export_digits(work, [5, 6, 7, 8, 9]))}
    out["dtd10"] = {**digits, "data": str(shared / "data" / "dtd10")}
    out["sst2_2000"] = {
        **text, "data": str(write_text(sst2, work / "sst2_2000.tsv", 2000, 500, 0)), "val_file": val,
        "test_file": test,
    }  # fmt: skip
    out["trec6"] = {
        "family": "text", "backbone": minilm, "data": str(shared / "data" / "trec6" / "train.csv"),
        "text_column": "text", "label_column": "coarse_label",
        "test_file": str(shared / "data" / "trec6" / "test.csv"),
    }  # fmt: skip
    trec, label = shared / "data" / "trec6" / "train.csv", "coarse_label"
    out["trec6_60"] = {**out["trec6"], "data": str(write_csv(trec, work / "trec6_60.csv", 60, 0, label))}
    return out


# -- one pair ---------------------------------------------------------------------------------------
def probe(pair: dict) -> tuple[dict, Any]:
    """``suggest`` (the probe) on the pair: what it measured and picked, and its result."""
    from lightning_recipes._suggest_margin import runner_up
    from lightning_recipes.suggest import suggest

    started = time.perf_counter()
    keys = ("family", "text_column", "label_column", "val_file", "test_file")
    result = suggest(pair["data"], pair["backbone"], **{k: pair[k] for k in keys if k in pair})
    m = result.measurement
    probe = {
        "choice": result.scenario,
        "similarity": m.similarity,
        "similarity_interval": m.similarity_interval,
        "probe_pretrained": m.probe_pretrained,
        "probe_random": m.probe_random,
        "median_per_class": m.median_per_class,
        "classes": m.classes,
        "as_is": m.as_is,
        "seconds": time.perf_counter() - started,
        "runner_up": runner_up(m)[0] if runner_up(m) else None,
    }
    return probe, result


def pilot(result: Any, pilot_steps: int) -> dict:
    """``suggest --pilot`` (the probe's choice and its runner-up, ``pilot_steps`` each): its pick."""
    from lightning_recipes import _suggest_pilot
    from lightning_recipes.suggest import pilot_scenarios

    started = time.perf_counter()
    scenarios = pilot_scenarios(result, None)
    lines, picked = _suggest_pilot.pilot(result.inputs, scenarios, _suggest_pilot.Budget(steps=pilot_steps))
    return {"choice": picked, "scenarios": scenarios, "report": lines[:-2],
            "seconds": time.perf_counter() - started, "budget_steps": pilot_steps}  # fmt: skip


def backbone_size(backbone: str, family: str) -> int | None:
    """The image backbone's input size (the scratch recipe's ``image_size`` in this table)."""
    if family != "image":
        return None
    from timm.data import resolve_data_config

    from lightning_recipes.modules.image import create_backbone

    return int(resolve_data_config({}, model=create_backbone(backbone, pretrained=False))["input_size"][-1])


# -- the table and the thresholds ---------------------------------------------------------------------
def rule(similarity: float, median: float, similar: float, large: float) -> str:
    """``decide`` with the thresholds as arguments (no as-is: no pair here has matching label names)."""
    if similarity >= similar:
        return "fine-tune"
    return "scratch" if median >= large else "add-layers"


def accuracies(entry: dict) -> dict[str, float]:
    return {s: r["test_acc"] for s, r in entry["scenarios"].items() if r.get("test_acc") is not None}


def regret(entry: dict, choice: str) -> float | None:
    acc = accuracies(entry)
    return None if choice not in acc else max(acc.values()) - acc[choice]


def thresholds(results: dict[str, dict]) -> list[str]:
    """Total regret of the rule over the pairs on a grid of ``SIMILAR`` x ``LARGE_PER_CLASS``."""
    from lightning_recipes._suggest_rules import LARGE_PER_CLASS, SIMILAR

    done = {k: e for k, e in results.items() if all(s in accuracies(e) for s in RULE) and "probe" in e}
    if not done:
        return ["(no pair has every rule scenario measured)"]
    sims = np.round(np.arange(-0.5, 1.001, 0.01), 2)
    larges = sorted(
        {1, 10, 30, 100, 300, 1000, 3000, 10000, *(e["probe"]["median_per_class"] for e in done.values())}
    )
    grid = np.array([[sum(regret(e, rule(e["probe"]["similarity"], e["probe"]["median_per_class"], s, lg))
                          for e in done.values()) for lg in larges] for s in sims])  # fmt: skip
    best = grid.min()
    at_current = sum(
        regret(e, rule(e["probe"]["similarity"], e["probe"]["median_per_class"], SIMILAR, LARGE_PER_CLASS))
        for e in done.values()
    )
    floor = sum(max(accuracies(e).values()) - max(accuracies(e)[r] for r in RULE) for e in done.values())
    lines = [f"pairs with fine-tune, add-layers and scratch measured: {len(done)} ({', '.join(done)})",
             f"lowest total regret over the grid: {best:.3f}; at the current SIMILAR={SIMILAR}, "
             f"LARGE_PER_CLASS={LARGE_PER_CLASS}: {at_current:.3f}; the floor (the best of the rule's "
             f"three scenarios on every pair; adapters, frozen probe never picked): {floor:.3f}"]  # fmt: skip

    def ranges(values: np.ndarray) -> str:
        if not len(values):
            return "none"
        runs, start = [], values[0]
        for a, b in zip(values, [*values[1:], None], strict=True):
            if b is None or b - a > 0.0101:
                runs.append(f"[{start:g}, {a:g}]")
                start = b
        return " and ".join(runs)

    li = larges.index(LARGE_PER_CLASS) if LARGE_PER_CLASS in larges else None
    si = int(np.argmin(np.abs(sims - SIMILAR)))
    if li is not None:
        ok = sims[np.isclose(grid[:, li], best)]
        lines.append(
            f"SIMILAR (grid step 0.01) minimising it at LARGE_PER_CLASS={LARGE_PER_CLASS}: {ranges(ok)}"
        )
    ok_l = [lg for j, lg in enumerate(larges) if np.isclose(grid[si, j], best)]
    lines.append(
        f"LARGE_PER_CLASS values minimising it at SIMILAR={SIMILAR} (grid {larges}): {ok_l or 'none'}"
    )
    sims_any = sims[np.isclose(grid, best).any(axis=1)]
    lines.append(f"SIMILAR values minimising it at some LARGE_PER_CLASS: {ranges(sims_any)}")
    per_pair = ", ".join(f"{k} {e['probe']['similarity']:+.2f}" for k, e in done.items())
    lines.append(f"the pairs' similarities: {per_pair}")
    return lines


def cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def table(results: dict[str, dict]) -> str:
    """The markdown tables: outcomes and picks, then cost."""
    head = ["pair", "backbone", "steps cap", "similarity", "median/class", *TRAINED, "as-is", "frozen probe",
            "best", "probe's pick", "regret (probe)", "pilot's pick", "regret (pilot)"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, e in results.items():
        acc = accuracies(e)
        best = max(acc, key=acc.get) if acc else None
        p, q = e.get("probe", {}), e.get("pilot", {})
        cap = e.get("budget", {}).get("max_steps", "n/a")
        row = [name, Path(e["backbone"]).name, str(cap), f"{p['similarity']:+.3f}" if p else "n/a",
               f"{p['median_per_class']:g}" if p else "n/a",
               *(cell(acc.get(s)) for s in [*TRAINED, "as-is", "frozen probe"]),
               f"{best} {acc[best]:.3f}" if best else "n/a",
               p.get("choice", "n/a"), cell(regret(e, p["choice"]) if p else None),
               q.get("choice", "n/a"), cell(regret(e, q["choice"]) if q else None)]  # fmt: skip
        lines.append("| " + " | ".join(row) + " |")
    cost = ["pair", "scenario", "recipe", "steps", "wall s", "trainable params", "checkpoint MB"]
    lines += ["", "| " + " | ".join(cost) + " |", "|" + " --- |" * len(cost)]
    for name, e in results.items():
        for s, r in e["scenarios"].items():
            if r.get("test_acc") is None:
                continue
            mb = r.get("checkpoint_mb")
            lines.append(f"| {name} | {s} | {r['recipe']} | {r.get('steps', 'n/a')} | {r['seconds']:.0f} | "
                         f"{r['trainable_params']:,} | {'n/a' if mb is None else f'{mb:.1f}'} |")  # fmt: skip
    return "\n".join(lines)


def hit_rates(results: dict[str, dict]) -> list[str]:
    """How often the probe and the pilot picked the best scenario, of all and of the rule's three."""
    out = []
    for who in ("probe", "pilot"):
        for among in (None, RULE):
            regrets = []
            for e in results.values():
                acc = accuracies(e)
                missing = among and any(s not in acc for s in among)
                if who not in e or e[who]["choice"] not in acc or missing:
                    continue
                best = max(acc[s] for s in among or acc)
                regrets.append(best - acc[e[who]["choice"]])
            if regrets:
                exact, near = sum(r <= 0 for r in regrets), sum(r <= MARGIN for r in regrets)
                scope = "of the rule's three (fine-tune, add-layers, scratch)" if among else "of all measured"
                out.append(
                    f"{who}, {scope}: the best on {exact} of {len(regrets)} pairs, within {MARGIN:.2f} "
                    f"on {near}; total regret {sum(regrets):.3f}, mean {np.mean(regrets):.3f}"
                )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="suggest_outcomes", help="results folder (JSON, markdown, runs)")
    parser.add_argument("--pairs", nargs="*", help="only these pairs (default: all)")
    parser.add_argument("--max-steps", type=int, default=150, help="cap on each run's optimizer steps")
    parser.add_argument(
        "--pilot-budget", type=int, default=50, help="steps of each pilot (suggest's default)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scenarios", nargs="*", help="only these scenarios (default: every shipped one)")
    parser.add_argument("--recipe-seed", type=int, help="seed_everything of every run (recipe's)")
    parser.add_argument("--smoke", action="store_true", help="tiny stand-ins, 3 steps: checks the script")
    args = parser.parse_args()
    import torch

    os.environ.setdefault("WANDB_MODE", "disabled")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        shared, out = SHARED, Path(args.out).resolve()
        if args.smoke:
            shared, out = _smoke.tiny_shared(Path(tmp) / "shared", MINILM, _smoke.SST2), Path(tmp) / "out"
            _smoke.tiny_zoo(Path(tmp), "resnet10t.digits04")
            args.max_steps, args.pilot_budget = 3, 2
        out.mkdir(parents=True, exist_ok=True)
        store = out / "outcomes.json"
        results: dict[str, dict] = json.loads(store.read_text()) if store.exists() else {}
        every = pairs(out / "data", shared, args.smoke)
        for name in args.pairs if args.pairs is not None else list(every):
            pair = every[name]
            entry = results.setdefault(name, {**pair, "scenarios": {}})
            print(f"== {name}", flush=True)
            entry["probe"], result = probe(pair)
            inputs = result.inputs
            size = backbone_size(pair["backbone"], pair["family"])
            scenarios = [
                *TRAINED,
                *(["as-is"] if inputs.command("as-is") and entry["probe"]["as_is"] else []),
            ]
            for scenario in scenarios:
                skip = args.scenarios is not None and scenario not in args.scenarios
                if skip or scenario in entry["scenarios"] or inputs.command(scenario) is None:
                    continue
                print(f"   {scenario}", flush=True)
                try:
                    entry["scenarios"][scenario] = run_scenario(
                        inputs, scenario, out / "runs" / name / scenario, args.max_steps, size,
                        args.recipe_seed,
                    )  # fmt: skip
                except Exception as error:  # recorded, not fatal: the table says which run failed
                    entry["scenarios"][scenario] = {"error": repr(error)[:500]}
                store.write_text(json.dumps(results, indent=1, default=str))
            if "frozen probe" not in entry["scenarios"]:
                entry["scenarios"]["frozen probe"] = frozen_probe(pair, pair["backbone"])
            if "pilot" not in entry and args.pilot_budget > 0:
                entry["pilot"] = pilot(result, args.pilot_budget)
            entry["budget"] = {"max_steps": args.max_steps, "pilot_steps": args.pilot_budget}
            store.write_text(json.dumps(results, indent=1, default=str))
        text = "\n".join([table(results), "", *hit_rates(results), "", *thresholds(results)])
        (out / "outcomes.md").write_text(text + "\n")
        budget = f"this call: steps cap {args.max_steps}, pilot {args.pilot_budget} steps"
        print(f"\n{budget}, threads {args.threads}\n")
        print(text)


if __name__ == "__main__":
    main()
