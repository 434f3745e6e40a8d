"""The project's modules form layers: every one imports first in a fresh process, none
takes part in an import cycle, and none imports a project module inside a function to
dodge one.

The import graph is read from the source (the AST of each module's top-level imports,
not those under ``if TYPE_CHECKING:``): an edge for each ``import a.b`` and each
``from a.b import c`` (to ``a.b.c`` where that is a module, else to ``a.b``). A cycle
that runs through a package's ``__init__`` (which Python runs before any submodule) is
what the fresh-process imports catch.
"""

from __future__ import annotations

import ast
import importlib
import json
import multiprocessing
import os
import subprocess
import sys
import traceback
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("consumers", "schemas")


def _modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the project's packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _is_project(name: str) -> bool:
    return name.partition(".")[0] in PACKAGES


def _targets(node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names if _is_project(alias.name))
    elif node.module and node.level == 0 and _is_project(node.module):
        for alias in node.names:
            submodule = f"{node.module}.{alias.name}"
            yield submodule if submodule in MODULES else node.module


def _top_level_imports(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports run when the module loads: its body, and ``if``/``try`` blocks in it."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and not _is_type_checking(node):
            yield from _top_level_imports(node.body)
            yield from _top_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody):
                yield from _top_level_imports(block)
            for handler in node.handlers:
                yield from _top_level_imports(handler.body)


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        graph[name] = {
            target
            for node in _top_level_imports(tree.body)
            for target in _targets(node)
            if target != name
        }
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (first module repeated at the end), or None."""
    done: set[str] = set()
    for start in sorted(graph):
        path: list[str] = []
        on_path: set[str] = set()
        stack = [(start, iter(sorted(graph[start])))]
        if start in done:
            continue
        path.append(start)
        on_path.add(start)
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                on_path.discard(node)
                done.add(node)
            elif child in on_path:
                return [*path[path.index(child) :], child]
            elif child not in done and child in graph:
                stack.append((child, iter(sorted(graph[child]))))
                path.append(child)
                on_path.add(child)
    return None


def _function_level_imports(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, module) of each project import inside a function body, TYPE_CHECKING aside."""

    def visit(node: ast.AST, in_function: bool) -> Iterator[tuple[int, str]]:
        if isinstance(node, ast.If) and _is_type_checking(node):
            return
        if in_function and isinstance(node, ast.Import | ast.ImportFrom):
            for target in _targets(node):
                yield node.lineno, target
        inside = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for child in ast.iter_child_nodes(node):
            yield from visit(child, inside)

    yield from visit(tree, False)


def _third_party() -> set[str]:
    """The other packages the project's modules import at their top."""
    names = set()
    for path in MODULES.values():
        for node in _top_level_imports(ast.parse(path.read_text(), str(path)).body):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif node.module and node.level == 0:
                names.add(node.module)
    return {name for name in names if not _is_project(name) and name != "__future__"}


def _import_alone(name: str, answer: Connection) -> None:
    try:
        importlib.import_module(name)
        answer.send("")
    except BaseException:
        answer.send(traceback.format_exc(limit=-6))


def import_each_alone() -> dict[str, str]:
    """Module -> traceback for each project module that fails to import first in its
    process. Other packages load once here and each child is forked from this process,
    so a child loads only project modules: seconds for all of them, not minutes. Run it
    in an interpreter of its own (forking a process with other tests' threads is not
    safe)."""
    for name in sorted(_third_party()):
        importlib.import_module(name)
    fork = multiprocessing.get_context("fork")
    failed = {}
    for name in sorted(n for n in MODULES if not n.endswith("__main__")):
        mine, theirs = fork.Pipe(duplex=False)
        child = fork.Process(target=_import_alone, args=(name, theirs))
        child.start()
        error = mine.recv() if mine.poll(60) else "no answer in 60 s"
        child.join(10)
        if error:
            failed[name] = error
    return failed


def test_every_module_imports_first_in_a_fresh_process() -> None:
    code = "import json, tests.test_layering as t; print(json.dumps(t.import_each_alone()))"
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    failed: dict[str, str] = json.loads(done.stdout.splitlines()[-1])
    assert not failed, "\n".join(f"{name}:\n{error}" for name, error in failed.items())


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert _cycle(graph) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"b"}}) is None


def test_project_imports_form_no_cycle() -> None:
    graph = _graph()
    assert "consumers.worker.dlq" in graph["consumers.ops.replay"], "the graph missed an edge"
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def test_no_function_imports_a_project_module() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line} imports {target}"
        for path in MODULES.values()
        for line, target in _function_level_imports(ast.parse(path.read_text(), str(path)))
    ]
    assert not found, "import at the top, or move the code where it belongs:\n" + "\n".join(found)
