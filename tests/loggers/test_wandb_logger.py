"""WandbLogger: offline fallback, what an offline run records (read back from its files), resume by run id.

Through the CLI (``lightning run``) and under DDP: test_wandb_logger_cli.py.
"""

from __future__ import annotations

import pytest
import torch
import wandb
from offline_wandb_runs import (
    Tiny,
    TinyData,
    _finish_wandb,  # noqa: F401  (autouse: each test's wandb run finished)
    make_trainer,
    offline_runs,
    read_offline_run,
)

from lightning_recipes import connect
from lightning_recipes.loggers import WandbLogger, apply_resume_id, run_id_from_checkpoint


@pytest.fixture
def wandb_env(monkeypatch):
    """For a test that changes wandb's environment: wandb reads it once per process (``wandb.setup``), so
    its settings are torn down before the test and after it (``wandb.teardown``, both public)."""
    import wandb

    wandb.teardown()
    yield monkeypatch
    wandb.finish()
    wandb.teardown()


@pytest.fixture
def no_credentials(wandb_env, tmp_path):
    wandb_env.delenv("WANDB_API_KEY", raising=False)
    wandb_env.delenv("WANDB_IDENTITY_TOKEN_FILE", raising=False)
    wandb_env.delenv("WANDB_MODE", raising=False)
    wandb_env.setenv("NETRC", str(tmp_path / "no-netrc"))
    wandb_env.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))  # no settings file with a key


# ---- tests ---------------------------------------------------------------------------------------


def test_offline_fallback_without_credentials(no_credentials, tmp_path, capsys):
    logger = WandbLogger(project="demo", save_dir=str(tmp_path))
    run = logger.experiment
    assert logger.offline and "no W&B credentials" in logger.offline_reason
    (run_dir,) = offline_runs(tmp_path)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("wandb: no W&B")]
    assert lines == [
        f"wandb: {logger.offline_reason}: run {run.id} is recorded offline in {run_dir}; "
        f"upload it with `wandb sync {run_dir}`"
    ]


def test_offline_fallback_when_server_unreachable(no_credentials, wandb_env, tmp_path, capsys):
    netrc = tmp_path / "netrc"  # what `wandb login` writes (the machine is the server's host:port)
    netrc.write_text("machine 127.0.0.1:9 login user password " + "x" * 40 + "\n")
    netrc.chmod(0o600)
    wandb_env.setenv("NETRC", str(netrc))
    wandb_env.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # discard port: refused at once
    logger = WandbLogger(project="demo", save_dir=str(tmp_path), init_timeout=1)
    run = logger.experiment
    assert run.id and logger.offline
    assert logger.offline_reason.startswith("wandb.init could not reach the W&B server within 1 s (")
    assert "127.0.0.1:9" in logger.offline_reason  # wandb's own error: what it tried
    (run_dir,) = offline_runs(tmp_path)
    assert f"upload it with `wandb sync {run_dir}`" in capsys.readouterr().err


