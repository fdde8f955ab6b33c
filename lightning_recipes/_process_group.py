"""Destroy the distributed process group a run leaves behind, at interpreter exit, whatever its backend.

Lightning destroys the default process group at exit only for NCCL (an ``atexit`` handler registered by
``_init_dist_connection``); a CPU run's gloo group stays alive until C++ static destruction, where
torch 2.15 aborts now and then ("terminate called without an active exception", SIGABRT, with no
Python frame) after the run has finished. A DDP run on CPU processes (``lightning run
--trainer.devices=2``, ``torchrun``) then exits 134 although it succeeded. Importing
``lightning_recipes`` registers :func:`destroy_process_group_at_exit`, which destroys a group still
alive at exit, so every process ends as its run did. Processes started by ``multiprocessing``
(``strategy="ddp_spawn"``) never run ``atexit`` handlers; ``lightning run`` uses ``ddp``, whose
processes do.
"""

from __future__ import annotations

import atexit
import sys


def destroy_process_group_at_exit() -> bool:
    """Destroy the default process group if one is still initialised; return whether it did.

    Registered with ``atexit`` when ``lightning_recipes`` is imported. Where Lightning's own handler
    ran first (NCCL), or no group was ever made, it does nothing; torch is never imported by it.

    Example::

        >>> import tempfile, torch.distributed as dist
        >>> store = f"file://{tempfile.mkdtemp()}/store"
        >>> dist.init_process_group("gloo", init_method=store, rank=0, world_size=1)
        >>> destroy_process_group_at_exit(), dist.is_initialized()
        (True, False)
        >>> destroy_process_group_at_exit()
        False
    """
    if "torch.distributed" not in sys.modules:
        return False
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return False
    dist.destroy_process_group()
    return True


atexit.register(destroy_process_group_at_exit)
