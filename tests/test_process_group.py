"""A ``lightning-recipes`` command destroys the process group it leaves alive; importing the package registers
nothing."""

from __future__ import annotations

COMMAND = r"""
import sys
import torch.distributed as dist
from lightning_recipes.cli import main

destroy = dist.destroy_process_group
def traced(*args, **kwargs):
    print("destroyed", flush=True)
    return destroy(*args, **kwargs)
dist.destroy_process_group = traced
command = ["list", "--no-such-flag"]  # any command: this one ends at once, with exit status 2
print("without a group", main(command), dist.is_initialized(), flush=True)
dist.init_process_group("gloo", init_method=f"file://{sys.argv[1]}/store", rank=0, world_size=1)
print("initialised", dist.is_initialized(), flush=True)
print("command ended", main(command), dist.is_initialized(), flush=True)
"""


def test_a_gloo_group_left_alive_is_destroyed_when_the_command_ends(tmp_path, run_script) -> None:
    assert run_script(COMMAND, tmp_path).stdout.splitlines() == [
        "without a group 2 False",  # nothing to destroy: nothing happens
        "initialised True",
        "destroyed",
        "command ended 2 False",
    ]


IMPORTS = r"""
import atexit

registered = []
register = atexit.register
def traced(func, *args, **kwargs):
    registered.append(f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', func)}")
    return register(func, *args, **kwargs)
atexit.register = traced

import importlib
import pkgutil

import lightning_recipes
print(registered)
for module in pkgutil.walk_packages(lightning_recipes.__path__, "lightning_recipes."):  # core and application
    if not module.name.endswith("__main__"):
        importlib.import_module(module.name)
print(sorted(name for name in registered if name.startswith("lightning_recipes")))
"""


def test_importing_the_package_registers_no_exit_handler(tmp_path, run_script) -> None:
    assert run_script(IMPORTS, tmp_path).stdout.splitlines() == ["[]", "[]"]
