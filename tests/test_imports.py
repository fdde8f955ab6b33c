"""The import graph of the package: every module imports alone, no cycles, the core never reaches the
application, and importing one public class loads only what it needs (text code no image code, image code
no text code, neither the zoo's building)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections import deque
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "lightning_recipes"


def package_modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package (``pkg/__init__.py`` is ``pkg``)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def import_graph() -> dict[str, dict[str, int]]:
    """``{module: {imported package module: line}}``, from every import statement anywhere in the file."""
    modules = package_modules()
    graph: dict[str, dict[str, int]] = {name: {} for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                # ``from pkg import submodule`` imports the submodule; ``from mod import name``, the module.
                targets = [f"{base}.{alias.name}" for alias in node.names]
                targets = [t if t in modules else base for t in targets]
            for target in targets:
                while target and target not in modules:  # ``import a.b.c`` of a name below a module
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].setdefault(target, node.lineno)
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One shortest cycle per strongly connected component with more than one module (Tarjan + BFS)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for succ in graph[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [shortest_cycle(graph, component[0], set(component)) for component in components]


def shortest_cycle(graph: dict[str, dict[str, int]], start: str, members: set[str]) -> list[str]:
    """A shortest path ``start -> ... -> start`` through ``members`` (breadth first)."""
    paths = {start: [start]}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for succ in sorted(graph[node]):
            if succ == start:
                return [*paths[node], start]
            if succ in members and succ not in paths:
                paths[succ] = [*paths[node], succ]
                queue.append(succ)
    raise AssertionError(f"no cycle through {start}")


def describe(cycle: list[str], graph: dict[str, dict[str, int]], modules: dict[str, Path]) -> str:
    hops = [
        f"{modules[a].relative_to(REPO)}:{graph[a][b]} imports {b}"
        for a, b in zip(cycle, cycle[1:], strict=False)
    ]
    return " -> ".join(cycle) + "\n    " + "\n    ".join(hops)


def test_every_module_imports_alone():
    """Each module imports in an interpreter where no other lightning_recipes module is loaded yet."""
    names = sorted(package_modules())
    script = f"""
import importlib, json, sys, traceback
failures = {{}}
for name in {names!r}:
    for loaded in [m for m in sys.modules if m == "lightning_recipes" or m.startswith("lightning_recipes.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failures[name] = traceback.format_exc(limit=-3)
print(json.dumps(failures))
"""
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    failures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not failures, "\n".join(f"import {name} failed:\n{tb}" for name, tb in failures.items())


def test_import_graph_has_no_cycle():
    graph, modules = import_graph(), package_modules()
    assert "lightning_recipes.registry" in graph["lightning_recipes.modules.image"]  # the parser sees imports
    cycles = find_cycles(graph)
    assert not cycles, "import cycles between lightning_recipes modules:\n" + "\n".join(
        describe(cycle, graph, modules) for cycle in cycles
    )


def test_find_cycles_reports_a_cycle():
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3, "d": 4}, "d": {}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b": 1}, "b": {}}) == []


def test_text_data_loads_no_image_code():
    """``lightning_recipes.data.text`` loads neither our image code nor, beyond what lightning loads, PIL.

    (``import lightning`` itself may load PIL, through torchmetrics and matplotlib.)
    """
    code = """
import sys
import lightning, torch
pil = {m for m in sys.modules if m == "PIL" or m.startswith("PIL.")}
import lightning_recipes.data.text
new = {m for m in sys.modules if m == "PIL" or m.startswith("PIL.")} - pil
ours = ("data.image", "data.digits", "modules.image", "zoo", "zoo.image")
image = {"timm"} | {f"lightning_recipes.{m}" for m in ours}
print(sorted(new | (image & set(sys.modules))))
"""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


#: The core floor: it only trains (modules, data modules, callbacks, the handshake, the compat layer, the
#: zoo's registry) ...
CORE = ("modules", "data", "callbacks", "_compat", "handshake", "registry", "strategies")
#: ... and these helpers, which it may use; every other module is the application (the CLI, recipes, run
#: directories, cluster, suggest, the zoo's building, the W&B fallback), which the core never imports.
CORE_HELPERS = {"_hub", "cache", "eval_samples", "schedulers", "tokenizer"}


def test_the_core_never_imports_the_application():
    graph = import_graph()
    core = {m for m in graph if m.removeprefix("lightning_recipes.").split(".")[0] in CORE}
    reached, stack = set(), sorted(core)
    while stack:
        for target in graph[stack.pop()]:
            if target not in reached:
                reached.add(target)
                stack.append(target)
    outside = {m.removeprefix("lightning_recipes.") for m in reached - core} - CORE_HELPERS
    assert not outside, (
        f"the core imports application modules (directly or through others): {sorted(outside)}"
    )
    assert {"zoo", "zoo.image", "cli", "suggest"} <= {m.removeprefix("lightning_recipes.") for m in graph}


def loaded_by(statement: str) -> tuple[list[str], list[str]]:
    """The package modules ``statement`` loads in a fresh interpreter (without the ``lightning_recipes.``
    prefix), and the third-party packages it loads beyond those ``import lightning, torch`` load."""
    code = f"""
import json, sys
import lightning, torch
before = set(sys.modules)
{statement}
ours = sorted(m.removeprefix("lightning_recipes.") for m in sys.modules if m.startswith("lightning_recipes"))
new = set(sys.modules) - before
theirs = sorted({{m.split(".")[0] for m in new if not m.startswith("lightning_recipes")}})
print(json.dumps([ours, theirs]))
"""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours, theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    return ours, theirs


#: What every module class loads: the package, the base classes and what they use.
BASE = [
    "_compat", "_hub", "cache", "handshake", "lightning_recipes",
    "modules", "modules._base", "modules._adapters", "modules._distillation", "registry", "schedulers",
]  # fmt: skip
CLASSIFIER = ["eval_samples", "modules._heads", "modules._metrics", "modules._classification"]
HF = ["modules._hf", "tokenizer"]


def test_image_classifier_loads_no_text_code_and_no_zoo_building():
    """16 package modules (23 before the two floors: the zoo's building, its text and GPT-2 code, the
    tokenizer module; 18 before ``_compat`` imported its modules on first use); no third-party package
    beyond what Lightning loads (timm loads on first use)."""
    ours, theirs = loaded_by("from lightning_recipes import ImageClassifier")
    assert ours == sorted([*BASE, *CLASSIFIER, "modules.image"])
    assert theirs == []


def test_text_classifier_and_causal_lm_load_no_image_code_and_no_zoo_building():
    ours, theirs = loaded_by("from lightning_recipes import TextClassifier")
    assert ours == sorted([*BASE, *CLASSIFIER, *HF, "modules.text"])
    assert theirs == []
    ours, theirs = loaded_by("from lightning_recipes import CausalLM")
    assert ours == sorted([*BASE, *HF, "modules._generation", "modules._top_blocks", "modules.causal_lm"])
    assert theirs == []
