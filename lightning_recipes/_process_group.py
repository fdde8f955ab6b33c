"""Destroy the distributed process group a ``lightning`` command leaves behind, whatever its backend.

Lightning destroys the default process group at exit only for NCCL (an ``atexit`` handler registered by
``_init_dist_connection``); a CPU run's gloo group stays alive until C++ static destruction, where
torch aborts now and then ("terminate called without an active exception", SIGABRT, with no Python
frame) after the run has finished. A DDP run on CPU processes (``lightning run --trainer.devices=2``,
``torchrun``) then exits 134 although it succeeded. The command line (:func:`lightning_recipes.cli.main`,
which every process of such a run goes through) calls :func:`destroy_leftover_process_group` when its
command ends, so every process exits as its run did. Importing ``lightning_recipes`` registers
nothing. A script of your own that trains with ``strategy="ddp"`` on CPU processes ends with
``torch.distributed.destroy_process_group()``, as torch recommends.
"""

from __future__ import annotations

import sys


def destroy_leftover_process_group() -> bool:
    """Destroy the default process group if one is still initialised; return whether it did.

    Called by the command line when a command ends. Where Lightning already destroyed the group, or
    no group was ever made, it does nothing; torch is never imported by it.

    Example::

        >>> import tempfile, torch.distributed as dist
        >>> store = f"file://{tempfile.mkdtemp()}/store"
        >>> dist.init_process_group("gloo", init_method=store, rank=0, world_size=1)
        >>> destroy_leftover_process_group(), dist.is_initialized()
        (True, False)
        >>> destroy_leftover_process_group()
        False
    """
    if "torch.distributed" not in sys.modules:
        return False
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return False
    dist.destroy_process_group()
    return True
