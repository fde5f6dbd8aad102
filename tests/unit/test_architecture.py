"""The architecture holds: layers and forbidden imports (import-linter), no import cycle, rooms only.

The contracts live in pyproject.toml ([tool.importlinter]); README "Layout" explains them.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import grimp
import pytest
from importlinter.cli import lint_imports

import handlers
import worker

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
WORKER = Path(worker.__file__).resolve().parent
ROOT_PACKAGES = ("worker", "handlers", "config")
VENDORED = "vendor"  # third-party code kept as it was published (worker/vendor/__init__.py says why)

# One xdist worker runs this file's tests in turn: a test below writes a violating module into
# handlers/ for a moment, which the contract check, run at the same time on the other worker,
# saw and failed on (it happened on a local run of the suite).
pytestmark = pytest.mark.xdist_group("architecture")


def run_linter() -> int:
    return lint_imports(config_filename=str(PYPROJECT), no_cache=True, no_logo=True)


def contracts() -> dict[str, dict]:
    config = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]
    return {c["id"]: c for c in config["contracts"]}


def test_the_import_contracts_hold(capsys):
    assert run_linter() == 0, capsys.readouterr().out


def test_a_handler_importing_a_worker_room_breaks_the_contracts(capsys):
    violation = Path(handlers.__file__).resolve().parent / "_tmp_violation.py"
    violation.write_text('"""A domain module reaching into delivery: must be refused."""\n'
                         "from worker.delivery import outbox  # noqa: F401\n")
    try:
        assert run_linter() == 1
    finally:
        violation.unlink()
    out = capsys.readouterr().out
    assert "handlers._tmp_violation -> worker.delivery" in out
    assert "BROKEN" in out


def strongly_connected_components(graph: grimp.ImportGraph, modules: set[str]) -> list[set[str]]:
    """Tarjan's algorithm over the direct imports between `modules`."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(start: str) -> None:  # iterative: the graph is deep enough to hurt recursion
        work = [(start, iter(sorted(graph.find_modules_directly_imported_by(start) & modules)))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child) & modules))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                components.append(component)

    for module in sorted(modules):
        if module not in index:
            visit(module)
    return components


def test_no_module_import_cycle():
    graph = grimp.build_graph(*ROOT_PACKAGES, cache_dir=None)
    modules = {m for m in graph.modules if not m.startswith(f"worker.{VENDORED}")}
    components = strongly_connected_components(graph, modules)
    assert sum(len(c) for c in components) == len(modules)
    cycles = [sorted(c) for c in components if len(c) > 1]
    assert cycles == []


def test_the_cycle_finder_sees_a_cycle():
    """The check above is only as good as the finder: a two-module cycle must show up."""

    class Graph:
        imports = {"a": {"b"}, "b": {"a", "c"}, "c": set()}

        def find_modules_directly_imported_by(self, module):
            return self.imports[module]

    assert sorted(map(sorted, strongly_connected_components(Graph(), {"a", "b", "c"}))) == [["a", "b"], ["c"]]


def rooms() -> list[str]:
    return sorted(p.name for p in WORKER.iterdir() if (p / "__init__.py").is_file() and p.name != VENDORED)


def test_no_module_sits_in_worker_outside_a_room_but_the_composition_root():
    assert sorted(p.name for p in WORKER.glob("*.py")) == ["__init__.py", "runtime.py"]


@pytest.mark.parametrize("room", rooms())
def test_every_room_says_what_it_owns_and_is_placed_in_the_layers(room):
    doc = (WORKER / room / "__init__.py").read_text()
    assert doc.startswith('"""') and len(doc.split('"""')[1].split()) >= 8, f"worker/{room}/__init__.py has no docstring"
    named = {name.strip() for layer in contracts()["layers"]["layers"] for name in layer.replace("|", ":").split(":")}
    assert f"worker.{room}" in named
    if room != "pure":
        assert f"worker.{room}" in contracts()["domain"]["forbidden_modules"]
