"""The first-party import graph (tasks/, pipelines/) has no cycle.

Edges are read from the source with ``ast``, not from a running interpreter, so an import inside
a function counts as much as one at the top: a lazy import defers a cycle to the first call, it
does not remove it; an import under ``if __name__ == "__main__":`` counts too (a stage that
imports the CLI to run as ``python -m`` ties the two together as much as any other import). Only
imports under ``if TYPE_CHECKING:`` are not edges: they never run, they name types for annotations.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("tasks", "pipelines")


def _modules() -> dict[str, Path]:
    """{dotted module name: source file} of every module of the first-party packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _type_checking(test: ast.expr) -> bool:
    return ast.unparse(test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")


def _imported(node: ast.AST, name: str, is_package: bool) -> list[str]:
    """Dotted names an import statement ``node`` of module ``name`` can load (absolute)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:  # relative: resolved against the importing module's package
        package = name.split(".") if is_package else name.split(".")[:-1]
        base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
    else:
        base = node.module
    # `from a import b` loads a.b when b is a submodule, else it reads an attribute of a.
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def _edges(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """First-party modules ``name`` imports, at the top or inside any function or class."""
    found: set[str] = set()
    is_package = path.name == "__init__.py"

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for target in _imported(node, name, is_package):
                # Importing a.b.c also imports a and a.b: their __init__ modules run first.
                parts = target.split(".")
                found.update(".".join(parts[:k]) for k in range(1, len(parts) + 1)
                             if ".".join(parts[:k]) in modules)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    found.discard(name)
    return found


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of ``graph`` (node -> successors), iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            step = next(successors, None)
            if step is not None:
                if step not in index:
                    index[step] = low[step] = len(index)
                    stack.append(step)
                    on_stack.add(step)
                    work.append((step, iter(sorted(graph[step]))))
                elif step in on_stack:
                    low[node] = min(low[node], index[step])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def _cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One closed path through ``component``: the failure message shows how the circle closes."""
    members, start = set(component), component[0]
    paths = {start: [start]}
    queue = [start]
    while queue:  # breadth first: the shortest way back to the start
        node = queue.pop(0)
        for step in sorted(graph[node] & members):
            if step == start:
                return paths[node] + [start]
            if step not in paths:
                paths[step] = paths[node] + [step]
                queue.append(step)
    return component


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _edges(name, path, modules) for name, path in modules.items()}


def test_the_tarjan_walk_finds_a_known_cycle():
    """The checker against a graph written by hand: a 3-circle, a self-free chain, a 2-circle."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": set(), "f": {"g"}, "g": {"f"}}
    found = sorted(c for c in strongly_connected(graph) if len(c) > 1)
    assert found == [["a", "b", "c"], ["f", "g"]]
    assert _cycle(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]


def test_the_graph_sees_lazy_and_main_imports_and_skips_type_checking(tmp_path):
    source = ("from typing import TYPE_CHECKING\nimport tasks.errors\n"
              "if TYPE_CHECKING:\n    from pipelines.sweep import SweepConfig\n"
              "def f():\n    from pipelines import cli\n"
              "if __name__ == '__main__':\n    from pipelines.report import write_report\n")
    path = tmp_path / "module.py"
    path.write_text(source)
    assert _edges("pipelines.module", path, _modules()) == {"tasks", "tasks.errors", "pipelines",
                                                             "pipelines.cli", "pipelines.report"}


def test_no_import_cycle_among_first_party_modules():
    graph = import_graph()
    assert {"pipelines.cli", "pipelines.sweep", "tasks.model.models"} <= set(graph)  # it read the tree
    circles = [c for c in strongly_connected(graph) if len(c) > 1]
    assert not circles, "import cycles: " + "; ".join(
        f"{', '.join(c)} import each other, e.g. {' -> '.join(_cycle(graph, c))}" for c in circles)


def test_tasks_never_imports_pipelines_and_its_subpackages_import_one_way():
    """``tasks`` sits below ``pipelines``; within it, its subpackages (``tasks.model``,
    ``tasks.training``, ...) and shared modules (``tasks.errors``), each taken as one node, form
    no circle either, so the layout reads as layers (docs/architecture.md)."""
    graph = import_graph()
    upward = sorted(f"{name} -> {target}" for name, targets in graph.items() if name.startswith("tasks")
                    for target in targets if target.startswith("pipelines"))
    assert not upward, "tasks imports pipelines: " + "; ".join(upward)

    def unit(name: str) -> str:
        return ".".join(name.split(".")[:2])

    units: dict[str, set[str]] = {}
    for name, targets in graph.items():
        if name.startswith("tasks."):
            units.setdefault(unit(name), set()).update(
                unit(target) for target in targets if target.startswith("tasks.") and unit(target) != unit(name))
    assert {"tasks.model", "tasks.training", "tasks.errors"} <= set(units)  # it read the tree
    for targets in units.values():
        targets &= set(units)
    circles = [c for c in strongly_connected(units) if len(c) > 1]
    assert not circles, "tasks subpackages import each other: " + "; ".join(
        " -> ".join(_cycle(units, c)) for c in circles)


def test_configs_and_the_trial_import_without_torch_or_ray_data():
    """Every CLI process, the sweep's driver before its first stage and every Tune trial actor
    (which unpickles its TrialSpec and configs) import the schemas and pipelines.trial; torch and
    Ray Data (about 5 s of CPU per process on 2 cores) load only where a model or a dataset is
    built. Checked in a fresh interpreter: this one has loaded both."""
    import os
    import subprocess
    import sys

    heavy = ("torch", "ray.data", "transformers", "mteb")
    code = ("import sys, pipelines.cli, pipelines.sweep, pipelines.trial, pipelines.schemas.sweep; "
            f"print(','.join(m for m in {heavy!r} if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.stdout.strip() == "", f"imported at start: {loaded.stdout.strip()}"
