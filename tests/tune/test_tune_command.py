"""``lightning-recipes tune``: trials in their own run directories, a study that resumes, pruning, failed
trials, Ctrl-C, best.yaml that ``lightning run`` runs unchanged, W&B runs grouped by study, bad input."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import optuna
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "loggers"))
from offline_wandb_runs import _finish_wandb, offline_runs, read_records  # noqa: E402, F401

from lightning_recipes.cli import main  # noqa: E402
from lightning_recipes.tune import NotOneDevice, parse_dimension, plan_study, tune  # noqa: E402
from lightning_recipes.tune.pruning import TrialPruning  # noqa: E402

TINY = """\
# A tiny recipe: a 2-layer classifier on 45 points, CSV logs, best checkpoint by val/acc.
seed_everything: 0
stages: [fit, test]
trainer:
  accelerator: cpu
  devices: 1
  max_epochs: 2
  log_every_n_steps: 1
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: {root}
  logger:
    class_path: {logger}
    init_args: {{save_dir: {root}/logs}}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{monitor: val/acc, mode: max, save_last: true}}
model:
  class_path: offline_wandb_runs.Tiny
data:
  class_path: offline_wandb_runs.TinyData
"""


LR = "--space=model.init_args.lr=uniform:0.01:0.1"


def tiny(tmp_path: Path, logger: str = "lightning.pytorch.loggers.CSVLogger") -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY.format(root=tmp_path / "out", logger=logger))
    return path


def stored(study_dir: Path, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{study_dir / 'study.db'}")


def states(study: optuna.Study) -> list[str]:
    return [t.state.name for t in study.trials]


def check_trials_resume_and_best_yaml(recipe: Path, root: Path, extra: list[str], capsys) -> None:
    """Two trials, each fitted (fit only) in its own folder; the same command again adds a third to the same
    study; best.yaml holds the best trial's value and runs unchanged with the recipe's own stages."""
    args = ["tune", str(recipe), "--space=model.init_args.lr=loguniform:1e-3:1e-1", "--trials=2", *extra]
    assert main(args) == 0
    study_dir = root / "tune" / recipe.stem
    study = stored(study_dir, recipe.stem)
    assert states(study) == ["COMPLETE", "COMPLETE"]
    configs = [yaml.safe_load(Path(t.user_attrs["run_dir"], "config.yaml").read_text()) for t in study.trials]
    for trial, config in zip(study.trials, configs, strict=True):
        assert Path(trial.user_attrs["run_dir"]).parent.parent == study_dir / f"trial_{trial.number}"
        assert config["model"]["init_args"]["lr"] == trial.params["model.init_args.lr"]
        assert config["stages"] == ["fit"]  # the search never tests
        assert list(Path(trial.user_attrs["run_dir"]).glob("checkpoints/*.ckpt"))
    assert configs[0]["model"]["init_args"]["lr"] != configs[1]["model"]["init_args"]["lr"]
    out = capsys.readouterr().out
    assert f"Best recipe: {study_dir / 'best.yaml'}" in out and "2 trials (2 complete)" in out

    # The same command again: the same study (its storage), one more trial, a new folder.
    args[3] = "--trials=1"
    assert main(args) == 0
    study = stored(study_dir, recipe.stem)
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert sorted(p.name for p in study_dir.glob("trial_*")) == ["trial_0", "trial_1", "trial_2"]
    assert len({t.params["model.init_args.lr"] for t in study.trials}) == 3  # a resumed sampler draws anew

    best = study_dir / "best.yaml"
    text = best.read_text()
    assert text.startswith(recipe.read_text().splitlines()[0] + f"\n# Tuned: study {recipe.stem}, trial ")
    resolved = yaml.safe_load(text)
    assert resolved["model"]["init_args"]["lr"] == study.best_params["model.init_args.lr"]
    assert resolved["stages"] == ["fit", "test"] and resolved["trainer"]["default_root_dir"] == str(root)
    capsys.readouterr()
    assert main(["run", str(best)]) == 0  # unchanged: the recipe's own stages, folders and options
    out = capsys.readouterr().out
    assert "test/acc=" in out and f"Run directory:   {root}" in out and "/tune/" not in out


def test_trials_own_their_run_directories_resume_and_best_yaml_runs_unchanged(tmp_path, capsys):
    check_trials_resume_and_best_yaml(tiny(tmp_path), tmp_path / "out", [], capsys)


@pytest.mark.slow
def test_the_same_with_an_image_recipe(tiny_recipe, tmp_path, capsys):
    """A tiny timm ResNet on an image folder (the conftest's recipe): about 45 s on 2 CPU cores."""
    extra = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=1"]
    check_trials_resume_and_best_yaml(tiny_recipe, tmp_path / "run", extra, capsys)


def test_a_trainer_on_several_devices_stops_the_study(tmp_path):
    """``devices: auto`` on a machine with several GPUs passes the checks before the study (it may be
    one device elsewhere); the first trial's Trainer is refused and the study stops there."""
    plan = plan_study(tiny(tmp_path), [parse_dimension("model.init_args.lr=uniform:0.01:0.1")])
    plan = dataclasses.replace(plan, overrides=("--trainer.devices=2",))
    with pytest.raises(NotOneDevice, match="this recipe's Trainer has 2 processes: pass --trainer.devices=1"):
        tune(plan, trials=3)
    assert states(stored(plan.study_dir)) == ["FAIL"]


def test_a_trial_below_the_median_is_pruned(tmp_path):
    """Five finished trials reached val/acc 1.0 at each validation: the next one, lower, stops after one."""
    recipe = tiny(tmp_path)
    study_dir = tmp_path / "out" / "tune" / "tiny"
    study_dir.mkdir(parents=True)
    study = optuna.create_study(
        study_name="tiny", storage=f"sqlite:///{study_dir / 'study.db'}", direction="maximize"
    )
    for _ in range(5):
        study.add_trial(optuna.trial.create_trial(value=1.0, intermediate_values={0: 1.0, 1: 1.0, 2: 1.0}))
    args = ["tune", str(recipe), "--space", "model.init_args.lr=uniform:1e-4:2e-4", "--trials", "1"]
    assert main([*args, "--trainer.max_epochs=3"]) == 0  # the study has completed trials: best.yaml exists
    trial = stored(study_dir).trials[-1]
    assert trial.state.name == "PRUNED" and list(trial.intermediate_values) == [0]
    metrics = Path(trial.user_attrs["run_dir"], "metrics.csv").read_text().splitlines()
    epochs = {row.split(",")[metrics[0].split(",").index("epoch")] for row in metrics[1:]}
    assert epochs == {"0"}  # the fit stopped after its first epoch, with its files complete
    assert list(Path(trial.user_attrs["run_dir"]).glob("checkpoints/last.ckpt"))


def test_a_failing_trial_is_recorded_and_the_study_goes_on(tmp_path, capsys):
    """num_classes=2 against three classes fails in the handshake; the next trial completes."""
    recipe = tiny(tmp_path)
    study_dir = tmp_path / "out" / "tune" / "tiny"
    study_dir.mkdir(parents=True)
    study = optuna.create_study(
        study_name="tiny", storage=f"sqlite:///{study_dir / 'study.db'}", direction="maximize"
    )
    study.enqueue_trial({"model.init_args.num_classes": 2})
    study.enqueue_trial({"model.init_args.num_classes": 3})
    assert main(["tune", str(recipe), "--space=model.init_args.num_classes=choice:2,3", "--trials=2"]) == 0
    assert states(stored(study_dir)) == ["FAIL", "COMPLETE"]
    assert "2 trials (1 complete, 1 fail)" in capsys.readouterr().out


def test_ctrl_c_stops_the_study_and_the_same_command_goes_on(tmp_path, monkeypatch, capsys):
    recipe = tiny(tmp_path)
    args = ["tune", str(recipe), "--space=model.init_args.lr=uniform:0.01:0.1", "--trials=3"]

    def ctrl_c(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(TrialPruning, "on_train_batch_start", ctrl_c, raising=False)
    assert main(args) == 130
    assert "Stopped by SIGINT; the study keeps its trials" in capsys.readouterr().err
    study_dir = tmp_path / "out" / "tune" / "tiny"
    assert states(stored(study_dir)) == ["FAIL"]  # recorded, not left running
    monkeypatch.undo()
    assert main([*args[:3], "--trials=1"]) == 0
    assert states(stored(study_dir)) == ["FAIL", "COMPLETE"]


def test_wandb_runs_are_grouped_by_study(tmp_path):
    recipe = tiny(tmp_path, logger="lightning_recipes.loggers.WandbLogger")
    assert main(["tune", str(recipe), "--space=model.init_args.lr=uniform:0.01:0.1", "--trials=2"]) == 0
    runs = [
        next(r.run for r in read_records(next(d.glob("run-*.wandb"))) if r.WhichOneof("record_type") == "run")
        for d in offline_runs(tmp_path / "out" / "tune" / "tiny" / "trial_0")
        + offline_runs(tmp_path / "out" / "tune" / "tiny" / "trial_1")
    ]
    assert [(r.run_group, r.display_name) for r in runs] == [
        ("tiny", "tiny-trial-0"),
        ("tiny", "tiny-trial-1"),
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--space=model.init_args.lrr=uniform:0:1"],
            "model.init_args.lrr: the recipe has no such option; did",
        ),
        (["--space=model.init_args.lr=loguniform:0:1"], "needs LOW > 0 (a log scale)"),
        (
            ["--space=data.init_args.batch_size=uniform:2:8"],
            "data.init_args.batch_size=2.0 (uniform:2.0:8.0)",
        ),
        ([], "nothing to search: give --space KEY=DIST"),
        ([LR, "--trainer.devices=2"], "tune runs each trial in one process on one device"),
        ([LR, "--trainer.devices=0,1"], "tune runs each trial in one process on one device"),
        ([LR, "--stages=[test]"], "the recipe needs a fit stage"),
        (
            [LR, "--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.dirpath=ckpts"],
            "ModelCheckpoint sets dirpath=ckpts: every trial would write there",
        ),
    ],
)
def test_bad_input_is_refused_before_any_trial(tmp_path, capsys, args, message):
    assert main(["tune", str(tiny(tmp_path)), *args]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 2
    assert not (tmp_path / "out").exists()  # nothing trained, no study made


def test_a_recipe_without_a_monitor_and_a_study_made_for_another_space(tmp_path, capsys):
    recipe = tiny(tmp_path)
    recipe.write_text(recipe.read_text().replace("monitor: val/acc, mode: max, ", ""))
    assert main(["tune", str(recipe), "--space=model.init_args.lr=uniform:0:1"]) == 1
    assert "the recipe monitors no metric" in capsys.readouterr().err
    recipe = tiny(tmp_path)
    study_dir = tmp_path / "out" / "tune" / "tiny"
    study_dir.mkdir(parents=True)
    study = optuna.create_study(study_name="tiny", storage=f"sqlite:///{study_dir / 'study.db'}")
    study.set_user_attr("space", {"model.init_args.lr": "uniform:0.5:1.0"})
    assert main(["tune", str(recipe), "--space=model.init_args.lr=uniform:0:1", "--trials=1"]) == 1
    err = capsys.readouterr().err
    assert (
        "was made with space={'model.init_args.lr': 'uniform:0.5:1.0'}" in err
        and "another --study-name" in err
    )
    assert not list(study_dir.glob("trial_*"))
