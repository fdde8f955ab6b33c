"""``lightning-recipes predict --config RUN/config.yaml --model EXPORT_DIR`` (export/_predict.py):
predicting from an exported hf or timm folder writes the ``predictions.csv`` that predicting from the
run's checkpoint writes; folders it cannot predict from are refused in one line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from export_helpers import image_folders, run_tiny_recipe, save_checkpoint, text_inputs

from lightning_recipes.cli import main
from lightning_recipes.export import TOLERANCE

#: The text run's splits and the sentiment_csv files they read.
SPLITS = (("train", "train"), ("val", "dev"), ("test", "dev"))


def predict(capsys, config: Path, logs: Path, *args: str) -> list[dict[str, str]]:
    """Run ``lightning-recipes predict --config config ARGS`` logging under ``logs``; its predictions."""
    code = main(["predict", "--config", str(config), f"--trainer.logger.init_args.save_dir={logs}", *args])
    assert code == 0, capsys.readouterr().err[-3000:]
    (path,) = logs.rglob("predictions.csv")
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def assert_same_predictions(ours: list[dict], theirs: list[dict], tolerance: float) -> None:
    """Same columns and rows, the same predicted labels, probabilities within ``tolerance``."""
    assert ours and list(ours[0]) == list(theirs[0])
    probs = [c for c in ours[0] if c.startswith("pred_prob_")]
    assert len(probs) >= 2 and "pred_label" in ours[0]
    for a, b in zip(ours, theirs, strict=True):
        assert {k: v for k, v in a.items() if k not in probs} == {
            k: v for k, v in b.items() if k not in probs
        }
        assert max(abs(float(a[c]) - float(b[c])) for c in probs) <= tolerance


def export_and_compare(
    capsys, tmp_path: Path, run: Path, best: Path, fmt: str, lm: bool = False
) -> list[dict]:
    """Export ``run``, predict from the export and from ``best``, compare the CSVs (an LM's continuations:
    equal); the rows."""
    assert main(["export", str(run), "--to", str(tmp_path / "export")]) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "export" / "export.json").read_text())["format"] == fmt
    config = run / "config.yaml"
    from_ckpt = predict(capsys, config, tmp_path / "from_ckpt", f"--ckpt_path={best}")
    from_export = predict(capsys, config, tmp_path / "from_export", "--model", str(tmp_path / "export"))
    if lm:
        assert from_export and from_export == from_ckpt
    else:
        assert_same_predictions(from_export, from_ckpt, TOLERANCE[fmt])
    saved = next((tmp_path / "from_export").rglob("config.yaml")).read_text()
    assert str(tmp_path / "export") in saved  # the predict run's config says which model predicted
    return from_export


def best_of(run: Path) -> Path:
    (best,) = [p for p in (run / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt"]
    return best


def test_an_image_export_predicts_what_its_checkpoint_predicts(tmp_path, capsys) -> None:
    model = {
        "class_path": "lightning_recipes.ImageClassifier",
        "init_args": {"model_name_or_path": "test_resnet", "pretrained": False, "num_classes": 3, "lr": 0.01},
    }
    data = {
        "class_path": "lightning_recipes.ImageDataModule",
        "init_args": {
            "root": str(image_folders(tmp_path)),
            "batch_size": 6,
            "num_workers": 0,
            "image_size": 32,
        },
    }
    run = run_tiny_recipe(tmp_path, model, data)
    rows = export_and_compare(capsys, tmp_path, run, best_of(run), "timm")
    assert [r["label"] for r in rows] == [c for c in "abc" for _ in range(4)]  # the test split, in order
    assert {r["pred_label"] for r in rows} <= {"a", "b", "c"}


def test_a_text_export_predicts_what_its_checkpoint_predicts(tmp_path, capsys, sentiment_csv) -> None:
    from tiny_text_models import make_model

    model = {
        "class_path": "lightning_recipes.TextClassifier",
        "init_args": {
            "model_name_or_path": str(make_model(tmp_path / "bert")),
            "hidden_dim": 32,  # BERT's own pooler + classifier: an hf export
            "activation": "tanh",
            "lr": 1e-3,
        },
    }
    files = {f"{split}_file": str(sentiment_csv / f"{name}.csv") for split, name in SPLITS}
    data = {
        "class_path": "lightning_recipes.TextDataModule",
        "init_args": {**files, "text_column": "text", "batch_size": 8, "max_length": 16},
    }
    run = run_tiny_recipe(tmp_path, model, data, epochs=1)
    rows = export_and_compare(capsys, tmp_path, run, best_of(run), "hf")
    assert list(rows[0])[:3] == ["index", "text", "label"]
    assert {"pred_prob_neg", "pred_prob_pos"} <= set(rows[0])


def test_folders_it_cannot_predict_from_are_refused_in_one_line(tmp_path, capsys) -> None:
    (tmp_path / "plain").mkdir()
    assert main(["predict", "--model", str(tmp_path / "plain")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no export.json there; give a folder written by `lightning-recipes" in err

    traced = tmp_path / "traced"
    traced.mkdir()
    (traced / "export.json").write_text(json.dumps({"format": "onnx", "family": "image"}))
    assert main(["predict", f"--model={traced}"]) == 2
    assert "a onnx export runs in its own runtime, not in lightning_recipes" in capsys.readouterr().err

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "export.json").write_text(json.dumps({"format": "hf", "family": "lm"}))
    (adapter / "adapter_config.json").write_text("{}")
    assert main(["predict", "--model", str(adapter)]) == 2
    assert "an adapter folder needs its base model; export the run with --merge" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["command line", "config"])
def test_an_export_and_a_checkpoint_together_are_refused(where, tmp_path, capsys) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "export.json").write_text(json.dumps({"format": "timm", "family": "image"}))
    args = ["--ckpt_path=x.ckpt"] if where == "command line" else []
    config = {"data": {"class_path": "lightning_recipes.ImageDataModule", "init_args": {"root": "images"}}}
    if where == "config":
        config["ckpt_path"] = "x.ckpt"
    (tmp_path / "c.yaml").write_text(json.dumps(config))
    code = main(["predict", "--config", str(tmp_path / "c.yaml"), "--model", str(folder), *args])
    err = capsys.readouterr().err
    assert code == 2 and "and --ckpt_path x.ckpt: predict from one of them" in err, err


def test_a_causal_lm_export_gives_back_the_checkpoint_model(tmp_path, capsys, write_corpus) -> None:
    """An hf LM export builds the CausalLM its checkpoint holds (the model `predict --model` runs)."""
    from lightning_recipes import CausalLM
    from lightning_recipes.data.bpe import train_bpe_tokenizer
    from lightning_recipes.export import model_config

    train_bpe_tokenizer([write_corpus(tmp_path / "corpus.txt")], vocab_size=300, output_dir=tmp_path / "tok")
    torch.manual_seed(0)
    gpt2 = {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 64, "vocab_size": 300}
    ckpt = save_checkpoint(CausalLM(config=gpt2, tokenizer=str(tmp_path / "tok")), tmp_path / "lm.ckpt")
    assert main(["export", str(ckpt), "--to", str(tmp_path / "export")]) == 0, capsys.readouterr().err
    config = model_config(tmp_path / "export")
    assert config == {
        "class_path": "lightning_recipes.modules.causal_lm.CausalLM",
        "init_args": {"model_name_or_path": str(tmp_path / "export")},
    }
    inputs = text_inputs(vocab=300, token_types=False)
    with torch.no_grad():
        got = CausalLM(**config["init_args"]).eval()(**inputs)
        expected = CausalLM.load_from_checkpoint(ckpt).eval()(**inputs)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_a_causal_lm_export_predicts_the_continuations_its_checkpoint_predicts(
    tmp_path, capsys, write_corpus
) -> None:
    """The whole user path for an LM: `lightning run` (fit), `export RUN`, then `predict --model EXPORT` and
    `predict --ckpt_path BEST` on the run's config.yaml write the same greedy continuations."""
    import yaml

    from lightning_recipes import CausalLM
    from lightning_recipes.data.bpe import train_bpe_tokenizer

    corpus = write_corpus(tmp_path / "corpus.txt")
    train_bpe_tokenizer([corpus], vocab_size=300, output_dir=tmp_path / "tok")
    torch.manual_seed(0)
    gpt2 = {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 64, "vocab_size": 300}
    base = CausalLM(config=gpt2, tokenizer=str(tmp_path / "tok")).save_pretrained(tmp_path / "base")
    (tmp_path / "prompts.txt").write_text("the king said\nmy lord and\ngood sir\n")
    checkpoint = {"monitor": "val/loss", "mode": "min", "save_last": True, "filename": "best"}
    recipe = {
        "seed_everything": 0,
        "stages": ["fit"],
        "trainer": {
            "accelerator": "cpu",
            "max_epochs": 1,
            "limit_train_batches": 4,
            "enable_progress_bar": False,
            "logger": {"class_path": "CSVLogger", "init_args": {"save_dir": str(tmp_path / "run")}},
            "callbacks": [{"class_path": "ModelCheckpoint", "init_args": checkpoint}],
        },
        "model": {
            "class_path": "lightning_recipes.CausalLM",
            "init_args": {"model_name_or_path": str(base), "lr": 3e-3, "generation": {"max_new_tokens": 6}},
        },
        "data": {
            "class_path": "lightning_recipes.TextCorpusDataModule",
            "init_args": {
                "train_file": str(corpus),
                "val_file": str(corpus),
                "predict_file": str(tmp_path / "prompts.txt"),
                "block_size": 16,
                "batch_size": 4,
                "num_workers": 0,
            },
        },
    }
    (tmp_path / "lm.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["run", str(tmp_path / "lm.yaml")]) == 0, capsys.readouterr().err[-3000:]
    run = tmp_path / "run" / "lightning_logs" / "version_0"
    rows = export_and_compare(capsys, tmp_path, run, run / "checkpoints" / "best.ckpt", "hf", lm=True)
    assert [r["prompt"] for r in rows] == ["the king said", "my lord and", "good sir"]
    assert all(r["pred_continuation"] for r in rows)  # 6 new tokens each, decoded
