"""The study package: one concept per module and no import cycle between them (checked on the source)."""

from __future__ import annotations

import ast
from pathlib import Path

import memscan.study

STUDY = Path(memscan.study.__file__).parent


def _memscan_imports(path: Path) -> set[str]:
    """Every ``memscan.*`` module ``path`` imports, at the top or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("memscan"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("memscan"))
    return out


def _study_graph() -> dict[str, set[str]]:
    modules = {p.stem for p in STUDY.glob("*.py") if p.stem != "__init__"}
    return {
        m: {i.split(".")[2] for i in _memscan_imports(STUDY / f"{m}.py") if i.startswith("memscan.study.")}
        & modules
        for m in modules
    }


def test_the_study_modules_import_each_other_without_a_cycle():
    graph = _study_graph()
    state: dict[str, int] = {}

    def visit(m: str, trail: list[str]) -> None:
        if state.get(m) == 1:
            raise AssertionError(f"import cycle: {' -> '.join([*trail, m])}")
        if state.get(m) == 2:
            return
        state[m] = 1
        for n in sorted(graph[m]):
            visit(n, [*trail, m])
        state[m] = 2

    for m in sorted(graph):
        visit(m, [])
    assert {"config", "stages", "subsets", "grid", "table", "report", "pipeline"} <= set(graph)


def test_the_report_uses_only_lower_modules_and_no_private_report_helpers():
    imports = _memscan_imports(STUDY / "report.py")
    assert not any(i.startswith("memscan.study.pipeline") for i in imports), imports
    assert not any(i.startswith("memscan.report.html") for i in imports), imports
    assert {i.split(".")[2] for i in imports if i.startswith("memscan.study.")} <= {"config", "grid", "table"}


def test_every_module_but_the_runner_is_importable_without_it():
    """The lower modules never import the pipeline (the runner sits on top)."""
    for m, deps in _study_graph().items():
        if m != "pipeline":
            assert "pipeline" not in deps, m
