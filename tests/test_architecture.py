"""The shape of the code: no import cycles, modules and functions of a readable size.

The import layers themselves are checked by ``lint-imports`` (the contract in pyproject.toml), which
the README's test command runs before the tests.
"""

from __future__ import annotations

import ast
import sys

import pytest

from .conftest import REPO

grimp = pytest.importorskip("grimp")  # import-linter's graph library, a dev dependency


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (the import cycles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for imported in edges[module]:
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for module in edges:
        if module not in index:
            visit(module)
    return cycles


def test_no_import_cycle_inside_cosal_cli():
    # Imports only for type annotations never run, so they cannot form a cycle at import time.
    graph = grimp.build_graph("cosal_cli", exclude_type_checking_imports=True)
    edges = {module: graph.find_modules_directly_imported_by(module) for module in graph.modules}
    assert strongly_connected(edges) == []
    edges["cosal_cli.a"], edges["cosal_cli.b"] = {"cosal_cli.b"}, {"cosal_cli.a"}  # the check can fail
    assert strongly_connected(edges) == [["cosal_cli.a", "cosal_cli.b"]]


def test_modules_and_functions_stay_readable():
    """No module over 450 lines; no function over 60, except the typer commands, whose option lists are
    declarations (their bodies are short)."""
    commands = {("cli/bench.py", "bench"), ("cli/detect.py", "detect"), ("cli/train.py", "train")}
    for path in sorted((REPO / "cosal_cli").rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        name = path.relative_to(REPO / "cosal_cli").as_posix()
        assert source.count("\n") <= 450, name
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (name, node.name) not in commands:
                assert node.end_lineno - node.lineno < 60, f"{name}: {node.name}"