def test_offline_run_records_config_history_curves_and_checkpoints(tmp_path, monkeypatch):
    added = []
    add_file = wandb.Artifact.add_file
    monkeypatch.setattr(
        wandb.Artifact, "add_file", lambda self, *a, **kw: added.append(kw) or add_file(self, *a, **kw)
    )
    logger = WandbLogger(
        project="recipes",
        name="tiny-run",
        tags=["tiny", "test"],
        save_dir=str(tmp_path),
        log_model=True,
        model_ttl_days=7,
    )
    trainer = make_trainer(tmp_path, logger)
    model, data = Tiny(), TinyData()
    connect(model, data)
    trainer.fit(model, data)
    run_id = logger.experiment.id
    logger.experiment.finish()

    (run_dir,) = offline_runs(tmp_path)  # one run
    assert (tmp_path / "recipes" / run_id / "curves" / "val_epoch001" / "roc.png").is_file()
    run = read_offline_run(run_dir)
    assert (run["id"], run["project"], run["name"], run["tags"]) == (
        run_id,
        "recipes",
        "tiny-run",
        ["tiny", "test"],
    )
    assert run["config"]["lr"] == 0.05 and run["config"]["num_classes"] == 3  # module hparams
    steps = [row for row in run["history"] if "val/acc" in row]
    assert len(steps) == 2 and all("val/auroc" in row and "val/ap" in row for row in steps)
    curve_steps = [
        row["trainer/global_step"] for row in run["history"] if any(k.startswith("val/roc") for k in row)
    ]
    assert curve_steps == [row["trainer/global_step"] for row in steps]  # same x-axis as val/acc
    assert trainer.callback_metrics["val/auroc"].item() == pytest.approx(steps[-1]["val/auroc"])

    roc_tables = [t for name, t in run["tables"].items() if name.startswith("val/roc_curve")]
    assert len(roc_tables) == 2  # one per epoch
    table = roc_tables[0]
    assert table["columns"] == ["class", "fpr", "tpr", "threshold"]
    assert {row[0] for row in table["data"]} == {"red", "green", "blue", "micro"}  # classes kept
    assert len(table["data"]) <= 40  # downsampled
    metrics_table = next(t for name, t in run["tables"].items() if name.startswith("val/class_metrics"))
    assert [row[0] for row in metrics_table["data"]] == ["red", "green", "blue", "macro avg", "micro avg"]

    models = [a for a in run["artifacts"] if a["type"] == "model"]
    assert 1 <= len(models) <= 2  # bounded: best and last
    assert {"best", "last", "latest"} <= {alias for a in models for alias in a["aliases"]}
    assert all(a["ttl"] == 7 * 24 * 3600 for a in models)
    assert run_id_from_checkpoint(tmp_path / "ckpt" / "last.ckpt") == run_id
    # wandb's copies of the uploaded checkpoints stay with the run, not in ~/.local/share/wandb
    staged = list((tmp_path / "wandb" / "artifacts" / "staging").iterdir())
    assert sum(f.stat().st_size for f in staged) >= (tmp_path / "ckpt" / "last.ckpt").stat().st_size
    # ... and no second copy goes into wandb's cache (~/.cache/wandb/artifacts) when they upload
    checkpoints = [kw for kw in added if kw.get("name") == "model.ckpt"]
    assert checkpoints and all(kw.get("skip_cache") is True for kw in checkpoints)


def test_resume_continues_the_run(tmp_path, capsys):
    logger = WandbLogger(project="recipes", save_dir=str(tmp_path))
    make_trainer(tmp_path, logger, max_epochs=1).fit(Tiny(), TinyData())
    first_id = logger.experiment.id
    logger.experiment.finish()
    last = tmp_path / "ckpt" / "last.ckpt"
    assert run_id_from_checkpoint(last) == first_id

    # what the CLI does with `--ckpt_path`: the parsed logger config gets the stored id
    config = {"class_path": "lightning_recipes.loggers.WandbLogger", "init_args": {"project": "recipes"}}
    assert apply_resume_id(config, last) == first_id
    resumed = WandbLogger(**config["init_args"], save_dir=str(tmp_path))
    make_trainer(tmp_path, resumed, max_epochs=2).fit(Tiny(), TinyData(), ckpt_path=str(last))
    assert resumed.experiment.id == first_id
    resumed.experiment.finish()
    runs = [read_offline_run(d) for d in offline_runs(tmp_path)]
    assert [r["id"] for r in runs] == [first_id, first_id]
    # the resumed run's hint syncs both offline folders of the run, oldest first
    hint = capsys.readouterr().err.strip().splitlines()[-1]
    assert hint.endswith(f"`wandb sync {' '.join(str(d) for d in sorted(offline_runs(tmp_path)))}`"), hint
    assert run_id_from_checkpoint(last) == first_id

    explicit = {"class_path": "WandbLogger", "init_args": {"id": "mine"}}
    assert apply_resume_id(explicit, last) is None and explicit["init_args"]["id"] == "mine"
    assert apply_resume_id(None, last) is None and apply_resume_id(config, tmp_path / "missing.ckpt") is None


