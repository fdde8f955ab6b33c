"""tune/pruning.py: TrialPruning reports each validation of fit to optuna and stops a pruned trial's fit."""

from __future__ import annotations

import lightning as L
import optuna
import pytest
from lightning.pytorch.demos.boring_classes import BoringModel

from lightning_recipes.tune.pruning import TrialPruning


class LogsAccuracy(BoringModel):
    """Logs ``val/acc``: ``accs[epoch]`` (the last one after that)."""

    def __init__(self, *accs: float) -> None:
        super().__init__()
        self.accs = accs

    def validation_step(self, batch, batch_idx):
        self.log("val/acc", self.accs[min(self.trainer.current_epoch, len(self.accs) - 1)])
        return super().validation_step(batch, batch_idx)


def study_with_five_trials_at(value: float) -> optuna.Study:
    """A study whose five finished trials reported ``value`` at steps 0-2 (MedianPruner's startup trials)."""
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner())
    for _ in range(5):
        study.add_trial(
            optuna.trial.create_trial(value=value, intermediate_values={0: value, 1: value, 2: value})
        )
    return study


def fit(model: L.LightningModule, callback: TrialPruning, tmp_path) -> L.Trainer:
    trainer = L.Trainer(
        max_epochs=3,
        limit_train_batches=2,
        limit_val_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[callback],
    )
    trainer.fit(model)
    return trainer


def test_a_trial_below_the_median_is_stopped_after_its_first_validation(tmp_path):
    study = study_with_five_trials_at(0.9)
    trial = study.ask()
    callback = TrialPruning(trial, "val/acc", "max")
    trainer = fit(LogsAccuracy(0.5), callback, tmp_path)
    assert callback.pruned == 0 and callback.values == [0.5]  # the sanity check was not reported
    assert trainer.current_epoch == 1 and trainer.state.status == "finished"  # stopped, not crashed
    assert study.trials[-1].intermediate_values == {0: 0.5}


def test_a_good_trial_runs_to_the_end_and_keeps_its_best_value(tmp_path):
    study = study_with_five_trials_at(0.9)
    trial = study.ask()
    callback = TrialPruning(trial, "val/acc", "max")
    fit(LogsAccuracy(0.95, 0.99, 0.97), callback, tmp_path)
    assert callback.pruned is None and callback.values == pytest.approx([0.95, 0.99, 0.97])
    assert callback.best == pytest.approx(0.99)
    assert study.trials[-1].intermediate_values == pytest.approx({0: 0.95, 1: 0.99, 2: 0.97})


def test_min_mode_no_pruning_and_non_finite_values(tmp_path):
    study = study_with_five_trials_at(0.9)
    callback = TrialPruning(study.ask(), "val/acc", "min", prune=False)
    fit(LogsAccuracy(0.5, float("nan"), 0.3), callback, tmp_path)
    assert callback.pruned is None and len(callback.values) == 3  # below the median, but pruning is off
    assert callback.best == pytest.approx(0.3)  # the smallest finite value
    with pytest.raises(ValueError, match="mode must be 'max' or 'min', got 'maximize'"):
        TrialPruning(study.ask(), "val/acc", "maximize")


def test_a_monitor_that_is_never_logged_is_named_with_what_was(tmp_path):
    callback = TrialPruning(optuna.create_study().ask(), "val/f1", "max")
    with pytest.raises(KeyError, match=r"'val/f1' was not logged in validation \(logged: val/acc\)"):
        fit(LogsAccuracy(0.5), callback, tmp_path)
