"""docs/index.md draws what each part of the package imports; the drawing must be the code's, edge for edge.

A part is a top-level module (``cli.py``) or package (``modules/``) of ``lightning_recipes``; an edge is
"some module of part A imports some module of part B". Each entry of the drawing is ``PART (remark) ──>
PART, PART, ...`` (continued on indented lines), or a line of parts that import nothing of the package;
the parts below the line are the core, exactly the core that ``tests/test_imports.py`` guards.
"""

from __future__ import annotations

import re
from pathlib import Path

from test_imports import CORE, CORE_HELPERS, import_graph

DOC = Path(__file__).resolve().parents[1] / "docs" / "index.md"
ARROW = "──>"
PART = re.compile(r"(?<![\w/.])(_?[a-z][a-z_]*)(\.py|/)(?![\w])")


def part(module: str) -> str:
    return module.removeprefix("lightning_recipes").lstrip(".").split(".")[0]


def actual_edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        if part(module):  # the package's __init__ (lazy public names) is not a part
            edges.setdefault(part(module), set())
            edges[part(module)] |= {part(t) for t in targets if part(t) not in ("", part(module))}
    return edges


def without_remarks(text: str) -> str:
    while "(" in text:
        text = re.sub(r"\([^()]*\)", "", text)
    return text


def names(text: str) -> list[str]:
    return [m.group(1) for m in PART.finditer(text)]


def drawing(doc: str) -> tuple[dict[str, set[str]], set[str]]:
    """``{part: parts it imports}`` of the drawing, and the parts drawn below the core line."""
    block = doc.split("What each part imports", 1)[1].split("```", 2)[1]
    entries: list[str] = []
    for line in block.splitlines():
        if line.startswith((" ", "\t")):
            entries[-1] += " " + line.strip()
        elif line.strip():
            entries.append(line)
    edges: dict[str, set[str]] = {}
    core: set[str] | None = None
    for entry in entries:
        if entry.startswith("───"):
            core = set()
            continue
        text = without_remarks(entry)
        sources, _, targets = text.partition(ARROW)
        for source in names(sources):
            assert source not in edges, f"{source} is drawn twice"
            edges[source] = set(names(targets))
            if core is not None:
                core.add(source)
    assert core is not None, "the drawing has no line between the application and the core"
    return edges, core


def test_the_drawing_is_the_code():
    drawn, core = drawing(DOC.read_text())
    actual = actual_edges()
    assert sorted(drawn) == sorted(actual), (
        f"parts not drawn: {sorted(set(actual) - set(drawn))}; drawn but not in the package: "
        f"{sorted(set(drawn) - set(actual))}"
    )
    wrong = {
        name: {
            "missing": sorted(actual[name] - drawn[name]),
            "not imported": sorted(drawn[name] - actual[name]),
        }
        for name in actual
        if drawn[name] != actual[name]
    }
    assert not wrong, f"docs/index.md draws other imports than the code has: {wrong}"
    assert core == set(CORE) | CORE_HELPERS


def test_callbacks_use_only_the_shared_pieces_of_modules():
    """As the drawing says: a callback works with any module of the contract, never a family module."""
    graph = import_graph()
    used = {
        target
        for module, targets in graph.items()
        if part(module) == "callbacks"
        for target in targets
        if part(target) == "modules"
    }
    family = {f"lightning_recipes.modules.{name}" for name in ("image", "text", "causal_lm")}
    assert used and not used & family, sorted(used)


def test_the_parser_sees_a_wrong_drawing():
    doc = (
        "What each part imports\n```\nAPPLICATION\ncli.py (the commands: runs.py) ──> recipes.py,\n"
        "    zoo/\nrecipes.py ──> registry.py\nzoo/, runs.py\n──── line ────\nCORE\nregistry.py\n```\n"
    )
    drawn, core = drawing(doc)
    assert drawn == {
        "cli": {"recipes", "zoo"},
        "recipes": {"registry"},
        "zoo": set(),
        "runs": set(),
        "registry": set(),
    }
    assert core == {"registry"}
