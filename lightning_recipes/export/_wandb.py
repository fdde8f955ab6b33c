"""The export as a W&B ``model`` artifact: when the run logged to W&B, ``lightning-recipes export`` adds the
exported folder (its model card included) to that run, resumed by the id its checkpoint stores.

The run's own logger settings are used (:class:`~lightning_recipes.loggers.WandbLogger`: project, entity,
``save_dir``, offline), so the artifact goes where the run went: online, or offline for ``wandb sync``
when W&B is offline (``WANDB_MODE=offline``, ``offline: true``, no credentials, no server).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: W&B disabled: wandb's own switches (``WANDB_MODE=disabled``, the older ``WANDB_DISABLED=true``).
_DISABLED = ("disabled",)


class WandbExportError(RuntimeError):
    """Logging the export to W&B failed; the message is one line saying why and what to do."""


@dataclass(frozen=True)
class LoggedArtifact:
    """The artifact :func:`log_to_wandb` logged: its name and aliases, the run, and whether offline."""

    name: str
    aliases: list[str]
    run_id: str
    offline: bool
    run_dir: Path | None


def wandb_logger_args(config: dict[str, Any]) -> dict[str, Any] | None:
    """The ``init_args`` of the first W&B logger in a run's resolved config (``trainer.logger``: one entry
    or a list), or ``None`` when the run did not log to W&B.

    Example::

        >>> wandb_logger_args({"trainer": {"logger": [
        ...     {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "logs"}},
        ...     {"class_path": "lightning_recipes.loggers.WandbLogger", "init_args": {"project": "p"}}]}})
        {'project': 'p'}
        >>> wandb_logger_args({"trainer": {"logger": False}}) is None
        True
    """
    loggers = (config.get("trainer") or {}).get("logger")
    for entry in loggers if isinstance(loggers, list) else [loggers]:
        if isinstance(entry, dict) and str(entry.get("class_path", "")).endswith("WandbLogger"):
            return dict(entry.get("init_args") or {})
    return None


def disabled(init_args: dict[str, Any]) -> bool:
    """Whether W&B is off: ``WANDB_MODE=disabled``, ``WANDB_DISABLED=true`` or the logger's ``mode``."""
    if str(os.environ.get("WANDB_DISABLED", "")).lower() in ("true", "1", "yes"):
        return True
    return os.environ.get("WANDB_MODE") in _DISABLED or init_args.get("mode") in _DISABLED


def artifact_name(folder: Path) -> str:
    """A W&B artifact name for an export folder: its name, with what W&B refuses replaced by ``-``.

    Example::

        >>> artifact_name(Path("exported/sst2 minilm+onnx"))
        'sst2-minilm-onnx'
    """
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", folder.name).strip("-.") or "export"


def log_to_wandb(
    folder: str | Path, checkpoint: str | Path, config: dict[str, Any], record: dict[str, Any]
) -> LoggedArtifact | None:
    """Log the export ``folder`` as a ``model`` artifact to the W&B run of its ``checkpoint``.

    Args:
        folder: the finished export folder (model, ``export.json``, the model card ``README.md``).
        checkpoint: the checkpoint it came from; the W&B run id it stores is the run resumed.
        config: the run's resolved ``config.yaml`` (its ``trainer.logger`` says whether and where W&B ran).
        record: ``export.json``'s content, the artifact's metadata.

    Returns:
        What was logged, or ``None`` when the run did not log to W&B or W&B is disabled.

    Raises:
        WandbExportError: wandb is not installed, or logging failed.
    """
    init_args = wandb_logger_args(config)
    if init_args is None or disabled(init_args):
        return None
    try:
        import wandb
    except ImportError as exc:
        raise WandbExportError("the run logged to W&B but wandb is not installed: pip install wandb") from exc
    from lightning_recipes.loggers.wandb import WandbLogger, run_id_from_checkpoint

    folder = Path(folder)
    run_id = run_id_from_checkpoint(checkpoint) or init_args.get("id") or init_args.get("version")
    args = {k: v for k, v in init_args.items() if k not in ("id", "version", "log_model", "experiment")}
    card = folder / "README.md"
    name, aliases = artifact_name(folder), [str(record.get("format", "export"))]
    run = None
    try:
        logger = WandbLogger(**args, id=run_id, log_model=False)
        run = logger.experiment
        artifact = wandb.Artifact(
            name=name,
            type="model",
            description=card.read_text() if card.is_file() else None,
            metadata=record,
        )
        artifact.add_dir(str(folder), skip_cache=True)  # no copy of the export in wandb's cache
        run.log_artifact(artifact, aliases=aliases)
        run_dir = Path(run.dir).parent if getattr(run, "dir", None) else None
        logged = LoggedArtifact(name, aliases, str(run.id), logger.offline_reason is not None, run_dir)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise WandbExportError(f"logging the export to W&B failed ({type(exc).__name__}: {first})") from exc
    finally:
        if run is not None:
            run.finish()
    return logged
