"""``lightning-recipes suggest --pilot``: short pilots of the competing scenarios, picked by their metric."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from lightning_recipes import _suggest_pilot as sp
from lightning_recipes import suggest as sg
from lightning_recipes.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def text_data(tmp_path: Path, monkeypatch) -> dict[str, str]:
    """A tiny classifier with labels negative/positive, 48 training sentences labelled the same."""
    from tiny_text_models import NEGATIVE, POSITIVE, save_tiny_classifier

    monkeypatch.chdir(tmp_path)
    rows = [f"{t},positive" for t in POSITIVE] + [f"{t},negative" for t in NEGATIVE]
    (tmp_path / "train.csv").write_text("text,label\n" + "\n".join(rows * 4) + "\n")
    model = save_tiny_classifier(tmp_path / "sentiment", {0: "negative", 1: "positive"})
    return {"data": str(tmp_path / "train.csv"), "model": str(model)}


def table(out: str) -> dict[str, list[str]]:
    """The pilot table's rows by scenario: value, steps, s/step, pilot time, full-run estimate."""
    rows = out.split("Pilot:")[1].split("Picked:")[0].splitlines()[2:]
    return {r.split()[0]: r.split()[1:] for r in rows if r.strip()}


def test_text_pilots_run_within_the_budget_and_the_pick_follows_the_measured_metric(
    text_data, monkeypatch, capsys
):
    real = sp.run_pilot
    seen = []

    def run_pilot(scenario, *args):  # the real pilot; as-is's measured metric replaced by 0.99
        result = real(scenario, *args)
        seen.append(result)
        return dataclasses.replace(result, value=0.99) if scenario == "as-is" else result

    monkeypatch.setattr(sp, "run_pilot", run_pilot)
    argv = ["--data", text_data["data"], "--backbone", text_data["model"], "--pilot", "--pilot-budget", "3"]
    assert main(["suggest", *argv, "--pilot-scenarios", "fine-tune,as-is"]) == 0
    out = capsys.readouterr().out
    head = "Pilot:      2 scenario(s) on 40 training / 8 validation examples (class-balanced), 3 steps each"
    assert head in out
    rows = table(out)
    assert list(rows) == ["fine-tune", "as-is"]
    # the budget, 3 optimizer steps, but never more than the full run's 2 (below); as-is trains none
    assert [r.steps for r in seen] == [2, 0] and rows["fine-tune"][1] == "2"
    assert rows["as-is"][0] == "0.990" and rows["as-is"][-2:] == ["no", "training"]
    # the full run's steps: MiniLM's recipe, 1 epoch of 48 x 0.9 sentences in batches of 32 -> 2 steps
    assert rows["fine-tune"][5:7] == ["2", "steps"]  # after the pilot time (e.g. "3 s")
    assert all(0.0 <= r.value <= 1.0 for r in seen) and all(r.monitor == "val/acc" for r in seen)
    picked = out.split("Picked:")[1]
    assert picked.startswith(f"     as-is, by the pilots' val/acc (0.990, {seen[0].value:.3f} for fine-tune)")
    assert "Run:        lightning run recipes/text/sst2_asis_local.yaml " in picked


@pytest.mark.slow
def test_scratch_pilot_trains_the_recipes_own_model_within_the_budget(text_data, capsys):
    argv = ["--data", text_data["data"], "--backbone", text_data["model"], "--pilot", "--pilot-budget", "4"]
    assert main(["suggest", *argv, "--pilot-scenarios", "scratch,add-layers"]) == 0
    rows = table(capsys.readouterr().out)
    assert list(rows) == ["scratch", "add-layers"] and [rows[s][1] for s in rows] == ["4", "4"]
    # A budget in minutes: max_time stops the pilot (a few seconds here), after at least one step.
    assert main(["suggest", *argv[:-1], "0.05m", "--pilot-scenarios", "fine-tune"]) == 0
    out = capsys.readouterr().out
    assert "0.05 min each" in out and int(table(out)["fine-tune"][1]) >= 1


def test_pick_takes_the_best_metric_in_the_recipes_direction_and_the_probes_choice_on_a_tie():
    a = sp.PilotResult("scratch", "r", "val/acc", "max", 0.70, 50, 0.1, 5.0, 100)
    b = dataclasses.replace(a, scenario="fine-tune", value=0.80)
    assert sp.pick([a, b]).scenario == "fine-tune"
    assert sp.pick([a, dataclasses.replace(b, value=0.70)]).scenario == "scratch"  # tie: listed first
    low = [dataclasses.replace(a, mode="min", monitor="val/loss"), dataclasses.replace(b, mode="min")]
    assert sp.pick(low).scenario == "scratch"  # lower loss wins


def test_budget_in_steps_or_minutes():
    assert sp.Budget.parse("50").trainer_args() == {"max_steps": 50, "max_epochs": -1}
    minutes = sp.Budget.parse("1.5min").trainer_args()
    assert minutes["max_time"] == {"seconds": 90} and minutes["max_epochs"] == -1
    for bad in ("0", "1.5", "ten", "-3m"):
        with pytest.raises(ValueError, match="--pilot-budget .*: give steps \\(50\\) or minutes"):
            sp.Budget.parse(bad)


def test_bad_pilot_options_fail_before_the_probe(text_data, capsys):
    argv = ["suggest", "--data", text_data["data"], "--backbone", "nowhere", "--pilot"]
    assert main([*argv, "--pilot-budget", "soon"]) == 2
    assert "error: --pilot-budget 'soon': give steps (50) or minutes" in capsys.readouterr().err
    assert main([*argv, "--pilot-scenarios", "finetune"]) == 2
    assert "error: --pilot-scenarios 'finetune': give some of fine-tune" in capsys.readouterr().err


def test_pilot_scenarios_default_to_the_choice_and_its_runner_up():
    m = sg.Measurement(4, 2048, 2048.0, 300, 0.25, 0.718, 0.60, None, 0, (0.22, 0.37))
    result = sg.Suggestion("text", m, "scratch", "r", None, None, {})
    assert sg.pilot_scenarios(result, None) == ["scratch", "fine-tune"]
    assert sg.pilot_scenarios(result, "add-layers, fine-tune") == ["add-layers", "fine-tune"]
    with pytest.raises(ValueError, match="--pilot-scenarios 'finetune': give some of fine-tune, add-layers"):
        sg.pilot_scenarios(result, "finetune")


@pytest.mark.slow
def test_image_pilots_serve_frozen_epochs_from_the_feature_cache(tmp_path, image_folder, monkeypatch, caplog):
    """add-layers (FreezeUnfreeze, frozen first epochs) caches the backbone's features; fine-tune trains."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sg, "MAX_IMAGE_SIZE", 32)
    import timm
    from timm.models import save_for_hf

    backbone = tmp_path / "test_resnet"  # pretrained weights on disk: random, of the same architecture
    save_for_hf(timm.create_model("test_resnet"), str(backbone), safe_serialization=True)
    root = image_folder(splits=("train",), classes=("a", "b"), per_class=10)
    inputs = sg.CommandInputs(
        "image", str(root), f"local-dir:{backbone}", ["a", "b"], {"layout": "train folders"}
    )
    with caplog.at_level(logging.INFO):
        lines, best = sp.pilot(inputs, ["add-layers", "fine-tune"], sp.Budget(steps=2))
    assert "computing the frozen backbone's features" in caplog.text
    rows = table("\n".join(lines))
    assert list(rows) == ["add-layers", "fine-tune"] and best in rows
    assert [rows[s][1] for s in rows] == ["2", "2"]
