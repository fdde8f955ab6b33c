"""``lightning`` is Lightning's command too: which command lines are ours, and the hand-over of the others.

Lightning's `lightning` console script (`lightning.fabric.cli:_legacy_main` up to lightning 2.5.0) took
`lightning run model SCRIPT.py [fabric options]`; lightning 2.3 renamed that `fabric run`, and 2.5.1
removed the old name and the script with it. lightning-sdk also installs a `lightning` script (`login`,
`studio`, `job`, `run job` ...). Whichever package installs last owns bin/lightning, so ours
(:func:`lightning_recipes.cli.lightning_main`) hands every command line that is not one of ours to the
other one, unchanged (:func:`dispatch`).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from importlib import metadata

from lightning_recipes.recipes import resolve_recipe

#: LightningCLI's subcommands, which ``lightning-recipes`` runs as they are.
SUBCOMMANDS = ("fit", "validate", "test", "predict")
OUR_COMMANDS = ("run", "list", "suggest", "zoo", "export", "tune", *SUBCOMMANDS, "-h", "--help")


@dataclass(frozen=True)
class HandOver:
    """A ``lightning`` command line that is not ours: the console script that takes it, and its argv."""

    entry_point: metadata.EntryPoint
    args: list[str]
    prog: str  # its sys.argv[0], the name its usage lines show

    def __call__(self) -> int:
        """Run it as its own console script would run, with ``sys.argv`` set; returns its exit status."""
        saved = sys.argv
        sys.argv = [self.prog, *self.args]
        try:
            code = self.entry_point.load()()
        except SystemExit as exc:
            code = exc.code
        finally:
            sys.argv = saved
        if code is None or isinstance(code, int):  # what sys.exit(code) makes of it
            return code or 0
        print(code, file=sys.stderr)
        return 1


def console_scripts(name: str) -> list[tuple[str, metadata.EntryPoint]]:
    """The installed console scripts called ``name``, each with its distribution's normalized name."""
    found = []
    for ep in metadata.entry_points(group="console_scripts", name=name):
        dist = ep.dist.name if ep.dist is not None else ""
        found.append((dist.lower().replace("_", "-").replace(".", "-"), ep))
    return found


def other_lightning_script() -> metadata.EntryPoint | None:
    """Another package's ``lightning`` console script (Lightning's own first, then lightning-sdk's...)."""
    others = [(dist, ep) for dist, ep in console_scripts("lightning") if dist != "lightning-recipes"]
    others.sort(key=lambda other: (other[0] != "lightning", other[0]))
    return others[0][1] if others else None


def lightning_run_model(args: list[str]) -> HandOver:
    """``lightning run model ARGS`` is ``fabric run ARGS``: the ``fabric`` script of the ``lightning``
    package, the name Lightning gave the command in 2.3. (Lightning's own ``lightning`` script of 2.5.0
    passed ``run model`` on unchanged to that same command, which then took ``model`` for the script.)"""
    for dist, ep in console_scripts("fabric"):
        if dist == "lightning":
            return HandOver(ep, ["run", *args], "fabric")
    raise LookupError(
        "lightning run model: the installed lightning package has no `fabric` command (`fabric run`) to "
        "run it"
    )


def dispatch(argv: list[str]) -> HandOver | None:
    """Where ``lightning ARGV`` goes: ``None`` when it is ours, else the :class:`HandOver` that runs it.

    Ours: no command, ``-h``/``--help``, ``list``, ``suggest``, ``zoo``, ``export``, ``tune``,
    ``fit|validate|test|predict`` and ``run`` with no recipe, an option (``--help``) or a recipe: a
    file, a shipped recipe's name, or anything that looks like a recipe path (``.yaml``/``.yml``, a
    ``/``), so that a mistyped one gets our "not found". ``run model`` is always Lightning's (run a
    recipe file called ``model`` as ``./model``). Everything else goes unchanged to another package's
    ``lightning`` script when one is installed, and stays ours (an unknown command, a recipe not found)
    when none is.
    """
    command = argv[0] if argv else ""
    if command == "run" and len(argv) > 1:
        target = argv[1]
        if target == "model":
            return lightning_run_model(argv[2:])
        looks_like_recipe = target.endswith((".yaml", ".yml")) or "/" in target or os.sep in target
        if target.startswith("-") or looks_like_recipe:
            return None
        try:
            resolve_recipe(target)
            return None
        except FileNotFoundError:
            pass
    elif command in OUR_COMMANDS or not command:
        return None
    other = other_lightning_script()
    return HandOver(other, list(argv), "lightning") if other is not None else None


def other_commands_help() -> str:
    """The part of ``lightning --help`` that says which commands go to Lightning's CLI."""
    other = other_lightning_script()
    if other is None:
        installed = "none is installed here"
    else:
        dist = f"{other.dist.name} {other.dist.version}: " if other.dist is not None else ""
        installed = f"here: {dist}{other.value}"
    return f"""
`lightning` is Lightning's command too: it hands every other command line, unchanged, to Lightning's CLI
  lightning run model SCRIPT.py [--accelerator=cpu --devices=2 ...] [SCRIPT_ARGS]   runs a Fabric script
      (`fabric run` since lightning 2.3; lightning run model --help). A recipe file called `model`: ./model
  lightning COMMAND ...   another package's `lightning` command (Lightning's own up to 2.5.0,
      lightning-sdk's: login, studio, job ...); {installed}
`lightning-recipes` runs only the commands above.
"""
