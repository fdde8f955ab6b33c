"""The rules of ``lightning-recipes suggest``: what it measures (:class:`Measurement`), the thresholds, and
the call they make (:func:`decide`). :mod:`lightning_recipes.suggest` measures and prints; the margins to
these thresholds are in :mod:`lightning_recipes._suggest_margin`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["AS_IS_ACCURACY", "LARGE_PER_CLASS", "SIMILAR", "Measurement", "decide", "errors_removed"]

#: Median training examples per class at or above which a data set counts as large.
LARGE_PER_CLASS = 1000
#: Share of the random-init probe's errors that pretrained features remove, from which data is similar.
SIMILAR = 0.30
#: As-is accuracy (pretrained classifier, classes matched by name) at or above which the model fits.
AS_IS_ACCURACY = 0.90


def errors_removed(pretrained: Any, random: Any, probed: int) -> Any:
    """The share of the random-init probe's errors that pretrained features remove (arrays elementwise),
    each error counted as at least one example's worth (``1 / probed``).

    Example::

        >>> round(float(errors_removed(0.9, 0.6, 200)), 3)
        0.75
    """
    floor = 1.0 / probed
    error_random = np.maximum(1.0 - np.asarray(random, float), floor)
    return (error_random - np.maximum(1.0 - np.asarray(pretrained, float), floor)) / error_random


@dataclass(frozen=True)
class Measurement:
    """What ``suggest`` measured (accuracies are fractions of the probed subsample).

    Attributes:
        classes, probed: number of classes; examples embedded and probed.
        min_per_class, median_per_class: training examples per class.
        majority: accuracy of always predicting the most frequent class of the subsample.
        probe_pretrained: linear-probe accuracy on the pretrained backbone's frozen features.
        probe_random: the same probe on features of the architecture at random init.
        as_is: accuracy of the pretrained classifier with the classes matched by name, or ``None``.
        label_match: how many class names matched a pretrained label name.
        similarity_interval, as_is_interval: their 90 % bootstrap intervals over the probed examples
            (the probe's noise, :mod:`~lightning_recipes._suggest_margin`), ``None`` if not measured.
    """

    classes: int
    min_per_class: int
    median_per_class: float
    probed: int
    majority: float
    probe_pretrained: float
    probe_random: float
    as_is: float | None
    label_match: int
    similarity_interval: tuple[float, float] | None = None
    as_is_interval: tuple[float, float] | None = None

    @property
    def similarity(self) -> float:
        """The share of the random-init probe's errors that pretrained features remove.

        ``(error_random - error_pretrained) / error_random``, each error counted as at least one
        example's worth (``1 / probed``), so a task that random features already solve scores ``<= 0``.
        """
        return float(errors_removed(self.probe_pretrained, self.probe_random, self.probed))


def decide(m: Measurement, smaller: bool = False) -> tuple[str, str]:
    """The scenario keyword and the reason, from the measurements and the thresholds of this module;
    ``distill`` for a user who asks for a ``smaller`` (and so faster) model than the backbone.

    Example::

        >>> m = Measurement(5, 10, 10.0, 50, 0.2, 0.95, 0.70, None, 0)
        >>> decide(m)[0], decide(m, smaller=True)[0]
        ('fine-tune', 'distill')
    """
    if smaller:
        scores, (scenario, reason) = "" if m.as_is is None else f", scoring {m.as_is:.2f} as-is", decide(m)
        return "distill", (
            f"a smaller, faster model was asked for (--smaller): the backbone (the teacher: a classifier of "
            f"these labels{scores}) teaches a student of half its depth. Without --smaller: {scenario}, "
            f"{reason}"
        )
    size = (
        f"{'large' if m.median_per_class >= LARGE_PER_CLASS else 'small'} data set (median "
        f"{m.median_per_class:g} examples per class, large from {LARGE_PER_CLASS})"
    )
    lead = f"pretrained features remove {m.similarity:.0%} of the random-init probe's errors"
    if m.as_is is not None and m.as_is >= AS_IS_ACCURACY:
        return "as-is", (
            f"the class names are the backbone's pretrained labels and it already scores {m.as_is:.2f} "
            f"(>= {AS_IS_ACCURACY}): evaluate it, no training"
        )
    if m.similarity >= SIMILAR:
        return "fine-tune", f"{size}, similar to the pretraining data ({lead}; similar from {SIMILAR:.0%})"
    if m.median_per_class >= LARGE_PER_CLASS:
        return "scratch", f"{size}, different from the pretraining data ({lead}; similar from {SIMILAR:.0%})"
    return "add-layers", (
        f"{size}, different from the pretraining data ({lead}; similar from {SIMILAR:.0%}): train a new "
        "head on the frozen backbone first, then unfreeze it"
    )
