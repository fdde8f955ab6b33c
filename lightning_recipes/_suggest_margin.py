"""How close ``suggest``'s call is: the probe's noise, the margin to each threshold, the runner-up.

The probe scores each probed example once, out of fold (:func:`probe_correct`). A paired bootstrap over
those examples (the same resampled examples for the pretrained and the random-init probe) gives a 90 %
interval of the similarity and of the as-is accuracy: how much they would move on another draw of
examples of the same data. It does not cover the seed of the random-init backbone or of the folds.
A threshold inside its measure's interval is within the probe's noise: a close call, for
``suggest --pilot`` to settle by training.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from lightning_recipes._suggest_rules import AS_IS_ACCURACY, LARGE_PER_CLASS, SIMILAR, Measurement, decide

__all__ = [
    "LEVEL",
    "RESAMPLES",
    "Margin",
    "bootstrap_interval",
    "closeness_lines",
    "margins",
    "probe_correct",
    "runner_up",
]

#: Bootstrap resamples of the probed examples.
RESAMPLES = 1000
#: Coverage of the bootstrap interval that counts as the probe's noise.
LEVEL = 0.90


def probe_correct(features: np.ndarray, targets: np.ndarray, seed: int, folds: int) -> np.ndarray:
    """Whether a linear probe (ridge classifier on standardised features) gets each example right when
    it is in the held-out fold (stratified, ``folds`` folds, fewer when a class has fewer examples).

    Example::

        >>> y = np.repeat([0, 1], 10)
        >>> probe_correct(y[:, None] + 0.01 * np.arange(20)[:, None], y, seed=0, folds=5).mean()
        np.float64(1.0)
    """
    from sklearn.linear_model import RidgeClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = min(folds, int(np.bincount(targets).min()))
    if folds < 2:
        counts = np.bincount(targets).tolist()
        raise ValueError(f"Every class needs 2 examples or more for the probe; examples per class: {counts}")
    probe = make_pipeline(StandardScaler(), RidgeClassifier(alpha=100.0))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return cross_val_predict(probe, features, targets, cv=cv) == targets


def bootstrap_interval(statistic: Any, n: int, seed: int) -> tuple[float, float]:
    """The central :data:`LEVEL` interval of ``statistic(indices)`` over :data:`RESAMPLES` resamples of
    ``n`` examples with replacement (``indices`` is a ``(RESAMPLES, n)`` array, one resample a row).

    Example::

        >>> correct = np.r_[np.ones(80), np.zeros(20)]
        >>> lo, hi = bootstrap_interval(lambda i: correct[i].mean(1), 100, seed=0)
        >>> lo < 0.8 < hi and hi - lo < 0.15
        True
    """
    indices = np.random.default_rng(seed).integers(0, n, size=(RESAMPLES, n))
    values = statistic(indices)
    tail = (1.0 - LEVEL) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


@dataclass(frozen=True)
class Margin:
    """One threshold that decided the call, and how far the measured value is from it.

    Attributes:
        name: what was measured (``similarity``, ``as-is accuracy``, ``median examples per class``).
        value: the measured value.
        threshold: the threshold (the value counts as reaching it at ``>=``).
        interval: the measure's bootstrap interval, ``None`` where it was not measured.
        count: an exact count (examples per class), which has no noise.
    """

    name: str
    value: float
    threshold: float
    interval: tuple[float, float] | None
    count: bool = False

    @property
    def noise(self) -> float | None:
        """Half the width of the bootstrap interval (``None``: exact)."""
        return None if self.interval is None else (self.interval[1] - self.interval[0]) / 2

    @property
    def within_noise(self) -> bool:
        """Whether the threshold lies inside the measure's bootstrap interval."""
        return self.interval is not None and self.interval[0] <= self.threshold <= self.interval[1]

    @property
    def distance(self) -> float:
        """How far the value is from the threshold, in units of its noise (a count: in factors of 2)."""
        if self.count:
            return abs(float(np.log2(max(self.value, 1.0) / self.threshold)))
        return abs(self.value - self.threshold) / max(self.noise or 0.0, 1e-3)

    def line(self) -> str:
        """``similarity +0.295 (threshold 0.30: 0.005 below, within the probe's noise ±0.074)``."""
        side = "above" if self.value >= self.threshold else "below"
        if self.count:
            gap = f"{abs(self.value - self.threshold):g} {side}"
            return f"{self.name} {self.value:g} (threshold {self.threshold:g}: {gap}; a count, no noise)"
        where = (
            "noise not measured"
            if self.interval is None
            else f"{'within' if self.within_noise else 'outside'} the probe's noise ±{self.noise:.3f}"
        )
        sign = "+" if self.name == "similarity" else ""
        return (
            f"{self.name} {self.value:{sign}.3f} (threshold {self.threshold:.2f}: "
            f"{abs(self.value - self.threshold):.3f} {side}, {where})"
        )


