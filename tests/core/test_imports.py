"""The project's own modules import one another one way: no circle anywhere (counting imports inside functions
and those for types only)."""

from __future__ import annotations

import ast
from graphlib import TopologicalSorter
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("utils", "core", "pipeline", "training", "api", "ui")


def _graph() -> dict[str, set[str]]:
    files = {".".join(f.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): f
             for package in PACKAGES for f in (REPO / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        found = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in files:
                subs = {f"{node.module}.{a.name}" for a in node.names} & files.keys()
                found.update(subs or {node.module})  # from pipeline import progress: the submodule
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name in files)
        found.discard(name)
    return graph


def test_no_module_of_the_project_imports_itself_round_a_circle():
    graph = _graph()
    assert "core.store" in graph["core.local_store"] and "pipeline.runner" in graph["api.job_worker"]  # seen
    TopologicalSorter(graph).prepare()  # raises CycleError naming the circle
