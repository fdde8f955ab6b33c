"""WandbLogger that never hangs or prompts, keeps its run id in checkpoints, and logs the resolved recipe."""

from __future__ import annotations

import netrc
import os
import socket
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

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


def has_credentials() -> bool:
    """Whether W&B can authenticate without prompting: ``WANDB_API_KEY`` or a netrc login for the host.

    The host is that of ``WANDB_BASE_URL`` (default ``https://api.wandb.ai``); the netrc file is
    ``$NETRC`` or ``~/.netrc`` (where ``wandb login`` writes).
    """
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = os.environ.get("NETRC") or str(Path.home() / ".netrc")
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def server_reachable(timeout: float) -> bool:
    """Whether a TCP connection to the W&B server (``WANDB_BASE_URL``) opens within ``timeout`` seconds."""
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((url.hostname or "api.wandb.ai", port), timeout=timeout):
            return True
    except OSError:
        return False


def offline_reason(mode: str | None, connect_timeout: float) -> str | None:
    """Why the run must be offline (``None``: go online). ``mode`` is an explicit ``wandb.init`` mode.

    Example::

        >>> offline_reason("offline", 1.0)
        'offline mode was requested'
    """
    mode = mode or os.environ.get("WANDB_MODE")
    if mode in OFFLINE_MODES:
        return "offline mode was requested"
    if mode == "disabled":
        return None
    if not has_credentials():
        return "no W&B credentials (WANDB_API_KEY or a `wandb login` netrc entry)"
    if connect_timeout > 0 and not server_reachable(connect_timeout):
        return f"the W&B server did not answer within {connect_timeout:g} s"
    return None


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` for recipes: typed options, offline fallback, bounded checkpoint uploads.

    * Without credentials (``WANDB_API_KEY`` or ``wandb login``), with an unreachable server, or with
      ``offline: true`` / ``WANDB_MODE=offline``, the run is recorded offline (no hang, no prompt) and
      one line says where it lives and the ``wandb sync`` command that uploads it later.
    * Only rank zero creates the run (Lightning's ``rank_zero_experiment``): one run per training.
    * ``log_model=True`` uploads the best and the last checkpoint of each ``ModelCheckpoint`` at the
      end of training (aliases ``best``/``last``/``latest``; at most two files per training),
      ``"all"`` uploads them whenever they change; ``model_ttl_days`` sets a W&B retention (TTL)
      policy on the uploaded versions. Offline, the artifacts are kept for ``wandb sync``.
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
        connect_timeout: seconds to wait for the W&B server before falling back to offline (0: no check).
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
        connect_timeout: float = 3.0,
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
        self.connect_timeout = connect_timeout
        self.offline_reason: str | None = None

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The ``wandb`` run, started on first use (rank zero only; other ranks get a no-op object)."""
        if _compat.wandb_run_pending(self):
            import wandb

            if wandb.run is None:
                init_kwargs = _compat.wandb_init_kwargs(self)
                self.offline_reason = offline_reason(init_kwargs.get("mode"), self.connect_timeout)
                if self.offline_reason is not None:
                    init_kwargs["mode"] = "offline"
                run = _compat.lightning_wandb_experiment(self)
                if self.offline_reason is not None and getattr(run, "dir", None):
                    run_dir = Path(run.dir).parent
                    print(
                        f"wandb: {self.offline_reason}: run {run.id} is recorded offline in {run_dir}; "
                        f"upload it with `wandb sync {run_dir}`",
                        file=sys.stderr,
                        flush=True,
                    )
                return run
        return _compat.lightning_wandb_experiment(self)

    @property
    def offline(self) -> bool:
        """Whether the run is (or will be) recorded offline."""
        return _compat.wandb_init_kwargs(self).get("mode") in OFFLINE_MODES

    # Overrides a private method of Lightning's WandbLogger: the name and signature relied upon are
    # `_compat.WANDB_LOGGER_OVERRIDES`, checked by tests/test_compat.py.
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
            artifact.add_file(path, name="model.ckpt", policy=self.add_file_policy)
            if self.model_ttl_days is not None:
                artifact.ttl = timedelta(days=self.model_ttl_days)
            latest = ["latest"] if i == len(todo) - 1 else []
            self.experiment.log_artifact(artifact, aliases=aliases + latest)
            logged[path] = mtime


def _wandb_loggers(trainer: L.Trainer) -> list[_LightningWandbLogger]:
    return [logger for logger in trainer.loggers if isinstance(logger, _LightningWandbLogger)]


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
