"""The pipeline's modules import one another one way: no circle (counting imports inside functions and those for
types only), and no phase imports an executor (the run's context hands a phase its executor)."""

from __future__ import annotations

import ast
from graphlib import TopologicalSorter
from pathlib import Path

PIPELINE = Path(__file__).resolve().parents[2] / "pipeline"
PHASES = {"validation", "download", "extraction", "indexing"}
EXECUTORS = {"local_executor", "ray_executor", "ray_tasks"}


def _imports() -> dict[str, set[str]]:
    """Each pipeline module -> the pipeline modules it imports anywhere in its source."""
    modules = {p.stem for p in PIPELINE.glob("*.py")} - {"__init__"}
    graph: dict[str, set[str]] = {}
    for name in modules:
        found = graph.setdefault(name, set())
        for node in ast.walk(ast.parse((PIPELINE / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "pipeline":  # from pipeline import progress
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline."):
                found.add((node.module or "").split(".")[1])
            elif isinstance(node, ast.Import):
                found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("pipeline."))
        found &= modules - {name}
    return graph


def test_no_import_circle_and_no_phase_imports_an_executor():
    graph = _imports()
    assert "image_cache" in graph["download"] and "image_cache" in graph["ray_tasks"]  # the walk sees imports
    TopologicalSorter(graph).prepare()  # raises CycleError naming the circle
    assert {(phase, imported) for phase in PHASES for imported in graph[phase] & EXECUTORS} == set()
