"""The import graph of medseg: no cycles, and layers import downwards only.

Every ``import`` / ``from ... import`` of every module under medseg/ is read from its source
(``ast``), at module level and inside functions alike (a function-level import that closes a
cycle is still a cycle in the design). ``from package import name`` counts as an import of
the submodule ``package.name`` when that submodule exists, else of the package. Imports
under ``if TYPE_CHECKING:`` are left out: they exist for type checkers only. A package's
``__init__`` importing its own submodules (its public names) is not an edge back from them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import medseg

ROOT = Path(medseg.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    out.add(alias.name)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    mod = ".".join(base + ([child.module] if child.module else []))
                else:
                    mod = child.module or ""
                for alias in child.names:
                    sub = f"{mod}.{alias.name}"
                    out.add(sub if sub in modules else mod)
            visit(child)

    visit(tree)
    return {m for m in out if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    for name in graph:  # a package's __init__ re-exporting its submodules is not a dependency of theirs
        graph[name] = {m for m in graph[name] if not (name.startswith(m + ".") and modules[m].name == "__init__.py")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    import sys

    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    for v in sorted(graph):
        if v not in index:
            strong(v)
    return found


def test_the_graph_sees_known_imports():
    graph = _graph()
    assert "medseg.io.volume" in graph["medseg.resample"]  # a module-level import
    assert "medseg.inference.predict" in graph["medseg.inference.stages"]  # a function-level one
    assert "medseg.inference.model" not in graph["medseg.inference.memory"]  # TYPE_CHECKING only


def test_no_import_cycles_in_medseg():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles (module-level and function-level imports): " + "; ".join(" ↔ ".join(c) for c in cycles)


def test_a_cycle_would_be_found():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_layers_import_downwards():
    graph = _graph()
    for name, deps in graph.items():
        if name.startswith("medseg.engine"):
            assert not {d for d in deps if d.startswith("medseg.inference")}, f"{name} imports inference"
        if name.startswith("medseg.io"):
            assert not {d for d in deps if d.startswith(("medseg.models", "medseg.engine", "medseg.inference"))}, name
        if name.startswith("medseg.metrics"):
            assert not {d for d in deps if d.startswith(("medseg.engine", "medseg.inference"))}, name
