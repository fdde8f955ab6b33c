"""One recipe per family on 2 CPU processes (slow): `lightning run` (Lightning's launcher) and torchrun.

Each run must print its summary once (rank 0), write one run directory and its checkpoints once, show
one progress line per epoch, and count each validation example once: the validation metrics of the
best checkpoint on 2 processes equal those on 1 (the validation sets have an odd size, so one rank
gets a padding sample from ``DistributedSampler`` that must not be counted). W&B sees one run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_lm_recipes import (
    text_file,  # noqa: F401
    tiny_pretrained,  # noqa: F401  (fixtures)
)
from test_text_recipes import overrides as text_overrides
from test_text_recipes import tiny_bert_and_tsv  # noqa: F401

from lightning_recipes.cli import main

REPO = Path(__file__).resolve().parents[2]
LIGHTNING = str(Path(sys.executable).with_name("lightning"))
TWO = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.num_nodes=1"]
# the one-process reference validation of the 2-process run's checkpoint: no logger, so it adds no run of its
# own beside the one under test (the recipes' loggers run as shipped in tests/recipes/test_shipped_recipes.py)
ONE = [
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.strategy=auto",
    "--trainer.logger=false",
]
FAST = ["--trainer.limit_train_batches=3", "--trainer.max_epochs=2", "--stages=[fit, validate]"]
NOISE = ("💡 Tip", "LeafSpec", "module(s) in eval mode")

pytestmark = pytest.mark.slow


def launch(command: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        command,
        capture_output=True,
        text=True,
        cwd=REPO,  # recipes name paths relative to the repository root
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def summary(out: str) -> dict[str, str]:
    """The summary lines (``Run directory: ...``); fails unless the summary is printed exactly once."""
    assert out.count("Run directory:") == 1 and out.count("Final metrics:") == 1, out[-3000:]
    lines = [line for line in out.splitlines() if re.match(r"(Run directory|Best checkpoint|Last check"
                                                            r"point|Final metrics):", line)]  # fmt: skip
    return {key: value.strip() for key, value in (line.split(":", 1) for line in lines)}


def metrics(line: str) -> dict[str, float]:
    return {k: float(v) for k, v in (item.split("=") for item in line.split(", "))}


def check_once(proc: subprocess.CompletedProcess, epochs: int = 2) -> dict[str, str]:
    """Summary, run directory, checkpoints and progress lines once; no dependency noise on stderr."""
    printed = summary(proc.stdout)
    run_dir = Path(printed["Run directory"])
    assert [p.name for p in run_dir.parent.iterdir() if p.name.startswith("version_")] == [run_dir.name]
    best, last = Path(printed["Best checkpoint"]), Path(printed["Last checkpoint"])
    assert sorted(p.name for p in best.parent.iterdir()) == sorted({best.name, last.name})
    assert len(re.findall(r"^fit: \d+ epochs of ", proc.stdout, re.M)) == 1, (
        proc.stdout
    )  # ProgressLog's start
    for epoch in range(1, epochs + 1):  # ProgressLog (stdout is a pipe): one line per epoch, rank 0 only
        assert len(re.findall(rf"^epoch {epoch}/{epochs} step \d+/\d+ ", proc.stdout, re.M)) == 1, proc.stdout
    for noise in NOISE:
        assert noise not in proc.stderr, proc.stderr[-3000:]
    return printed


def validate_on_one_process(recipe: str, args: list[str], best: str, capsys) -> dict[str, float]:
    """The best checkpoint's validation metrics on one process (in this one, no logger)."""
    capsys.readouterr()
    assert main(["run", recipe, *ONE, *args, "--stages=[validate]", f"--ckpt_path={best}"]) == 0
    return metrics(summary(capsys.readouterr().out)["Final metrics"])


def assert_same_validation(two: dict[str, float], one: dict[str, float]) -> None:
    keys = [k for k in two if k.startswith("val/")]
    assert keys and {k: one[k] for k in keys} == pytest.approx({k: two[k] for k in keys}, rel=1e-4, abs=1e-5)