def margins(m: Measurement) -> list[Margin]:
    """The thresholds that decided :func:`~lightning_recipes.suggest.decide`'s call on ``m``."""
    found = []
    if m.as_is is not None:
        found.append(Margin("as-is accuracy", m.as_is, AS_IS_ACCURACY, m.as_is_interval))
        if m.as_is >= AS_IS_ACCURACY:
            return found
    found.append(Margin("similarity", m.similarity, SIMILAR, m.similarity_interval))
    if m.similarity < SIMILAR:  # small or large decides between add-layers and scratch
        found.append(Margin("median examples per class", m.median_per_class, LARGE_PER_CLASS, None, True))
    return found


def _across(m: Measurement, margin: Margin) -> Measurement:
    """``m`` with ``margin``'s measure moved just across its threshold."""
    below = margin.value >= margin.threshold  # move it below, else to the threshold
    target = margin.threshold - 1e-6 if below else margin.threshold
    if margin.name == "as-is accuracy":
        return replace(m, as_is=target)
    if margin.name == "similarity":  # the pretrained probe's accuracy that gives this similarity
        error_random = max(1.0 - m.probe_random, 1.0 / m.probed)
        return replace(m, probe_pretrained=1.0 - error_random * (1.0 - target))
    return replace(m, median_per_class=float(np.floor(target)) if below else target)


def runner_up(m: Measurement) -> tuple[str, Margin] | None:
    """The scenario across the nearest deciding threshold (nearest in units of its noise, see
    :attr:`Margin.distance`) and that threshold; ``None`` when no threshold decided it."""
    chosen = decide(m)[0]
    options = [(decide(_across(m, g))[0], g) for g in margins(m)]
    options = [(s, g) for s, g in options if s != chosen]
    return min(options, key=lambda option: option[1].distance) if options else None


def closeness_lines(m: Measurement, rerun: str | None = None) -> list[str]:
    """The report's lines on how close the call is: each deciding margin, the runner-up and, when a
    measured threshold is within the probe's noise, that it is a close call and the ``--pilot`` command."""
    found = margins(m)
    lines = [f"{'Margins:' if i == 0 else '':<12}{g.line()}" for i, g in enumerate(found)]
    second = runner_up(m)
    if second is not None:
        scenario, g = second
        lines.append(f"Runner-up:  {scenario} (across the {g.name} threshold {g.threshold:g})")
    close = [g.name for g in found if g.within_noise]
    if close:
        lines.append(
            f"Confidence: close call: the {' and the '.join(close)} threshold is within the probe's noise "
            f"({LEVEL:.0%} bootstrap interval); measure the scenarios by training: "
            f"{rerun or 'lightning-recipes suggest ...'} --pilot"
        )
    elif any(g.interval is not None for g in found):
        lines.append(
            "Confidence: every measured threshold is outside the probe's noise "
            f"({LEVEL:.0%} bootstrap interval)"
        )
    return lines
