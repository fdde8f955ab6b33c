"""The :class:`CurveLogger` callback: scores the evaluation epochs and hands the results to the writers."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lightning_recipes.callbacks.curve_logger.mistakes import (
    Mistakes,
    MistakesReport,
    mistakes_figure,
    most_confused,
    write_mistakes,
)
from lightning_recipes.callbacks.curve_logger.state import CurveMetrics, CurveResults
from lightning_recipes.callbacks.curve_logger.writers import (
    format_summary,
    log_to_wandb,
    make_figures,
    write_csvs,
)
from lightning_recipes.eval_samples import RealSamples, evaluation_dataloaders
from lightning_recipes.handshake import real_meta

Stage = Literal["validate", "test"]


class CurveLogger(Callback):
    """ROC and precision-recall curves, AUROC/AP, confusion matrix and per-class metrics for classifiers.

    At the end of each validation and test epoch the callback computes, with torchmetrics, the
    curves (binary; multi-class one-vs-rest with micro and macro averages; multi-label), the
    confusion matrix and per-class precision/recall/F1/specificity, then writes

    * ``<run dir>/curves/<stage>_epoch<NNN>/``: ``roc.png``, ``pr.png``, ``confusion_matrix.png`` (the
      AUC/AP in the legends) and ``roc.csv``, ``pr.csv`` (curve points with their thresholds),
      ``confusion_matrix.csv``, ``metrics.csv`` (per class, macro and micro averages);
    * to Weights & Biases: interactive ROC/PR charts (at most ``max_points`` points, every class kept),
      the confusion matrix and the metrics table; to TensorBoard: the three figures;
    * ``{stage}/auroc`` and ``{stage}/ap`` (macro averages) through ``pl_module.log``, so a
      ``ModelCheckpoint`` can monitor them;
    * at the end of the test stage, the metrics table and the most confused pairs printed on rank zero.

    The mistakes report (single-label classification only: skipped for multi-label and regression), in
    the same folder: ``mistakes.csv``, the ``mistakes`` most confidently wrong examples (their file path
    or text from the batch's ``meta``, true and predicted label, confidence, probability of the true
    class), ``most_confused.csv``, the class pairs most often confused (counts from the confusion matrix),
    and for image files ``mistakes.png``, a grid of them (see :mod:`.mistakes`); to W&B as the tables
    ``{stage}/mistakes`` (with the images) and ``{stage}/most_confused``; to TensorBoard the grid.

    The folder and the printed header name the epoch of the weights evaluated: the trainer's epoch while
    fitting; the tested checkpoint's (``trainer.test(ckpt_path=...)`` of ``best-01.ckpt``: epoch 1,
    from the module's ``checkpoint_epoch``); else, after a fit, its last epoch.

    The module's ``validation_step``/``test_step`` must return ``{"preds", "target"}`` with ``preds``
    probabilities (as :class:`~lightning_recipes.modules._classification.ClassificationModule` does) and
    the module must have ``task`` and ``num_classes``; regression modules are skipped. Class names come
    from the module's ``label_names`` (which the handshake fills from the data). Under DDP the samples a
    ``DistributedSampler`` repeats to even out the ranks are dropped, so the results equal those of one
    process. The curve folder is ``dirpath``, else ``curves/`` in the TensorBoard/CSV logger's
    ``log_dir``, beside ``ModelCheckpoint``'s ``checkpoints/`` for other loggers (W&B:
    ``<save_dir>/<project>/<run id>/curves``), else in ``trainer.default_root_dir``.

    Args:
        thresholds: number of evenly spaced thresholds in [0, 1] (constant memory; plus ``inf``, see
            :func:`curve_thresholds`); a list of thresholds; or
            ``None`` for exact curves (keeps every score: memory grows with the data set).
        stages: which of ``"validate"`` and ``"test"`` to score.
        every_n_epochs: score validation every n epochs (test is always scored); ``None`` (default): every
            epoch of a run of up to 10, else about 10 times per run (every ``ceil(max_epochs / 10)``
            epochs, and the last), so a 30-epoch probe writes 11 folders, not 30.
        dirpath: folder for the curve files (default: the run dir above).
        save_png: write the PNG plots.
        save_csv: write the CSV files.
        max_points: points per chart sent to W&B, shared among the curves (each keeps at least 2).
        print_summary: print the metrics table at the end of the test stage (rank zero).
        mistakes: number of most confidently wrong examples and most confused class pairs reported
            (``0``: no report).

    Example::

        >>> import lightning as L, tempfile, torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from lightning_recipes import ImageClassifier
        >>> root = tempfile.mkdtemp()
        >>> trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
        ...     default_root_dir=root, callbacks=[CurveLogger(thresholds=21, stages=["validate"])])
        >>> model = ImageClassifier("test_resnet", num_classes=3, pretrained=False)
        >>> images, labels = torch.randn(9, 3, 32, 32), torch.tensor([0, 1, 2] * 3)
        >>> loader = DataLoader(TensorDataset(images, labels), batch_size=4)
        >>> _ = trainer.validate(model, loader, verbose=False)
        >>> folder = Path(root) / "curves" / "val_epoch000"
        >>> sorted(p.name for p in folder.iterdir())  # doctest: +NORMALIZE_WHITESPACE
        ['confusion_matrix.csv', 'confusion_matrix.png', 'metrics.csv', 'mistakes.csv',
         'most_confused.csv', 'pr.csv', 'pr.png', 'roc.csv', 'roc.png']
    """

    def __init__(
        self,
        thresholds: int | list[float] | None = 200,
        stages: list[Stage] = ["validate", "test"],  # noqa: B006 (a YAML default; never mutated)
        every_n_epochs: int | None = None,
        dirpath: str | None = None,
        save_png: bool = True,
        save_csv: bool = True,
        max_points: int = 2000,
        print_summary: bool = True,
        mistakes: int = 20,
    ) -> None:
        unknown = set(stages) - {"validate", "test"}
        if unknown:
            raise ValueError(f"CurveLogger stages must be 'validate' and/or 'test', got {sorted(unknown)}")
        if every_n_epochs is not None and every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1 (or None: about 10 per run), got {every_n_epochs}")
        if isinstance(thresholds, int) and thresholds < 2:
            raise ValueError(
                f"thresholds must be >= 2 (or a list, or None for exact curves), got {thresholds}"
            )
        if max_points < 2:
            raise ValueError(f"max_points must be >= 2, got {max_points}")
        if mistakes < 0:
            raise ValueError(f"mistakes must be >= 0 (0: no mistakes report), got {mistakes}")
        self.thresholds = thresholds
        self.stages = list(stages)
        self.every_n_epochs = every_n_epochs
        self.dirpath = dirpath
        self.save_png = save_png
        self.save_csv = save_csv
        self.max_points = max_points
        self.print_summary = print_summary
        self.mistakes = mistakes
        self.root: Path | None = None
        self.last_results: dict[str, CurveResults] = {}
        self.last_mistakes: dict[str, MistakesReport] = {}
        self._metrics: dict[int, CurveMetrics] = {}
        self._mistakes: dict[int, Mistakes] = {}
        self._samples = RealSamples()  # drops the samples DDP's sampler repeats
        self._active = False
        self._warned = False

    # ---- setup ------------------------------------------------------------------------------------

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        logger = trainer.loggers[0] if trainer.loggers else None
        if self.dirpath is not None:
            self.root = Path(self.dirpath)
        elif isinstance(logger, (TensorBoardLogger, CSVLogger)):
            self.root = Path(trainer.log_dir) / "curves"  # every rank: log_dir broadcasts
        elif logger is not None and logger.save_dir is not None:
            # beside ModelCheckpoint's default folder: <save_dir>/<name>/<version>/{checkpoints,curves}
            version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
            root = Path(logger.save_dir) / str(logger.name) / version / "curves"
            self.root = Path(trainer.strategy.broadcast(str(root)))
        else:
            self.root = Path(trainer.default_root_dir) / "curves"

    def _supported(self, pl_module: L.LightningModule) -> bool:
        task = getattr(pl_module, "task", None)
        if task in ("multiclass", "multilabel") and getattr(pl_module, "num_classes", None):
            return True
        if task != "regression" and not self._warned:
            rank_zero_warn(
                f"CurveLogger: {type(pl_module).__name__} has no `task`/`num_classes`; curves skipped."
            )
            self._warned = True
        return False

    @staticmethod
    def _class_names(pl_module: L.LightningModule, num_classes: int) -> list[str]:
        """The module's ``label_names`` (its class names, from the handshake), else ``"0"``, ``"1"``..."""
        names = getattr(pl_module, "label_names", None)
        if names is not None and len(names) == num_classes:
            return [str(n) for n in names]
        return [str(i) for i in range(num_classes)]

    def scores_epoch(self, trainer: L.Trainer) -> bool:
        """Whether the validation of ``trainer.current_epoch`` is scored (see ``every_n_epochs``)."""
        epoch, last = trainer.current_epoch, (trainer.max_epochs or 0) - 1
        if self.every_n_epochs is not None:
            return epoch % self.every_n_epochs == 0
        return epoch % max(1, math.ceil((last + 1) / 10)) == 0 or epoch == last

    def _start(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._active = (
            stage in self.stages
            and not trainer.sanity_checking
            and self._supported(pl_module)
            and (stage == "test" or self.scores_epoch(trainer) or trainer.state.fn == "validate")
        )
        if not self._active:
            return
        names = self._class_names(pl_module, pl_module.num_classes)
        loaders = evaluation_dataloaders(trainer, stage)
        self._samples.start_with(loaders)
        self._metrics = {
            idx: CurveMetrics(pl_module.task, pl_module.num_classes, self.thresholds, names).to(
                pl_module.device
            )
            for idx in range(len(loaders))
        }
        single_label = pl_module.task == "multiclass" and self.mistakes > 0
        self._mistakes = {idx: Mistakes(self.mistakes) for idx in range(len(loaders))} if single_label else {}

    def _update(self, outputs: Any, batch: Any, dataloader_idx: int) -> None:
        if not self._active:
            return
        if not isinstance(outputs, dict) or "preds" not in outputs or "target" not in outputs:
            if not self._warned:
                rank_zero_warn(
                    'CurveLogger needs validation_step/test_step to return {"preds", "target"}; skipped.'
                )
                self._warned = True
            self._active = False
            return
        preds, target = outputs["preds"], outputs["target"]
        keep = self._samples.keep(len(target), dataloader_idx)
        if keep:
            self._metrics[dataloader_idx].update(preds[:keep], target[:keep])
            if dataloader_idx in self._mistakes:
                self._mistakes[dataloader_idx].update(preds[:keep], target[:keep], real_meta(batch, keep))

    def _end(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self._active:
            return
        self._active = False
        short = "val" if stage == "validate" else "test"
        epoch = evaluated_epoch(trainer, pl_module)
        for idx, metrics in self._metrics.items():
            prefix = short if len(self._metrics) == 1 else f"{short}_dl{idx}"
            results = metrics.compute()  # every rank: syncs the states
            self.last_results[prefix] = results
            report = None
            if idx in self._mistakes:  # every rank: gathers the processes' mistakes
                pairs = most_confused(results.confusion, results.class_names, self.mistakes)
                report = MistakesReport(results.class_names, self._mistakes[idx].gather(), pairs)
                self.last_mistakes[prefix] = report
            pl_module.log(f"{prefix}/auroc", results.auroc["macro"], sync_dist=False)
            pl_module.log(f"{prefix}/ap", results.ap["macro"], sync_dist=False)
            if trainer.is_global_zero:
                self._write(trainer, results, prefix, epoch, report)
                if stage == "test" and self.print_summary:
                    print(format_summary(results, f"Per-class metrics ({prefix}, epoch {epoch})"))
                    if report is not None and report.pairs:
                        shown = ", ".join(f"{t} -> {p}: {c}" for t, p, c, _ in report.pairs[:5])
                        print(f"Most confused ({prefix}, epoch {epoch}; true -> predicted: count): {shown}")
        self._metrics, self._mistakes = {}, {}

    def _write(
        self,
        trainer: L.Trainer,
        results: CurveResults,
        prefix: str,
        epoch: int,
        report: MistakesReport | None,
    ) -> None:
        folder = (self.root or Path(trainer.default_root_dir) / "curves") / f"{prefix}_epoch{epoch:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        if self.save_csv:
            write_csvs(results, folder)
            if report is not None:
                write_mistakes(report, folder)
        figures = make_figures(results, prefix) if self.save_png or _has(trainer, TensorBoardLogger) else {}
        grid = mistakes_figure(report, prefix) if figures and report is not None else None
        if grid is not None:
            figures["mistakes"] = grid
        if self.save_png:
            for name, fig in figures.items():
                fig.savefig(folder / f"{name}.png")
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for name, fig in figures.items():
                    logger.experiment.add_figure(f"{prefix}/{name}", fig, trainer.global_step, close=False)
            elif isinstance(logger, WandbLogger):
                # the step Lightning logs epoch metrics at, so curves share the x-axis with val/acc
                step = getattr(getattr(trainer.fit_loop, "epoch_loop", None), "_batches_that_stepped", None)
                step = trainer.global_step if step is None else step
                log_to_wandb(logger, results, prefix, step, self.max_points, report)

    # ---- hooks ------------------------------------------------------------------------------------

    @override
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(trainer, pl_module, "validate")

    @override
    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._update(outputs, batch, dataloader_idx)

    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._end(trainer, pl_module, "validate")

    @override
    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(trainer, pl_module, "test")

    @override
    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._update(outputs, batch, dataloader_idx)

    @override
    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._end(trainer, pl_module, "test")


def evaluated_epoch(trainer: L.Trainer, pl_module: L.LightningModule) -> int:
    """The epoch of the weights being evaluated: the trainer's while fitting; else the epoch of the
    checkpoint they were loaded from (the module's ``checkpoint_epoch``, see
    :class:`~lightning_recipes.modules._base.TransferModule`); else the last epoch trained
    (``current_epoch`` counts the finished epochs once a fit has ended), 0 if none."""
    if trainer.state.fn == "fit":
        return trainer.current_epoch
    epoch = getattr(pl_module, "checkpoint_epoch", None)
    return int(epoch) if epoch is not None else max(trainer.current_epoch - 1, 0)


def _has(trainer: L.Trainer, kind: type) -> bool:
    return any(isinstance(logger, kind) for logger in trainer.loggers)
