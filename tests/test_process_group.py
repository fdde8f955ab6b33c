"""A process that imports lightning_recipes destroys a process group left alive when it exits."""

from __future__ import annotations

SCRIPT = r"""
import sys
import torch.distributed as dist
import lightning_recipes  # registers the exit handler

destroy = dist.destroy_process_group
def traced(*args, **kwargs):
    print("destroyed at exit", flush=True)
    return destroy(*args, **kwargs)
dist.destroy_process_group = traced
dist.init_process_group("gloo", init_method=f"file://{sys.argv[1]}/store", rank=0, world_size=1)
print("initialised", dist.is_initialized(), flush=True)
"""


def test_a_gloo_group_left_alive_is_destroyed_at_exit(tmp_path, run_script) -> None:
    out = run_script(SCRIPT, tmp_path).stdout
    assert out.splitlines() == ["initialised True", "destroyed at exit"]


def test_nothing_happens_at_exit_without_a_group(tmp_path, run_script) -> None:
    quiet = SCRIPT.replace('dist.init_process_group("gloo"', '0 and dist.init_process_group("gloo"')
    assert run_script(quiet, tmp_path).stdout.splitlines() == ["initialised False"]
