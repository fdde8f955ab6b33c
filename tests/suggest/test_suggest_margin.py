"""How close ``suggest``'s call is: margins to its thresholds, the runner-up, the probe's noise, --pilot."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_recipes import suggest as sg
from lightning_recipes._suggest_margin import (
    bootstrap_interval,
    closeness_lines,
    margins,
    probe_correct,
    runner_up,
)

RERUN = "lightning-recipes suggest --data d.csv --backbone m"


def built(similarity: float, per_class: float, noise: float = 0.075, as_is=None, as_is_noise: float = 0.05):
    """A measurement with this similarity (random probe 0.60) and a symmetric interval of +-``noise``."""
    pretrained = 1 - 0.4 * (1 - similarity)
    return sg.Measurement(
        classes=4,
        min_per_class=int(per_class),
        median_per_class=per_class,
        probed=300,
        majority=0.25,
        probe_pretrained=pretrained,
        probe_random=0.60,
        as_is=as_is,
        label_match=0 if as_is is None else 4,
        similarity_interval=(similarity - noise, similarity + noise),
        as_is_interval=None if as_is is None else (as_is - as_is_noise, as_is + as_is_noise),
    )


def test_a_hair_below_the_similarity_threshold_is_a_close_call_with_fine_tune_second():
    m = built(0.295, per_class=2048)  # the case: large, similarity 0.295
    assert m.similarity == pytest.approx(0.295) and sg.decide(m)[0] == "scratch"
    lines = closeness_lines(m, RERUN)
    assert (
        lines[0]
        == "Margins:    similarity +0.295 (threshold 0.30: 0.005 below, within the probe's noise ±0.075)"
    )
    assert (
        lines[1]
        == "            median examples per class 2048 (threshold 1000: 1048 above; a count, no noise)"
    )
    assert lines[2] == "Runner-up:  fine-tune (across the similarity threshold 0.3)"
    assert lines[3].startswith("Confidence: close call: the similarity threshold is within the probe's noise")
    assert lines[3].endswith(f"{RERUN} --pilot")


def test_a_hair_above_the_threshold_is_close_too_and_its_runner_up_depends_on_the_size():
    small, large = built(0.305, per_class=20), built(0.305, per_class=5000)
    assert sg.decide(small)[0] == sg.decide(large)[0] == "fine-tune"
    assert closeness_lines(small)[0] == (
        "Margins:    similarity +0.305 (threshold 0.30: 0.005 above, within the probe's noise ±0.075)"
    )
    assert len(margins(small)) == 1  # fine-tune whatever the size: only similarity decided it
    assert runner_up(small)[0] == "add-layers" and runner_up(large)[0] == "scratch"
    assert "--pilot" in closeness_lines(small)[-1]


@pytest.mark.parametrize(("similarity", "scenario"), [(0.60, "fine-tune"), (0.0, "scratch")])
def test_far_from_the_threshold_the_call_is_clear_and_no_pilot_is_suggested(similarity, scenario):
    m = built(similarity, per_class=5000, noise=0.1)
    assert sg.decide(m)[0] == scenario
    lines = closeness_lines(m, RERUN)
    assert "outside the probe's noise ±0.100" in lines[0]
    assert (
        lines[-1]
        == "Confidence: every measured threshold is outside the probe's noise (90% bootstrap interval)"
    )
    assert not any("--pilot" in line for line in lines)


def test_the_runner_up_is_across_the_nearest_threshold_in_units_of_its_noise():
    # Far below the similarity threshold (3 noise widths), 10 % short of "large": scratch is second.
    m = built(0.0, per_class=900, noise=0.1)
    assert sg.decide(m)[0] == "add-layers" and runner_up(m)[0] == "scratch"
    # Just below the similarity threshold, 5x short of "large": fine-tune is second.
    m = built(0.28, per_class=200, noise=0.1)
    assert sg.decide(m)[0] == "add-layers" and runner_up(m)[0] == "fine-tune"


@pytest.mark.parametrize(("as_is", "scenario", "close"), [(0.92, "as-is", True), (0.88, "fine-tune", True)])
def test_as_is_accuracy_near_its_threshold_is_a_close_call_on_either_side(as_is, scenario, close):
    m = built(0.6, per_class=20, noise=0.05, as_is=as_is)
    assert sg.decide(m)[0] == scenario
    lines = closeness_lines(m, RERUN)
    side = "above" if as_is >= sg.AS_IS_ACCURACY else "below"
    margin = f"as-is accuracy {as_is:.3f} (threshold 0.90: 0.020 {side}, within the probe's noise ±0.050)"
    assert lines[0] == f"Margins:    {margin}"
    assert runner_up(m)[0] == ("fine-tune" if scenario == "as-is" else "as-is")
    assert ("the as-is accuracy threshold is within" in lines[-1]) == close


def test_a_measurement_without_intervals_makes_no_claim_about_noise():
    m = sg.Measurement(4, 20, 20.0, 200, 0.25, 0.95, 0.70, None, 0)
    lines = closeness_lines(m)
    assert lines[0] == "Margins:    similarity +0.833 (threshold 0.30: 0.533 above, noise not measured)"
    assert not any("Confidence" in line for line in lines)


def test_bootstrap_interval_covers_the_estimate_and_narrows_with_more_examples():
    widths = []
    for n in (100, 1600):
        correct = np.arange(n) % 4 != 0  # 75 % right
        lo, hi = bootstrap_interval(lambda i, c=correct: c[i].mean(1), n, seed=0)
        assert lo < 0.75 < hi
        widths.append(hi - lo)
    # The standard error of a share falls as 1 / sqrt(n): 16x the examples, a quarter of the width.
    assert widths[1] / widths[0] == pytest.approx(0.25, abs=0.05)
    assert widths[0] == pytest.approx(2 * 1.645 * np.sqrt(0.75 * 0.25 / 100), rel=0.15)


def test_probe_correct_is_out_of_fold_and_its_mean_is_the_probe_accuracy():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 30)
    x = np.eye(3)[y] * 2 + rng.normal(size=(90, 3))
    right = probe_correct(x, y, seed=0, folds=5)
    assert right.shape == (90,) and right.dtype == bool and 0.7 < right.mean() < 1.0
    assert sg.probe_accuracy(x, y) == pytest.approx(right.mean())
    # Pure noise: out of fold, the probe is at chance, not at its training fit.
    assert probe_correct(rng.normal(size=(90, 50)), y, seed=0, folds=5).mean() < 0.55
