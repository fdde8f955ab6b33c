"""LRFinder: Lightning's learning-rate range test with suggestion rules, ratio-preserving apply, CSV + PNG."""

from __future__ import annotations

import csv
import math
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import LearningRateFinder
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.parsing import lightning_hasattr, lightning_setattr
from lightning.pytorch.utilities.seed import isolate_rng
from typing_extensions import override

from lightning_recipes import _compat
from lightning_recipes.callbacks._lr_groups import reference_index, scale_group_lrs, schedulers_of

Rule = Literal["steepest", "min_div_10", "valley"]
RULES = ("steepest", "min_div_10", "valley")


def suggest_lr(
    lrs: list[float],
    losses: list[float],
    rule: Rule = "steepest",
    skip_begin: int = 10,
    skip_end: int = 1,
    window: float = 0.05,
) -> tuple[float | None, str]:
    """Pick a learning rate from a range test; return ``(lr or None, reason)``.

    Points ``skip_begin`` from the start and ``skip_end`` from the end are dropped, then non-finite
    losses. Rules:

    * ``"steepest"``: where the (smoothed) loss falls fastest per unit of ``log10(lr)``, i.e. the
      derivative is taken with the LRs' log spacing (an exponential sweep is uniform in log space), as
      the slope of a least-squares line through the ``window`` fraction of points on each side.
    * ``"min_div_10"``: the LR of the lowest loss, divided by 10 (fastai's ``minimum``).
    * ``"valley"``: fastai's ``valley``: the longest stretch over which the loss keeps decreasing, and
      a point two thirds of the way down it.

    Example::

        >>> lrs = [10 ** (-4 + i / 10) for i in range(41)]         # 1e-4 .. 1
        >>> losses = [1 / (1 + math.exp(4 * (math.log10(lr) + 2))) for lr in lrs]  # falls fastest at 1e-2
        >>> round(math.log10(suggest_lr(lrs, losses, "steepest", skip_begin=0, skip_end=0)[0]), 1)
        -2.0
        >>> suggest_lr(lrs, [1.0] * 41, "steepest")
        (None, 'the loss never decreased over the sweep')
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    end = len(lrs) - skip_end
    pairs = [
        (lr, loss)
        for lr, loss in zip(lrs[skip_begin:end], losses[skip_begin:end], strict=True)
        if math.isfinite(loss) and lr > 0
    ]
    if len(pairs) < 3:
        return None, (
            f"only {len(pairs)} finite losses after skipping {skip_begin} + {skip_end} points; "
            "use more num_training_steps or a lower max_lr"
        )
    x = [math.log10(lr) for lr, _ in pairs]
    y = [loss for _, loss in pairs]
    if rule == "min_div_10":
        best = min(range(len(y)), key=y.__getitem__)
        if best == 0:
            return None, "the loss was lowest at the first learning rate: lower min_lr"
        return pairs[best][0] / 10, f"minimum loss {y[best]:.4g} at lr {pairs[best][0]:.3g}, divided by 10"
    if rule == "valley":
        n = len(y)
        run = [1] * n  # longest decreasing subsequence ending at i
        start, stop = 0, 0
        for i in range(1, n):
            for j in range(i):
                if y[i] < y[j] and run[i] < run[j] + 1:
                    run[i] = run[j] + 1
            if run[i] > run[stop]:
                stop, start = i, i - run[i]
        if stop - start < 2:
            return None, "the loss never kept decreasing over the sweep"
        third = (stop - start) / 3
        idx = min(n - 1, start + int(third) + int(third / 2))
        return pairs[idx][0], f"valley from lr {pairs[max(start, 0)][0]:.3g} to {pairs[stop][0]:.3g}"
    # Slope of a least-squares line through +-k neighbours in log10(lr): central differences of
    # neighbouring points would amplify batch noise (points are ~0.05 decades apart).
    k = max(1, round(window * len(y)))
    slopes = []
    for i in range(len(y)):
        xs, ys = x[max(0, i - k) : i + k + 1], y[max(0, i - k) : i + k + 1]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((a - mx) ** 2 for a in xs)
        slopes.append(sum((a - mx) * (b - my) for a, b in zip(xs, ys, strict=True)) / var if var > 0 else 0.0)
    best = min(range(len(slopes)), key=slopes.__getitem__)
    if slopes[best] >= 0:
        return None, "the loss never decreased over the sweep"
    return pairs[best][0], f"steepest descent {slopes[best]:.4g} loss per decade at lr {pairs[best][0]:.3g}"


class LRFinder(LearningRateFinder):
    """Learning-rate range test before training (and optionally at given epochs), with a choice of rule.

    Extends Lightning's ``LearningRateFinder``: the sweep is Lightning's own (the real fit loop with
    your precision, strategy and accumulation; an exponential ramp from ``min_lr`` to ``max_lr`` over
    ``num_training_steps`` steps, smoothed losses, early stop on divergence), which checkpoints the
    trainer before the sweep and restores it after, with the RNG isolated, so weights, optimizer and
    scheduler state and the random state are exactly as before (tested bitwise). What this adds:

    * a suggestion rule (see :func:`suggest_lr`), non-finite losses dropped; when no sensible value
      exists the reason is logged (``reason``) and the learning rates are left unchanged;
    * the suggestion is applied to the reference group (``"head"`` when groups are named, else the
      first) and every other group keeps its ratio to it: each LR-valued entry of each group and of
      the schedulers' per-group lists (``base_lrs``, ``min_lrs``..., also in the schedulers of a
      ``SequentialLR``) is scaled by the same factor (``callbacks/_lr_groups.py``). During the sweep
      all groups take the same LR (Lightning's behaviour); with a frozen backbone that is the head alone;
    * under DDP rank 0's suggestion is broadcast, so all ranks apply the same value;
    * ``lr_find.csv`` (``lr,loss``) and ``lr_find.png`` (suggestion marked) in the run directory
      (``trainer.log_dir``, else ``default_root_dir``; later sweeps ``lr_find_epoch<N>.*``), and
      ``lr_finder/suggested_lr`` plus the figure (TensorBoard, W&B) to the active loggers;
    * ``milestones``: sweep again at the start of these epochs (``on_train_epoch_start``), e.g. the
      unfreeze epoch of :class:`~lightning_recipes.callbacks.FreezeUnfreeze`. That callback places
      itself ahead of tuner callbacks such as this one (which Lightning otherwise runs first), so its
      unfreezing is applied first and the sweep covers the new backbone groups, which keep their ratio
      to the head; this callback knows nothing of it. Lightning's own
      mid-fit sweep (its ``FineTuneLearningRateFinder`` example) runs zero or one step in Lightning 2.6:
      its restored loop state ends the epoch at once and its divergence check assumes
      ``global_step == 0``. This callback gives the sweep a fresh epoch, step counter and data
      iterator, and puts the loops' state back afterwards, so the epoch then trains as it would have.

    FSDP and DeepSpeed: refused in ``setup`` with what to do instead (sweep under DDP or on one GPU).

    The first sweep runs at the start of ``fit``; a run resumed from a checkpoint skips it. With a
    frozen backbone it tunes the head's LR.

    Args:
        min_lr, max_lr: range of the sweep.
        num_training_steps: steps of the sweep (100-500).
        mode: ``"exponential"`` or ``"linear"`` ramp.
        early_stop_threshold: stop the sweep when the loss exceeds this multiple of the best loss.
        rule: ``"steepest"``, ``"min_div_10"`` or ``"valley"``.
        skip_begin, skip_end: points ignored at both ends of the curve.
        milestones: epochs at whose start the sweep runs again.
        update_attr: also set the module's ``lr`` (``attr_name``) attribute to the suggestion.
        attr_name: LR attribute of the module; ``lr`` or ``learning_rate`` when empty.

    Example::

        >>> import lightning.pytorch as pl, torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> class Line(pl.LightningModule):
        ...     def __init__(self, lr=1e-3):
        ...         super().__init__()
        ...         self.lr, self.w = lr, torch.nn.Linear(4, 1)
        ...     def training_step(self, batch, i):
        ...         return torch.nn.functional.mse_loss(self.w(batch[0]), batch[0].sum(1, keepdim=True))
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=self.lr)
        >>> x = torch.randn(640, 4, generator=torch.Generator().manual_seed(0))
        >>> finder = LRFinder(num_training_steps=40, skip_begin=2)
        >>> trainer = pl.Trainer(max_steps=1, callbacks=[finder], logger=False, accelerator="cpu",
        ...     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        ...     default_root_dir=__import__("tempfile").mkdtemp())
        >>> trainer.fit(Line(), DataLoader(TensorDataset(x), batch_size=16))
        >>> 1e-3 < finder.suggested_lr < 1, (Path(trainer.default_root_dir) / "lr_find.csv").is_file()
        (True, True)
    """

    def __init__(
        self,
        min_lr: float = 1e-7,
        max_lr: float = 10.0,
        num_training_steps: int = 100,
        mode: Literal["exponential", "linear"] = "exponential",
        early_stop_threshold: float | None = 4.0,
        rule: Rule = "steepest",
        skip_begin: int = 10,
        skip_end: int = 1,
        milestones: list[int] | None = None,
        update_attr: bool = True,
        attr_name: str = "",
    ) -> None:
        if not 0 < min_lr < max_lr:
            raise ValueError(f"need 0 < min_lr < max_lr, got min_lr={min_lr}, max_lr={max_lr}")
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        if num_training_steps < skip_begin + skip_end + 3:
            raise ValueError(
                f"num_training_steps={num_training_steps} leaves fewer than 3 points after "
                f"skip_begin={skip_begin} "
                f"and skip_end={skip_end}"
            )
        super().__init__(
            min_lr, max_lr, num_training_steps, mode, early_stop_threshold, update_attr, attr_name
        )
        # Own copies of the settings (Lightning keeps them in private attributes of the parent).
        self.min_lr = min_lr
        self.max_lr = max_lr
        self.num_training_steps = num_training_steps
        self.mode = mode
        self.early_stop_threshold = early_stop_threshold
        self.update_attr = update_attr
        self.attr_name = attr_name
        self.rule = rule
        self.skip_begin = skip_begin
        self.skip_end = skip_end
        self.milestones = list(milestones or [])
        self.suggested_lr: float | None = None
        self.reason = ""
        self.results: dict[str, list[float]] = {}
        self.history: list[dict[str, Any]] = []

    @classmethod
    def strategy_refusal(cls, strategy: type) -> str | None:
        """Why LRFinder cannot run under the strategy class ``strategy``, or ``None`` if it can.

        Asked in ``setup`` and, before anything is built, by :mod:`lightning_recipes.preflight`.
        """
        from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

        if not issubclass(strategy, (FSDPStrategy, DeepSpeedStrategy)):
            return None
        return (
            f"LRFinder does not run under {strategy.__name__}: its sweep saves and restores the whole "
            "trainer state, which is untested with sharded parameters. Sweep on one GPU or with "
            "--trainer.strategy=ddp (stages: [fit], a few hundred steps), then set --model.init_args.lr "
            "to the suggested value and remove LRFinder from the FSDP run"
        )

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        refusal = self.strategy_refusal(type(trainer.strategy)) if stage == "fit" else None
        if refusal:
            raise NotImplementedError(refusal)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.ckpt_path:
            rank_zero_info("LRFinder: resuming from a checkpoint, so the initial sweep is skipped")
            return
        self.lr_find(trainer, pl_module)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch in self.milestones and trainer.current_epoch not in self._swept_epochs:
            self.lr_find(trainer, pl_module)

    @property
    def _swept_epochs(self) -> list[int]:
        return [h["epoch"] for h in self.history]

    @override
    def lr_find(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        mid_fit = trainer.global_step > 0 or epoch > 0
        # Mid-fit: give Lightning's sweep a fresh epoch, step counter and data iterator (see docstring).
        with (
            _compat.fresh_fit_loop(trainer) if mid_fit else nullcontext(),
            isolate_rng(include_cuda=trainer.strategy.root_device.type == "cuda"),
        ):
            finder = _compat.lr_range_test(
                trainer,
                pl_module,
                min_lr=self.min_lr,
                max_lr=self.max_lr,
                num_training=self.num_training_steps,
                mode=self.mode,
                early_stop_threshold=self.early_stop_threshold,
            )
        self.optimal_lr = finder
        if finder is None:  # fast_dev_run
            return
        lrs = [float(v) for v in finder.results["lr"]]
        losses = [float(v) for v in finder.results["loss"]]
        self.results = {"lr": lrs, "loss": losses}
        lr, reason = suggest_lr(lrs, losses, self.rule, self.skip_begin, self.skip_end)
        lr, reason = trainer.strategy.broadcast((lr, reason))
        self.suggested_lr, self.reason = lr, reason
        if lr is None:
            rank_zero_warn(
                f"LRFinder found no learning rate to suggest ({reason}); learning rates left unchanged."
            )
        else:
            self.apply(trainer, pl_module, lr)
            rank_zero_info(f"LRFinder ({self.rule}): learning rate set to {lr:.4g}; {reason}")
        self.history.append({"epoch": epoch, "lr": lr, "reason": reason})
        if trainer.is_global_zero:
            self._write(trainer, epoch, lrs, losses, lr)

    def apply(self, trainer: pl.Trainer, pl_module: pl.LightningModule, lr: float) -> None:
        """Set the reference group's LR to ``lr`` and scale every other LR entry by the same factor.

        The reference group is ``"head"`` when groups are named, else the first; the scaling (groups and
        the schedulers' per-group lists) is :func:`~lightning_recipes.callbacks._lr_groups.scale_group_lrs`.
        """
        for optimizer in trainer.optimizers:
            factor = lr / float(optimizer.param_groups[reference_index(optimizer)]["lr"])
            scale_group_lrs(optimizer, schedulers_of(trainer, optimizer), factor)
        attr = self.attr_name or next(
            (a for a in ("lr", "learning_rate") if lightning_hasattr(pl_module, a)), ""
        )
        if self.update_attr and attr:
            lightning_setattr(pl_module, attr, lr)

    def run_dir(self, trainer: pl.Trainer) -> Path:
        """Where the curve goes: the logger's run directory, else the Trainer's ``default_root_dir``."""
        return (
            Path(trainer.log_dir or trainer.default_root_dir)
            if trainer.loggers
            else Path(trainer.default_root_dir)
        )

    def _write(
        self, trainer: pl.Trainer, epoch: int, lrs: list[float], losses: list[float], lr: float | None
    ) -> None:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        out = self.run_dir(trainer)
        out.mkdir(parents=True, exist_ok=True)
        stem = "lr_find" if epoch == 0 else f"lr_find_epoch{epoch}"
        with (out / f"{stem}.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["lr", "loss"])
            writer.writerows(zip(lrs, losses, strict=True))
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(lrs, losses)
        if self.mode == "exponential":
            ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss (smoothed)")
        if lr is not None:
            ax.axvline(lr, color="red", linestyle="--", label=f"{self.rule}: {lr:.3g}")
            ax.legend()
        else:
            ax.set_title(f"no suggestion: {self.reason}", fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"{stem}.png", dpi=100)
        for logger in trainer.loggers:
            if lr is not None:
                logger.log_metrics({"lr_finder/suggested_lr": lr}, step=trainer.global_step)
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_figure"):  # TensorBoard
                experiment.add_figure(f"lr_finder/{stem}", fig, global_step=trainer.global_step)
            elif hasattr(logger, "log_image"):  # Weights & Biases
                logger.log_image(key=f"lr_finder/{stem}", images=[str(out / f"{stem}.png")])
        plt.close(fig)
        self.files = [out / f"{stem}.csv", out / f"{stem}.png"]
