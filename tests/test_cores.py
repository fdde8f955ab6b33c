"""DataLoader workers fitted to the cores a run may use, and the one notice when threads and workers ask for
more (lightning_recipes/cores.py, called by ``lightning run``)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from lightning_recipes import cores
from lightning_recipes.cli import main


@pytest.fixture
def two_cores(monkeypatch):
    """This process may run on two cores (Lightning and this package read the affinity)."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


def test_workers_are_lowered_to_lightnings_suggestion_and_say_so(two_cores, monkeypatch) -> None:
    data = SimpleNamespace(num_workers=8)
    notice = cores.fit_num_workers(data)
    assert data.num_workers == 1  # 2 cores, 1 process: 2 // 1 - 1
    assert notice == (
        "num_workers 8 -> 1: 2 CPU cores on this machine (Lightning's suggested maximum; a value up to 1 "
        "is kept)"
    )
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    data = SimpleNamespace(num_workers=8)
    assert "for 4 processes" in cores.fit_num_workers(data, processes=4) and data.num_workers == 3
    for kept in (SimpleNamespace(num_workers=2), SimpleNamespace(num_workers=0), SimpleNamespace()):
        before = vars(kept).copy()
        assert cores.fit_num_workers(kept, processes=4) is None and vars(kept) == before


def test_the_notice_counts_every_process_threads_and_workers(two_cores, monkeypatch) -> None:
    assert cores.oversubscription(workers=0, threads=2) is None  # 2 threads on 2 cores
    notice = cores.oversubscription(workers=1, threads=2)
    assert notice.startswith("CPU: 1 process x (2 torch threads + 1 DataLoader worker) = 3 > 2 cores")
    assert "OMP_NUM_THREADS=1 or --data.init_args.num_workers=0" in notice
    assert "2 processes x (1 torch threads + 3 DataLoader workers) = 8 > 4 cores" in cores.oversubscription(
        workers=3, processes=2, threads=1, cores=4
    )
    assert cores.threads_per_process(2) == 1  # what Lightning's DDP sets without OMP_NUM_THREADS
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(cores.torch, "get_num_threads", lambda: 7)
    assert cores.threads_per_process(2) == 7  # the user's setting: torch's own count


def test_lightning_run_fits_the_recipes_workers_once(tiny_recipe, two_cores, capsys) -> None:
    assert main(["run", str(tiny_recipe), "--trainer.max_epochs=1", "--data.init_args.num_workers=6"]) == 0
    out = capsys.readouterr().out
    assert out.count("num_workers 6 -> 1: 2 CPU cores on this machine") == 1
    threads = cores.torch.get_num_threads()
    assert (f"({threads} torch threads + 1 DataLoader worker)" in out) == (threads + 1 > 2)
