"""The package is layered: no import cycle between its subpackages and top-level modules.

Every import in src/safebasin is parsed with `ast` (those inside functions too, since a lazy
import is still a dependency) and mapped to the subpackage or top-level module it reaches
(`safebasin.checkpoint.reader` -> `checkpoint`, `safebasin.hub` -> `hub`). The graph of those
nodes must be acyclic, so that each piece can be read, tested and replaced from the bottom up.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import safebasin

SRC = Path(safebasin.__file__).parent
ROOT = "safebasin"  # the package's own __init__: a facade that may re-export from the top
# `__version__` is a constant the __init__ defines before importing anything: a leaf, not the
# facade, so that every layer may record it.
VERSION = "__version__"


def _node(module: str) -> str | None:
    """`safebasin.a.b` -> `a`; `safebasin` -> ROOT; None for anything outside the package."""
    parts = module.split(".")
    if parts[0] != ROOT:
        return None
    return parts[1] if len(parts) > 1 else ROOT


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _targets(path: Path) -> set[str]:
    """The nodes one file imports."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for stmt in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(stmt, ast.Import):
            found |= {_node(a.name) for a in stmt.names}
        elif isinstance(stmt, ast.ImportFrom):
            if stmt.level:
                base = package.split(".")[: len(package.split(".")) - stmt.level + 1]
                origin = ".".join(base + ([stmt.module] if stmt.module else []))
            else:
                origin = stmt.module or ""
            if origin != ROOT:
                found.add(_node(origin))
                continue
            for alias in stmt.names:  # `from .. import hub`: the module, not the __init__
                name = alias.name
                is_module = (SRC / name).is_dir() or (SRC / f"{name}.py").is_file()
                found.add(name if is_module else VERSION if name == "__version__" else ROOT)
    found.discard(None)
    return found


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for path in sorted(SRC.rglob("*.py")):
        here = _node(_module_name(path))
        graph[here] |= _targets(path) - {here}
    return dict(graph)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (cycle := visit(m)):
                return cycle
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (cycle := visit(n)):
            return cycle
    return None


def test_no_import_cycle_between_subpackages_and_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_graph_sees_lazy_imports_inside_functions():
    """The old circle went through imports inside functions; the parser must see them."""
    graph = import_graph()
    assert "merge" in graph["cli"]  # cli/merge.py imports safebasin.merge inside its commands
    assert "hub" in graph["checkpoint"]  # checkpoint/resolve.py: Hub ids as inputs


def test_hub_fetching_imports_nothing_of_safebasin_but_errors():
    assert import_graph()["hub"] <= {"errors"}


def test_card_rendering_reads_no_results_and_sits_below_publishing():
    graph = import_graph()
    assert "publish" not in graph["card"] and "eval" not in graph["card"]
    assert {"card", "hub", "checkpoint"} <= graph["publish"]


def test_find_cycle_reports_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_only_the_chat_layer_loads_models_or_generates():
    """One chat-model layer: every `from_pretrained` and `generate` call lives in chat/."""
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if _node(_module_name(path)) == "chat":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("from_pretrained", "generate")):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert offenders == [], offenders
