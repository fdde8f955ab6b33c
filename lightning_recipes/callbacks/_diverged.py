"""TrainingDiverged: the error :class:`~lightning_recipes.callbacks.NonFiniteGuard` stops a run with."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import lightning.pytorch as pl


class TrainingDiverged(RuntimeError):
    """Raised by :class:`~lightning_recipes.callbacks.NonFiniteGuard` when the weights, a logged loss or a
    monitored metric is NaN/inf.

    The message is one line. For a fit (``stage="fit"``): where (epoch, global step), what was not
    finite, the learning rate of each optimizer group and the last checkpoint whose monitored values were
    finite (every checkpoint the guard lets a ``ModelCheckpoint`` write has finite weights). For an
    evaluation stage (``"validate"``, ``"test"``, ``"predict"``): what was not finite and the checkpoint
    the weights were loaded from. The same facts are attributes: ``epoch``, ``step``, ``what``,
    ``learning_rates`` (``{group name: lr}``, prefixed with ``"<optimizer index>/"`` when there are
    several optimizers), ``last_finite_checkpoint`` and ``weights_from`` (paths or ``None``), ``stage``
    and ``weights_finite`` (``False`` when the weights themselves are NaN/inf, on this process or
    another: no checkpoint of them is worth keeping).

    Example::

        >>> err = TrainingDiverged(
        ...     epoch=1, step=5, what="the training loss is nan",
        ...     learning_rates={"head": 1e6, "backbone": 1e6}, last_finite_checkpoint=None,
        ... )
        >>> print(*str(err).split(". "), sep=".\\n")
        Training diverged at epoch 1, global step 5: the training loss is nan.
        Learning rates: head=1e+06, backbone=1e+06.
        Last checkpoint with finite monitored values: none.
        Lower the learning rate or clip gradients (trainer.gradient_clip_val) and run again.
        >>> err.stage, err.weights_finite
        ('fit', True)
    """

    def __init__(
        self,
        epoch: int,
        step: int,
        what: str,
        learning_rates: dict[str, float],
        last_finite_checkpoint: str | None,
        stage: str = "fit",
        weights_finite: bool = True,
        weights_from: str | None = None,
    ) -> None:
        self.epoch, self.step, self.what = epoch, step, what
        self.learning_rates, self.last_finite_checkpoint = learning_rates, last_finite_checkpoint
        self.stage, self.weights_finite, self.weights_from = stage, weights_finite, weights_from
        if stage == "fit":
            lrs = ", ".join(f"{name}={lr:.3g}" for name, lr in learning_rates.items()) or "none"
            message = (
                f"Training diverged at epoch {epoch}, global step {step}: {what}. Learning rates: {lrs}. "
                f"Last checkpoint with finite monitored values: {last_finite_checkpoint or 'none'}. "
                "Lower the learning rate or clip gradients (trainer.gradient_clip_val) and run again."
            )
        else:
            weights = weights_from or "the model's own (no checkpoint loaded)"
            message = (
                f"Evaluation ({stage}) failed: {what}. "
                f"Weights: {weights}. NaN/inf weights or losses give no {stage} results; "
                "use a checkpoint with finite weights."
            )
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (spawned DDP processes), with its attributes
        return type(self), (
            self.epoch,
            self.step,
            self.what,
            self.learning_rates,
            self.last_finite_checkpoint,
            self.stage,
            self.weights_finite,
            self.weights_from,
        )


def learning_rates(trainer: pl.Trainer) -> dict[str, float]:
    """``{group name: lr}`` of the trainer's optimizers (``"<i>/<name>"`` with several optimizers).

    Groups are named by their ``name`` (``head``, ``backbone``...) or ``group <index>``.
    """
    rates: dict[str, float] = {}
    optimizers = trainer.optimizers
    for i, optimizer in enumerate(optimizers):
        for j, group in enumerate(optimizer.param_groups):
            name = str(group.get("name", f"group {j}"))
            rates[name if len(optimizers) == 1 else f"{i}/{name}"] = float(group["lr"])
    return rates
