"""DDP in spawned CPU processes for tests that cannot re-launch pytest (``strategy="ddp"`` would).

Lightning destroys the process group at exit only for NCCL, and a ``lightning-recipes`` command destroys
any group left when it ends (``lightning_recipes/_process_group.py``); but a ``multiprocessing`` child
never reaches that end (nor runs ``atexit`` handlers), and with torch's gloo a child that exits
with its group alive aborts now and then ("terminate called without an active exception", SIGABRT)
after its work is done, failing a run that succeeded. :class:`SpawnedDDP` destroys the group when the
strategy tears down, in the child.
"""

from __future__ import annotations

from datetime import timedelta

import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy
from typing_extensions import override


class SpawnedDDP(DDPStrategy):
    """``DDPStrategy(start_method="spawn")`` that destroys its process group at teardown.

    A rank that cannot reach the others fails within two minutes instead of after torch's 30-minute default.
    """

    def __init__(self) -> None:
        super().__init__(start_method="spawn", timeout=timedelta(minutes=2))

    @override
    def teardown(self) -> None:
        super().teardown()
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
