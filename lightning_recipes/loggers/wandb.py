"""WandbLogger that never hangs or prompts, keeps its run id in checkpoints, and logs the resolved recipe."""

from __future__ import annotations

import os
import re
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import lightning as L
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from typing_extensions import override

from lightning_recipes import _compat

RUN_ID_KEY = "wandb_run_id"
OFFLINE_MODES = ("offline", "dryrun")


def offline_reason(mode: str | None) -> str | None:
    """Why the run must be offline before trying the server (``None``: try online).

    ``mode`` is an explicit ``wandb.init`` mode; without one, wandb's own setting counts (``WANDB_MODE``,
    ``wandb offline``). Credentials are looked up by wandb itself, without a prompt and without the
    network (``wandb.login(prompt=False, verify=False)``: ``WANDB_API_KEY``, ``wandb login``'s netrc
    entry, an identity token file).

    Example::

        >>> offline_reason("offline")
        'offline mode was requested'
    """
    import wandb

    mode = mode or wandb.setup().settings.mode
    if mode in OFFLINE_MODES:
        return "offline mode was requested"
    if mode == "disabled":
        return None
    if not wandb.login(prompt=False, verify=False):
        return "no W&B credentials (WANDB_API_KEY or `wandb login`)"
    return None


#: The ``WANDB_DATA_DIR`` this module set last (``None``: none); a value the user set is never changed.
_STAGING: list[str | None] = [None]


def stage_artifacts_in(folder: Path) -> None:
    """Make wandb stage artifact files (the copies of checkpoints it uploads, or keeps for ``wandb sync``
    offline) in ``folder/artifacts/staging``, with the run, instead of ``~/.local/share/wandb``: sets
    ``WANDB_DATA_DIR`` (wandb's own variable) unless the user set it."""
    current = os.environ.get("WANDB_DATA_DIR")
    if current is None or current == _STAGING[0]:
        _STAGING[0] = os.environ["WANDB_DATA_DIR"] = str(folder.resolve())


