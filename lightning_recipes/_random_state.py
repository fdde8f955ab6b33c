"""Building weights inside a run without changing the run: the caller's random state is put back."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: The environment variables ``seed_everything`` sets; a build puts them back as they were.
SEED_ENV_VARS = ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")


@contextmanager
def random_state_untouched() -> Iterator[None]:
    """Run a block without changing the caller's random state.

    The torch (CPU and CUDA), numpy and Python ``random`` generators (Lightning's ``isolate_rng``) and
    the ``PL_GLOBAL_SEED`` / ``PL_SEED_WORKERS`` variables ``seed_everything`` sets are put back on exit.

    Example::

        >>> import torch
        >>> _ = torch.manual_seed(1)
        >>> with random_state_untouched():
        ...     _ = torch.manual_seed(2), torch.rand(3)
        >>> torch.rand(1)  # the first draw after manual_seed(1)
        tensor([0.7576])
    """
    from lightning.pytorch.utilities.seed import isolate_rng

    env = {name: os.environ.get(name) for name in SEED_ENV_VARS}
    try:
        with isolate_rng():
            yield
    finally:
        for name, value in env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def build_trainer(**settings: Any) -> Any:
    """The quiet one-CPU ``Trainer`` a zoo build trains its source task with: no logger, checkpoints,
    progress bar, model summary or validation; ``settings`` (``max_epochs``, ``max_steps``,
    ``gradient_clip_val``, ...) are added to these.

    Example::

        >>> build_trainer(max_epochs=2).max_epochs
        2
    """
    import lightning as L

    quiet = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "limit_val_batches": 0,
    }
    return L.Trainer(**quiet, **settings)