def test_binary_curves_to_wandb(tmp_path):
    from lightning_recipes.callbacks.curve_logger import CurveMetrics, log_to_wandb

    metrics = CurveMetrics("multiclass", 2, thresholds=101, class_names=["ham", "spam"])
    p = torch.linspace(0, 1, 30)
    metrics.update(torch.stack([1 - p, p], 1), (p > 0.4).long())
    logger = WandbLogger(project="binary", save_dir=str(tmp_path))
    log_to_wandb(logger, metrics.compute(), "test", step=5, max_points=10)
    logger.experiment.finish()
    run = read_offline_run(offline_runs(tmp_path)[0])
    roc = next(t for name, t in run["tables"].items() if name.startswith("test/roc_curve"))
    per_class = [row[0] for row in roc["data"]]
    assert sorted(set(per_class)) == ["ham", "spam"]  # each class has its own curve, also for binary
    assert per_class.count("spam") == per_class.count("ham") == 5  # max_points=10 shared by the curves
    spam = [row for row in roc["data"] if row[0] == "spam"]
    assert spam[0][1:3] == [0.0, 0.0] and spam[0][3] is None  # the inf threshold
    table = next(t for name, t in run["tables"].items() if name.startswith("test/class_metrics"))
    rows = {row[0]: dict(zip(table["columns"], row, strict=True)) for row in table["data"]}
    assert rows["spam"]["auroc"] == 1.0 and rows["ham"]["auroc"] == pytest.approx(1.0)  # no blank for class 0
    assert rows["macro avg"]["support"] == 30
    assert any(row.get("trainer/global_step") == 5 for row in run["history"])


def test_arguments():
    with pytest.raises(ValueError, match="model_ttl_days"):
        WandbLogger(model_ttl_days=0)
    with pytest.raises(ValueError, match="init_timeout must be > 0"):
        WandbLogger(init_timeout=0)
    logger = WandbLogger(project="p", group="g", entity="e", offline=True)
    assert logger.offline and logger._wandb_init["group"] == "g" and logger._wandb_init["entity"] == "e"


def test_mistakes_report_to_wandb(tmp_path):
    from PIL import Image

    from lightning_recipes.callbacks.curve_logger import CurveMetrics, log_to_wandb
    from lightning_recipes.callbacks.curve_logger.mistakes import Mistakes, MistakesReport, most_confused

    files = [str(tmp_path / f"{i}.png") for i in range(3)]
    for i, file in enumerate(files):
        Image.new("RGB", (8, 8), (80 * i, 0, 0)).save(file)
    probs, target = torch.tensor([[0.2, 0.8], [0.9, 0.1], [0.4, 0.6]]), torch.tensor([0, 1, 1])
    metrics = CurveMetrics("multiclass", 2, thresholds=11, class_names=["ham", "spam"])
    metrics.update(probs, target)
    results = metrics.compute()
    mistakes = Mistakes(5)
    mistakes.update(probs, target, {"path": files})
    pairs = most_confused(results.confusion, results.class_names, 5)
    logger = WandbLogger(project="mistakes", save_dir=str(tmp_path))
    log_to_wandb(logger, results, "val", 3, 10, MistakesReport(results.class_names, mistakes.gather(), pairs))
    logger.experiment.finish()
    run = read_offline_run(offline_runs(tmp_path)[0])
    table = next(t for name, t in run["tables"].items() if name.startswith("val/mistakes"))
    assert table["columns"] == [
        "image",
        "rank",
        "path",
        "true_label",
        "pred_label",
        "confidence",
        "true_prob",
    ]
    assert [row[2:5] for row in table["data"]] == [[files[1], "spam", "ham"], [files[0], "ham", "spam"]]
    assert any(a["type"] == "run_table" and "mistakes" in a["name"] for a in run["artifacts"])  # the images
    confused = next(t for name, t in run["tables"].items() if name.startswith("val/most_confused"))
    assert confused["data"] == [["ham", "spam", 1, 1.0], ["spam", "ham", 1, 0.5]]


def test_offline_folders_of_a_run_in_start_order(tmp_path):
    from lightning_recipes.loggers.wandb import offline_folders

    names = [
        "offline-run-20260101_120000-abc",
        "offline-run-20260101_120000-abc-2",
        "offline-run-20260101_120000-abc-10",
        "offline-run-20260101_130000-abc",
        "offline-run-20260101_110000-other",
        "offline-run-20260101_110000-abcd",
    ]
    for name in names:
        (tmp_path / name).mkdir()
    found = [p.name for p in offline_folders(tmp_path / names[0], "abc")]
    assert found == [names[0], names[1], names[2], names[3]]  # -2 before -10; other ids left out
    assert offline_folders(tmp_path / "offline-run-x-zzz", "zzz") == [tmp_path / "offline-run-x-zzz"]
