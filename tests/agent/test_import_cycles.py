"""No import cycle anywhere in the product's packages.

Every import counts: a function's lazy one (a lazy import is how a cycle hides) and one
under ``if TYPE_CHECKING:`` (it never runs, but the reader still needs the other module to
read this one). A cycle makes the import order matter and a module unreadable without the
others: the layer it belongs to (engine, agent core, adapter) stops being visible.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support import ROOT

PACKAGES = ("engine", "agent", "adapters")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(tree: ast.AST, package: str) -> set[str]:
    """Every module name an import statement may load (``from a import b``: ``a`` and
    ``a.b``)."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1]])
                base = f"{base}.{node.module}" if node.module else base
            # ``from a import b``: ``a.b`` when b is a module (only ``a``'s __init__ runs
            # first, as for any submodule), else a name defined in ``a``.
            names.update(f"{base}.{alias.name}" for alias in node.names)
            names.update(f"{base}:{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def import_graph() -> dict[str, set[str]]:
    files = [p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))]
    modules = {module_name(p): p for p in files}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(), str(path))
        found = imported_names(tree, package)
        targets = {m for m in found if ":" not in m}
        # A name imported from a module (not a submodule): an edge to that module.
        targets |= {
            m.split(":")[0] for m in found if ":" in m and m.replace(":", ".") not in modules
        }
        graph[name] = {m for m in targets if m in modules and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_the_checker_sees_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    tree = ast.parse("def f():\n    from agent import bus\nif TYPE_CHECKING:\n    import x\n")
    assert imported_names(tree, "agent") == {"agent.bus", "agent:bus", "x"}


def test_no_module_imports_itself_back() -> None:
    graph = import_graph()
    assert len(graph) > 50  # the walk found the packages
    assert cycles(graph) == []


def test_the_layers_import_downwards_only() -> None:
    """The engine knows nothing of the agent, the core nothing of the adapters, and an
    adapter nothing of another adapter: each adapter only translates to the core."""
    wrong = []
    for module, imports in import_graph().items():
        layer = module.split(".")[:2]
        for target in imports:
            upward = (module.startswith("engine") and not target.startswith("engine")) or (
                module.startswith("agent") and target.startswith("adapters")
            )
            sideways = layer[0] == "adapters" and target.split(".")[:2] != layer
            if upward or (sideways and target.startswith("adapters.")):
                wrong.append((module, target))
    assert wrong == []