def offline_folders(run_dir: Path, run_id: str) -> list[Path]:
    """Every ``offline-run-<time>-<id>`` folder of run ``run_id`` beside ``run_dir``, oldest first: a resumed
    offline run writes one folder per start, and ``wandb sync`` uploads them in that order."""
    pattern = re.compile(rf"offline-run-(\d{{8}}_\d{{6}})-{re.escape(run_id)}(?:-(\d+))?")
    found = [(m[1], int(m[2] or 0), p) for p in run_dir.parent.iterdir() if (m := pattern.fullmatch(p.name))]
    return [p for *_, p in sorted(found)] or [run_dir]  # two starts in one second: wandb adds -1, -2...


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` for recipes: typed options, offline fallback, bounded checkpoint uploads.

    * Without credentials (``WANDB_API_KEY`` or ``wandb login``), when ``wandb.init`` cannot reach the
      server within ``init_timeout`` seconds (wandb's ``CommError``), or with ``offline: true`` /
      ``WANDB_MODE=offline``, the run is recorded offline (no hang, no prompt) and one line says why,
      where it lives and the ``wandb sync`` command that uploads it later.
    * Only rank zero creates the run (Lightning's ``rank_zero_experiment``): one run per training.
    * ``log_model=True`` uploads the best and the last checkpoint of each ``ModelCheckpoint`` at the
      end of training (aliases ``best``/``last``/``latest``; at most two files per training),
      ``"all"`` uploads them whenever they change; ``model_ttl_days`` sets a W&B retention (TTL)
      policy on the uploaded versions. Offline, the artifacts are kept for ``wandb sync``. wandb stages
      a copy of each uploaded file; it goes under ``<save_dir>/wandb/artifacts/staging`` with the run
      (one copy of the best and of the last checkpoint), not in the home folder, unless
      ``WANDB_DATA_DIR`` is set.
    * ``id``/``version`` continue a run (``resume="allow"``); with :class:`WandbRunId` (added by the
      CLI) the id is stored in every checkpoint, and the CLI passes it back when resuming from one.

    Args:
        project: W&B project (default ``$WANDB_PROJECT`` or ``lightning_logs``).
        name: display name of the run.
        tags: run tags.
        group: group runs (e.g. the runs of a sweep).
        entity: team or user that owns the project.
        notes: a longer description of the run.
        job_type: e.g. ``"train"`` or ``"eval"``.
        save_dir: folder under which ``wandb/`` (the local run files) is written.
        id: run id to continue (also ``version``).
        offline: record offline; upload later with ``wandb sync``.
        log_model: upload checkpoints as artifacts: ``False``, ``True`` (best and last, at the end) or
            ``"all"`` (best and last, whenever they change).
        model_ttl_days: delete uploaded checkpoint versions this many days after upload (W&B TTL policy).
        init_timeout: seconds ``wandb.init`` may take to start the run online before it falls back to
            offline (wandb's ``init_timeout`` setting, whose own default is 90 s; a ``settings`` argument
            given as a ``wandb.Settings`` keeps its own).
        prefix, checkpoint_name, anonymous, dir, version, add_file_policy: as in Lightning's ``WandbLogger``.
        **kwargs: other ``wandb.init`` arguments.

    Example::

        >>> logger = WandbLogger(project="demo", tags=["resnet", "digits"], offline=True)
        >>> logger.name, _compat.wandb_init_kwargs(logger)["tags"]
        ('demo', ['resnet', 'digits'])
    """

    def __init__(
        self,
        project: str | None = None,
        name: str | None = None,
        tags: list[str] | None = None,
        group: str | None = None,
        entity: str | None = None,
        notes: str | None = None,
        job_type: str | None = None,
        save_dir: str = ".",
        id: str | None = None,
        offline: bool = False,
        log_model: bool | Literal["all"] = False,
        model_ttl_days: float | None = None,
        init_timeout: float = 15.0,
        prefix: str = "",
        checkpoint_name: str | None = None,
        anonymous: bool | None = None,
        dir: str | None = None,
        version: str | None = None,
        add_file_policy: Literal["mutable", "immutable"] = "mutable",
        **kwargs: Any,
    ) -> None:
        if model_ttl_days is not None and model_ttl_days <= 0:
            raise ValueError(f"model_ttl_days must be > 0 (or None for no TTL), got {model_ttl_days}")
        if init_timeout <= 0:
            raise ValueError(f"init_timeout must be > 0 seconds (wandb's default is 90), got {init_timeout}")
        extra = {"tags": tags, "group": group, "entity": entity, "notes": notes, "job_type": job_type}
        # LightningCLI fills **kwargs with every wandb.init default (resume=None...): keep only real values,
        # so that Lightning's resume="allow" survives.
        kwargs = {k: v for k, v in {**kwargs, **extra}.items() if v is not None}
        if offline:
            kwargs["mode"] = "offline"
        # offline=False for Lightning: it refuses log_model offline, but W&B keeps offline artifacts for sync.
        super().__init__(
            name=name,
            save_dir=save_dir,
            version=version,
            offline=False,
            dir=dir,
            id=id,
            anonymous=anonymous,
            project=project,
            log_model=log_model,
            prefix=prefix,
            checkpoint_name=checkpoint_name,
            add_file_policy=add_file_policy,
            **kwargs,
        )
        init_kwargs = _compat.wandb_init_kwargs(self)
        if init_kwargs.get("anonymous") is None:
            init_kwargs.pop("anonymous", None)  # wandb warns about the setting even when None
        if save_dir is not None:
            Path(save_dir).mkdir(parents=True, exist_ok=True)
        self.model_ttl_days = model_ttl_days
        self.init_timeout = init_timeout
        self.offline_reason: str | None = None

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The ``wandb`` run, started on first use (rank zero only; other ranks get a no-op object)."""
        if _compat.wandb_run_pending(self):
            import wandb

            if wandb.run is None:
                stage_artifacts_in(Path(self.save_dir or ".") / "wandb")
                run = self._start_run()
                if self.offline_reason is not None and getattr(run, "dir", None):
                    run_dir = Path(run.dir).parent
                    folders = " ".join(str(f) for f in offline_folders(run_dir, run.id))
                    print(
                        f"wandb: {self.offline_reason}: run {run.id} is recorded offline in {run_dir}; "
                        f"upload it with `wandb sync {folders}`",
                        file=sys.stderr,
                        flush=True,
                    )
                return run
        return _compat.lightning_wandb_experiment(self)

    def _start_run(self) -> Any:
        """``wandb.init`` online, or offline with :attr:`offline_reason` set when it cannot be online."""
        import wandb

        init_kwargs = _compat.wandb_init_kwargs(self)
        self.offline_reason = offline_reason(init_kwargs.get("mode"))
        if self.offline_reason is None:
            settings = init_kwargs.get("settings")
            if settings is None or isinstance(settings, dict):
                init_kwargs["settings"] = {"init_timeout": self.init_timeout, **(settings or {})}
            try:
                return _compat.lightning_wandb_experiment(self)
            except wandb.errors.CommError as exc:  # wandb's error for a server it could not talk to
                # wandb's message on one line, without its advice to pass init_timeout to wandb.init
                detail = " ".join(str(exc).split("\nConsider")[0].split()) or type(exc).__name__
                self.offline_reason = (
                    f"wandb.init could not reach the W&B server within {self.init_timeout:g} s ({detail})"
                )
        init_kwargs["mode"] = "offline"
        return _compat.lightning_wandb_experiment(self)

    @property
    def offline(self) -> bool:
        """Whether the run is (or will be) recorded offline."""
        return _compat.wandb_init_kwargs(self).get("mode") in OFFLINE_MODES

    # Overrides a private method of Lightning's WandbLogger: the name and signature relied upon are
    # `_compat.WANDB_LOGGER_OVERRIDES`, checked by tests/_compat/test_compat_wandb_logger.py.
    def _scan_and_log_checkpoints(self, checkpoint_callback: ModelCheckpoint) -> None:
        """Upload the best and the last checkpoint when they are new or changed (bounded: two files)."""
        import wandb

        candidates = {}
        best = getattr(checkpoint_callback, "best_model_path", "")
        last = getattr(checkpoint_callback, "last_model_path", "")
        if last:
            candidates[last] = ["last"]
        if best:
            candidates.setdefault(best, []).insert(0, "best")
        logged = _compat.wandb_logged_model_times(self)
        todo = []
        for path, aliases in candidates.items():
            if not Path(path).is_file():
                continue
            mtime = Path(path).stat().st_mtime
            if logged.get(path, -1.0) < mtime:
                todo.append((mtime, path, aliases))
        for i, (mtime, path, aliases) in enumerate(sorted(todo)):
            score = (
                checkpoint_callback.best_model_score
                if "best" in aliases
                else checkpoint_callback.current_score
            )
            metadata = {
                "score": score.item() if hasattr(score, "item") else score,
                "original_filename": Path(path).name,
                "monitor": checkpoint_callback.monitor,
                "mode": checkpoint_callback.mode,
            }
            artifact = wandb.Artifact(
                name=_compat.wandb_checkpoint_artifact_name(self), type="model", metadata=metadata
            )
            # skip_cache: no second copy in wandb's cache (~/.cache/wandb); the staged copy is the run's
            artifact.add_file(path, name="model.ckpt", policy=self.add_file_policy, skip_cache=True)
            if self.model_ttl_days is not None:
                artifact.ttl = timedelta(days=self.model_ttl_days)
            latest = ["latest"] if i == len(todo) - 1 else []
            self.experiment.log_artifact(artifact, aliases=aliases + latest)
            logged[path] = mtime


def _wandb_loggers(trainer: L.Trainer) -> list[_LightningWandbLogger]:
    return [logger for logger in trainer.loggers if isinstance(logger, _LightningWandbLogger)]


def finish_runs(trainer: L.Trainer) -> None:
    """Finish the W&B runs the trainer's loggers started (``lightning run``, after its stages): their files
    are complete, and a later run in the same process (a notebook, a test, a study) starts its own run
    instead of logging into this one (Lightning's logger takes over a run already in progress)."""
    for logger in _wandb_loggers(trainer):
        if not _compat.wandb_run_pending(logger) and trainer.is_global_zero:
            logger.experiment.finish()


class WandbRunId(Callback):
    """Store the W&B run id in every checkpoint (``checkpoint["wandb_run_id"]``) for resuming.

    :func:`run_id_from_checkpoint` reads it back; pass it as the logger's ``id`` to continue the run.
    ``LightningRecipesCLI`` adds this callback through :class:`LoggerSaveConfigCallback`.

    Example::

        >>> checkpoint = {}
        >>> WandbRunId().on_save_checkpoint(L.Trainer(logger=False), None, checkpoint)
        >>> checkpoint
        {}
    """

    @override
    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        store_run_id(trainer, checkpoint)


def store_run_id(trainer: L.Trainer, checkpoint: dict[str, Any]) -> None:
    """Put the id of the trainer's first W&B run into ``checkpoint`` (rank zero's dict is the one saved)."""
    for logger in _wandb_loggers(trainer):
        run_id = logger.version
        if run_id:
            checkpoint[RUN_ID_KEY] = run_id
            return


def run_id_from_checkpoint(path: str | os.PathLike | None) -> str | None:
    """The W&B run id stored in a Lightning checkpoint, or ``None`` (no such file, or no id stored).

    Reads the file memory-mapped, so large checkpoints load no tensors. Special ``ckpt_path`` values
    of the Trainer (``"last"``, ``"best"``, ``"hpc"``) name no file yet and give ``None``.

    Example::

        >>> import tempfile, torch
        >>> path = tempfile.mktemp(suffix=".ckpt")
        >>> torch.save({"state_dict": {}, "wandb_run_id": "abc123"}, path)
        >>> run_id_from_checkpoint(path), run_id_from_checkpoint("last")
        ('abc123', None)
    """
    import torch

    if path is None or not Path(path).is_file():
        return None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except RuntimeError:  # an old (non-zip) serialization cannot be memory-mapped
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    run_id = checkpoint.get(RUN_ID_KEY) if isinstance(checkpoint, dict) else None
    return str(run_id) if run_id else None


def apply_resume_id(logger_config: Any, ckpt_path: str | os.PathLike | None) -> str | None:
    """Set ``id`` of a parsed ``trainer.logger`` config to the run id stored in ``ckpt_path``.

    ``logger_config`` is what LightningCLI parsed for ``trainer.logger``: one ``{class_path, init_args}``
    (a jsonargparse ``Namespace`` or a dict), a list of them, or a bool/``None`` (nothing to do). Only a
    W&B logger without an explicit ``id``/``version`` is changed. Returns the id applied, if any.

    Example::

        >>> import tempfile, torch
        >>> path = tempfile.mktemp(suffix=".ckpt")
        >>> torch.save({"wandb_run_id": "abc123"}, path)
        >>> config = {"class_path": "lightning_recipes.loggers.WandbLogger", "init_args": {"project": "p"}}
        >>> apply_resume_id(config, path), config["init_args"]["id"]
        ('abc123', 'abc123')
    """
    entries = logger_config if isinstance(logger_config, (list, tuple)) else [logger_config]
    targets = []
    for entry in entries:
        if entry is None or isinstance(entry, bool):
            continue
        class_path = str(entry.get("class_path", "") if hasattr(entry, "get") else "")
        if not class_path.endswith("WandbLogger"):
            continue
        init_args = entry.get("init_args")
        if init_args is None:
            entry["init_args"] = init_args = {}
        if init_args.get("id") or init_args.get("version"):
            continue
        targets.append(init_args)
    if not targets:
        return None
    run_id = run_id_from_checkpoint(ckpt_path)
    if run_id is None:
        return None
    targets[0]["id"] = run_id  # the first W&B logger owns the stored id
    return run_id


class LoggerSaveConfigCallback(SaveConfigCallback):
    """LightningCLI's config saver that also logs the resolved recipe and keeps the W&B run id in checkpoints.

    Besides ``config.yaml`` in the log dir (Lightning's behaviour), rank zero logs the whole resolved
    config, nested (``recipe.trainer.max_epochs``, ``recipe.model.init_args.lr`` ...), once per run
    to each W&B logger, and every checkpoint gets the W&B run id (see :class:`WandbRunId`).
    Use it as ``LightningCLI(save_config_callback=LoggerSaveConfigCallback)``.
    """

    @override
    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        loggers = _wandb_loggers(trainer)
        if not loggers:
            return
        recipe = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in loggers:
            logger.experiment.config.update({"recipe": recipe}, allow_val_change=True)

    @override
    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        store_run_id(trainer, checkpoint)
