"""Drawing random numbers without changing the caller's: a zoo build, ``suggest``'s random-init backbone."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

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
