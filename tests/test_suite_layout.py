"""The test suite's own rules (issue 16): shared pieces in conftest.py/helpers.py, never imported from
another test module; no test judged by the wall clock; no fixed waits."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
TEST_FILES = sorted(TESTS.glob("*.py"))


def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def with_parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def in_a_loop(node: ast.AST, parents: dict, loops=(ast.For, ast.While)) -> bool:
    """Inside a loop of the same function: polling, not a fixed wait or a speed judgement."""
    ancestor = parents.get(node)
    while ancestor is not None and not isinstance(ancestor, ast.FunctionDef | ast.AsyncFunctionDef):
        if isinstance(ancestor, loops):
            return True
        ancestor = parents.get(ancestor)
    return False


def is_clock_call(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "time"
        and node.func.attr in {"monotonic", "perf_counter", "process_time", "time"}
    )


def imported_modules(tree: ast.Module):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            yield node.module or ""
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


@pytest.mark.parametrize("path", TEST_FILES, ids=lambda p: p.name)
def test_no_test_module_imports_another(path):
    imported = [name for name in imported_modules(parsed(path)) if name.split(".")[0].startswith("test_")]
    assert not imported, f"{path.name} imports {imported}: shared pieces go to conftest.py or helpers.py"


@pytest.mark.parametrize("path", TEST_FILES, ids=lambda p: p.name)
def test_no_elapsed_time_assertion_and_no_fixed_wait(path):
    tree = parsed(path)
    parents = with_parents(tree)
    found = []
    for node in ast.walk(tree):
        # In a while loop, a clock in an assert is a polling deadline, not a judgement of speed.
        if isinstance(node, ast.Assert) and not in_a_loop(node, parents, loops=ast.While):
            if any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.Sub) and is_clock_call(n.left)
                   for n in ast.walk(node.test)):  # fmt: skip
                found.append(f"line {node.lineno}: asserts an elapsed time (a benchmark's job)")
        sleeps = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "sleep"
        if sleeps and not in_a_loop(node, parents):
            found.append(f"line {node.lineno}: a fixed wait (wait on the condition instead)")
    assert not found, f"{path.name}: {found}"


def test_helpers_hold_no_fixtures():
    decorators = [
        ast.unparse(d)
        for node in ast.walk(parsed(TESTS / "helpers.py"))
        if isinstance(node, ast.FunctionDef)
        for d in node.decorator_list
    ]
    assert not [d for d in decorators if "fixture" in d], "fixtures belong in conftest.py"
