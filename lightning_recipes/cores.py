"""The CPU cores a run may use: DataLoader workers fitted to them, and one notice when torch's threads and
the workers ask for more (``lightning run``; application floor).

A recipe written for a 16-core GPU machine (``num_workers: 8``) run on a 2-core laptop starts 8 worker
processes that fight the 2 torch threads for 2 cores, and torch and Lightning each warn about it.
:func:`fit_num_workers` lowers ``num_workers`` to Lightning's own suggestion
(``lightning.fabric.utilities.data.suggested_max_num_workers``: cores per process less one, at least 1)
and says so in one line; :func:`oversubscription` words the notice printed when threads plus workers
still exceed the cores (steps then slow down, more so beside another job).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from lightning.fabric.utilities.data import suggested_max_num_workers


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, as Lightning counts them)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def fit_num_workers(datamodule: Any, processes: int = 1) -> str | None:
    """Lower ``datamodule.num_workers`` to what ``processes`` processes per machine can use; return the
    notice saying so, or ``None`` when the value is kept (or the data module has no ``num_workers``).

    Example::

        >>> class Data:
        ...     num_workers = 64
        >>> data = Data()
        >>> fit_num_workers(data) is not None and data.num_workers < 64
        True
    """
    wanted = getattr(datamodule, "num_workers", None)
    if not isinstance(wanted, int) or isinstance(wanted, bool) or wanted <= 0:
        return None
    most = suggested_max_num_workers(processes)
    if wanted <= most:
        return None
    datamodule.num_workers = most
    per = "" if processes == 1 else f" for {processes} processes"
    return (
        f"num_workers {wanted} -> {most}: {available_cores()} CPU cores{per} on this machine "
        f"(Lightning's suggested maximum; a value up to {most} is kept)"
    )


def oversubscription(
    workers: int, processes: int = 1, threads: int | None = None, cores: int | None = None
) -> str | None:
    """The one-line notice when ``processes`` x (threads + ``workers``) exceeds the cores, else ``None``.

    Example::

        >>> print(oversubscription(workers=1, threads=2, cores=2).split(" (load")[0])
        CPU: 1 process x (2 torch threads + 1 DataLoader worker) = 3 > 2 cores
        >>> oversubscription(workers=0, threads=2, cores=2) is None
        True
    """
    threads = threads if threads is not None else torch.get_num_threads()
    cores = cores if cores is not None else available_cores()
    asked = processes * (threads + workers)
    if asked <= cores:
        return None
    load = f" (load average {os.getloadavg()[0]:.1f})" if hasattr(os, "getloadavg") else ""
    return (
        f"CPU: {processes} process{'es' if processes > 1 else ''} x ({threads} torch threads + {workers} "
        f"DataLoader worker{'s' if workers != 1 else ''}) = {asked} > {cores} cores{load}: steps slow down "
        "when they compete, more so beside another job; OMP_NUM_THREADS=1 or "
        "--data.init_args.num_workers=0 asks for fewer"
    )


def threads_per_process(processes: int) -> int:
    """torch's threads in each of ``processes`` processes: Lightning's DDP sets cores // processes when
    ``OMP_NUM_THREADS`` is not set; one process keeps torch's own count."""
    if processes > 1 and "OMP_NUM_THREADS" not in os.environ:
        return max(1, available_cores() // processes)
    return torch.get_num_threads()


def fit_run(trainer: Any, datamodule: Any) -> list[str]:
    """:func:`fit_num_workers` for the trainer's processes on this machine, then :func:`oversubscription`;
    the lines global rank zero prints (none on other ranks)."""
    processes = max(1, int(trainer.num_devices))
    fitted = fit_num_workers(datamodule, processes)
    workers = getattr(datamodule, "num_workers", 0)
    workers = workers if isinstance(workers, int) and not isinstance(workers, bool) else 0
    notice = oversubscription(workers, processes, threads_per_process(processes))
    return [line for line in (fitted, notice) if line] if trainer.is_global_zero else []