def test_image_recipe_with_freezing_lr_finder_and_wandb_under_lightning_run(tmp_path, image_folder, capsys):
    recipe = yaml.safe_load((REPO / "recipes/image/freeze_then_unfreeze_resnet.yaml").read_text())
    for callback in recipe["trainer"]["callbacks"]:
        name = callback["class_path"].rsplit(".", 1)[-1]
        if name == "FreezeUnfreeze":
            callback["init_args"]["unfreeze_at_epoch"] = 1  # re-wraps DDP mid-fit on both ranks
        elif name == "LRFinder":
            callback["init_args"].update(num_training_steps=8, skip_begin=2, milestones=[1])
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    root = image_folder(splits=("train", "val", "test"), per_class=3)  # 9 validation images: 5 + 4 (+1 pad)
    data = [
        f"--data.init_args.root={root}",
        "--data.init_args.image_size=32",
        "--data.init_args.batch_size=3",  # 5 images per rank: batches of 3 and 2 (BatchNorm needs 2)
        "--data.init_args.num_workers=0",
        "--model.init_args.model_name_or_path=test_resnet",
        "--model.init_args.pretrained=false",
        "--model.init_args.num_classes=3",
    ]
    wandb = [
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        "--trainer.logger.init_args.log_model=false",
    ]
    proc = launch([LIGHTNING, "run", str(path), *TWO, *FAST, *wandb, *data], tmp_path)
    printed = check_once(proc)
    assert len(list((tmp_path / "runs" / "wandb").glob("offline-run-*"))) == 1  # W&B sees one run

    one = validate_on_one_process(
        str(path), [*data, "--trainer.logger=false"], printed["Best checkpoint"], capsys
    )
    assert_same_validation(metrics(printed["Final metrics"]), one)


def test_text_recipe_under_lightning_run(tmp_path, tiny_bert_and_tsv, capsys) -> None:  # noqa: F811
    model_dir, data_dir = tiny_bert_and_tsv
    rows = [
        "good film\t1",
        "bad movie\t0",
        "great fun\t1",
        "the plot was dull\t0",
        "was good\t1",
        "dull\t0",
        "fun\t1",
    ]
    (data_dir / "dev.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")  # 7: 4 + 3 (+1 pad)
    recipe = str(REPO / "recipes/text/sst2_minilm_local.yaml")
    data = [*text_overrides(model_dir, data_dir), "--data.init_args.eval_batch_size=2"]
    # 32-true: the metrics of 2 processes are compared with 1 process's to float precision (the recipe as
    # shipped, bf16-mixed included, runs in tests/recipes/test_shipped_recipes.py)
    proc = launch([LIGHTNING, "run", recipe, *TWO, *FAST, "--trainer.precision=32-true", *data], tmp_path)
    printed = check_once(proc)
    one = validate_on_one_process(recipe, data, printed["Best checkpoint"], capsys)
    assert_same_validation(metrics(printed["Final metrics"]), one)


def lm_overrides(tmp_path: Path, text_file: Path, tiny_pretrained: Path) -> list[str]:  # noqa: F811
    """An LM recipe on the tiny GPT-2 and corpus: 2 sequences of 32 tokens per batch."""
    return [
        f"--model.init_args.model_name_or_path={tiny_pretrained}",
        f"--data.init_args.train_file={text_file.parent / '*.txt'}",
        "--data.init_args.block_size=32",
        "--data.init_args.batch_size=2",
        "--data.init_args.num_workers=0",
        "--data.init_args.val_fraction=0.1",
        f"--data.init_args.cache_dir={tmp_path / 'cache'}",
    ]


def test_lm_recipe_under_torchrun(tmp_path, text_file, tiny_pretrained, capsys) -> None:  # noqa: F811
    """``torchrun --nproc_per_node=2 $(which lightning) run RECIPE`` (Lightning's TorchElasticEnvironment)."""
    recipe = str(REPO / "recipes/lm/gpt2_finetune.yaml")
    data = [
        *lm_overrides(tmp_path, text_file, tiny_pretrained),
        f"--trainer.default_root_dir={tmp_path / 'run'}",
    ]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = launch([*torchrun, LIGHTNING, "run", recipe, *TWO, *FAST, *data], tmp_path)
    printed = check_once(proc)
    # the recipe's GlobalBatch(size=32) keeps its global batch on 2 processes of 2 sequences each
    line = "GlobalBatch: 32 samples per optimizer step = batch_size 2 x 2 device(s) x 8 accumulated batch(es)"
    assert (proc.stdout + proc.stderr).count(line) == 1, proc.stderr[-3000:]
    one = validate_on_one_process(recipe, data, printed["Best checkpoint"], capsys)
    assert_same_validation(metrics(printed["Final metrics"]), one)
