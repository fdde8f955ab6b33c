"""``lightning`` is Lightning's command too: what is not ours goes to Lightning's CLI, unchanged.

The installed console script is run as users run it (one process per command line, all started at
once: each imports torch); the rules of :func:`lightning_recipes.lightning_command.dispatch` are checked
in-process against stand-in installations (with and without another package's ``lightning`` script).
"""

from __future__ import annotations

import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from lightning_recipes import cli
from lightning_recipes import lightning_command as command
from lightning_recipes.recipes import resolve_recipe

LIGHTNING = Path(sys.executable).parent / "lightning"

FABRIC_SCRIPT = """\
import sys

from lightning.fabric import Fabric

fabric = Fabric()
accelerator = type(fabric.accelerator).__name__
print(f"fabric script ran: {accelerator}, world size {fabric.world_size}, args {sys.argv[1:]}")
"""

COMMAND_LINES = {
    "run model --help": ["run", "model", "--help"],
    "run model": ["run", "model", "--accelerator=cpu", "--devices=1", "train.py", "--lr", "0.1"],
    "run recipe --help": ["run", "quickstart", "--help"],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ran(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Each of :data:`COMMAND_LINES` run by the installed ``lightning`` script, in a folder with
    ``train.py`` (a Fabric script) and nothing called ``model``."""
    if not LIGHTNING.is_file():
        pytest.skip(f"no `lightning` console script beside {sys.executable}: pip install -e . first")
    folder = tmp_path_factory.mktemp("lightning_command")
    (folder / "train.py").write_text(FABRIC_SCRIPT)
    # torchrun's store listens on --main-port (default 29400): a free one, so no other run collides
    lines = {name: list(argv) for name, argv in COMMAND_LINES.items()}
    lines["run model"][2:2] = [f"--main-port={free_port()}"]
    procs = {
        name: subprocess.Popen(
            [str(LIGHTNING), *argv], cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for name, argv in lines.items()
    }
    done = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return done


# ---- the installed script ------------------------------------------------------------------------


def test_our_distribution_declares_both_scripts():
    ours = {(dist, ep.value) for dist, ep in command.console_scripts("lightning")}
    assert ("lightning-recipes", "lightning_recipes.cli:lightning_main") in ours
    assert ("lightning-recipes", "lightning_recipes.cli:main") in {
        (dist, ep.value) for dist, ep in command.console_scripts("lightning-recipes")
    }


def test_run_model_help_is_lightnings_own(ran):
    proc = ran["run model --help"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Lightning's help for `fabric run` (what `lightning run model` became), not ours
    assert "Usage: fabric run [OPTIONS] SCRIPT [SCRIPT_ARGS]..." in proc.stdout
    assert "Run a Lightning Fabric script." in proc.stdout
    assert "--accelerator [cpu|gpu|cuda|mps|tpu|auto]" in proc.stdout
    assert "RECIPE" not in proc.stdout + proc.stderr


def test_run_model_runs_a_fabric_script_through_lightning(ran):
    proc = ran["run model"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    # launched by Lightning (torchrun): the accelerator chosen on the command line, the script's own args
    assert "fabric script ran: CPUAccelerator, world size 1, args ['--lr', '0.1']" in proc.stdout
    assert "Recipe" not in proc.stderr


def test_a_shipped_recipe_is_still_ours(ran):
    proc = ran["run recipe --help"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    # our parser's help for that recipe: its options, its data module
    assert "--trainer.max_epochs" in proc.stdout and "lightning_recipes.ImageDataModule" in proc.stdout


# ---- dispatch, in-process ------------------------------------------------------------------------

FABRIC = metadata.EntryPoint("fabric", "lightning.fabric.cli:_main", "console_scripts")
OURS = metadata.EntryPoint("lightning", "lightning_recipes.cli:lightning_main", "console_scripts")
SDK = metadata.EntryPoint("lightning", "lightning_sdk.cli.entrypoint:main_cli", "console_scripts")


@pytest.fixture
def installed(monkeypatch):
    """``installed(sdk=True)``: console scripts as if lightning, lightning-recipes and (or not)
    lightning-sdk were installed."""

    def install(sdk: bool) -> None:
        scripts = {
            "fabric": [("lightning", FABRIC)],
            "lightning": [("lightning-recipes", OURS)] + ([("lightning-sdk", SDK)] if sdk else []),
        }
        monkeypatch.setattr(command, "console_scripts", lambda name: scripts.get(name, []))

    return install


OURS_LINES = [
    [],
    ["-h"],
    ["--help"],
    ["list"],
    ["list", "--matrix"],
    ["suggest", "--data", "x", "--backbone", "resnet18"],
    ["zoo", "list"],
    ["fit", "--config", "my.yaml"],
    ["validate", "--help"],
    ["test"],
    ["predict", "--config", "my.yaml"],
    ["run"],
    ["run", "--help"],
    ["run", "-h"],
    ["run", "--trainer.max_epochs=3"],
    ["run", "quickstart"],
    ["run", "quickstart", "--help"],
    ["run", "quickstart.yaml", "--trainer.max_epochs=3"],
    ["run", "text/sst2_distilbert"],
    ["run", "recipes/quickstart.yaml"],
    ["run", "missing.yaml"],  # a mistyped recipe gets our "Recipe 'missing.yaml' not found"
    ["run", "configs/missing"],
    ["run", "my.yml"],
    ["run", "./model"],  # a recipe file called `model`
]


@pytest.mark.parametrize("sdk", [True, False], ids=["with-lightning-sdk", "alone"])
@pytest.mark.parametrize("argv", OURS_LINES, ids=" ".join)
def test_our_commands_stay_ours(installed, argv, sdk):
    installed(sdk=sdk)
    assert command.dispatch(argv) is None


def test_a_recipe_file_in_the_working_directory_is_ours(installed, tmp_path, monkeypatch):
    installed(sdk=True)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "myrecipe").write_text("trainer: {}\n")
    assert command.dispatch(["run", "myrecipe"]) is None
    assert command.dispatch(["run", "job"]).args == ["run", "job"]


@pytest.mark.parametrize("sdk", [True, False], ids=["with-lightning-sdk", "alone"])
@pytest.mark.parametrize("model_file", [True, False], ids=["a-file-called-model", "no-file"])
@pytest.mark.parametrize(
    "rest", [[], ["--help"], ["train.py"], ["--accelerator=cpu", "--devices=2", "train.py", "--lr", "0.1"]]
)
def test_run_model_is_lightnings_fabric_run(installed, sdk, model_file, rest, tmp_path, monkeypatch):
    installed(sdk=sdk)
    monkeypatch.chdir(tmp_path)
    if model_file:
        (tmp_path / "model").write_text("trainer: {}\n")
    other = command.dispatch(["run", "model", *rest])
    assert (other.entry_point, other.args, other.prog) == (FABRIC, ["run", *rest], "fabric")


def test_run_model_goes_to_the_installed_lightnings_fabric_script():
    other = command.dispatch(["run", "model", "train.py"])
    assert other.entry_point.name == "fabric" and other.entry_point.dist.name == "lightning"
    assert other.args == ["run", "train.py"]


@pytest.mark.parametrize(
    "argv",
    [
        ["login"],
        ["studio", "create", "--name", "x"],
        ["run", "job", "--name", "x"],
        ["--version"],
        ["frobnicate"],
    ],
    ids=" ".join,
)
def test_other_commands_go_unchanged_to_another_lightning_script(installed, argv):
    installed(sdk=True)
    other = command.dispatch(argv)
    assert (other.entry_point, other.args, other.prog) == (SDK, argv, "lightning")
    installed(sdk=False)
    assert command.dispatch(argv) is None  # nobody else to take it: ours, with our error


def test_lightnings_own_lightning_script_comes_before_other_packages(monkeypatch):
    old = metadata.EntryPoint("lightning", "lightning.fabric.cli:_legacy_main", "console_scripts")
    scripts = [("lightning-sdk", SDK), ("lightning-recipes", OURS), ("lightning", old)]
    monkeypatch.setattr(command, "console_scripts", lambda name: scripts if name == "lightning" else [])
    assert command.other_lightning_script() == old
    assert command.dispatch(["login"]).entry_point == old


def test_no_shipped_recipe_is_called_model():
    with pytest.raises(FileNotFoundError):
        resolve_recipe("model")


class StandIn:
    """An entry point whose function records ``sys.argv`` and ends as ``outcome`` says."""

    def __init__(self, outcome):
        self.outcome, self.argv = outcome, None

    def load(self):
        def entry() -> object:
            self.argv = list(sys.argv)
            if isinstance(self.outcome, BaseException):
                raise self.outcome
            return self.outcome

        return entry


@pytest.mark.parametrize(
    ("outcome", "status"),
    [(None, 0), (0, 0), (3, 3), (SystemExit(None), 0), (SystemExit(5), 5), (SystemExit("bad"), 1)],
)
def test_the_exit_status_passes_through(monkeypatch, capsys, outcome, status):
    other = StandIn(outcome)
    scripts = {"lightning": [("lightning-sdk", other)]}
    monkeypatch.setattr(command, "console_scripts", lambda name: scripts.get(name, []))
    argv_before = list(sys.argv)
    assert cli.lightning_main(["login", "--token", "t"]) == status
    assert other.argv == ["lightning", "login", "--token", "t"]
    assert sys.argv == argv_before
    printed = isinstance(outcome, SystemExit) and outcome.code == "bad"  # as sys.exit("bad") prints it
    assert ("bad" in capsys.readouterr().err) == printed


def test_without_fabric_run_model_says_so(monkeypatch, capsys):
    monkeypatch.setattr(command, "console_scripts", lambda name: [])
    assert cli.lightning_main(["run", "model", "train.py"]) == 2
    assert "has no `fabric` command" in capsys.readouterr().err


def test_help_says_where_other_commands_go(installed, capsys):
    installed(sdk=False)
    assert cli.lightning_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(cli.USAGE)
    assert "hands every other command line, unchanged, to Lightning's CLI" in out
    assert "lightning run model SCRIPT.py" in out and "none is installed here" in out
