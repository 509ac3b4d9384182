"""The package's layers and its import graph, read from the source with ``ast``.

Standing rules (docs/design.md): no import cycle between modules (function-local
imports count; ``if TYPE_CHECKING:`` imports do not), and the layers of
docs/architecture.md: ``plan`` <- engine <- ``cli``, with ``steps`` depending on
neither the runner nor the CLI, and only the CLI importing click.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "migration"

# The engine: what drives a run. The plan layer knows none of it.
ENGINE = (
    "migration.checkpoints",
    "migration.cli",
    "migration.commands",
    "migration.context",
    "migration.interrupts",
    "migration.leftovers",
    "migration.machine",
    "migration.outcomes",
    "migration.preview",
    "migration.report",
    "migration.rollback",
    "migration.run_document",
    "migration.runner",
    "migration.state",
    "migration.summary",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import under ``node``, at any depth, except in ``if TYPE_CHECKING:`` bodies."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield from _import_nodes(ast.Module(body=[other], type_ignores=[]))
        else:
            yield from _import_nodes(child)


def imports_of(name: str) -> set[str]:
    """The modules ``name`` imports: ``from a import b`` is ``a.b`` when that is a module."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, base] if base else anchor)
        found.add(base)
        found.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES)
    return found


GRAPH = {name: {target for target in imports_of(name) if target in MODULES} for name in MODULES}


def in_layer(module: str, layer: str) -> bool:
    return module == layer or module.startswith(layer + ".")


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (or a self-import)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1 or node in graph[node]:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_the_graph_sees_function_local_imports_and_not_type_checking_ones() -> None:
    # rollback handlers are found by the plan checks with a function-local import
    assert "migration.steps.registry" in GRAPH["migration.plan.checks"]
    assert "migration.steps.base" in GRAPH["migration.runner"]
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import migration.cli\nelse:\n    import migration.errors\n"
        "def f():\n    import migration.runner\n"
    )
    modules = [alias.name for node in _import_nodes(ast.parse(source)) for alias in node.names]
    assert modules == ["TYPE_CHECKING", "migration.errors", "migration.runner"]


def test_cycle_finder_finds_a_cycle_through_three_modules() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycles_between_modules() -> None:
    assert find_cycles(GRAPH) == []


@pytest.mark.parametrize("engine", ENGINE)
def test_the_plan_layer_does_not_import_the_engine(engine: str) -> None:
    offenders = sorted(
        f"{name} imports {target}"
        for name, targets in GRAPH.items()
        if in_layer(name, "migration.plan")
        for target in targets
        if in_layer(target, engine)
    )
    assert offenders == []


def test_steps_import_neither_the_runner_nor_the_cli() -> None:
    forbidden = ("migration.runner", "migration.cli", "migration.commands")
    offenders = sorted(
        f"{name} imports {target}"
        for name, targets in GRAPH.items()
        if in_layer(name, "migration.steps")
        for target in targets
        if any(in_layer(target, layer) for layer in forbidden)
    )
    assert offenders == []


def test_nothing_imports_the_cli() -> None:
    assert sorted(name for name, targets in GRAPH.items() if "migration.cli" in targets) == []


def test_only_the_cli_imports_click() -> None:
    importers = sorted(
        name for name in MODULES if any(in_layer(target, "click") for target in imports_of(name))
    )
    assert importers == ["migration.cli"]
