"""Prefect lives only in flows/: every flow module imports it, and no module of the platform layer, the
dashboard, the services or the library does, so each of them runs (and its tests import) without the
orchestrator. Read with ast: nothing is imported, and an import inside a function counts too."""

import ast
from pathlib import Path

import pytest

from tests.helpers.paths import REPO


def imported(path: Path) -> set[str]:
    """The top-level packages a module imports, anywhere in it."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_every_flow_module_imports_prefect():
    flows = [p for p in (REPO / "flows").glob("*.py") if p.name != "__init__.py"]  # the marker is no flow
    assert len(flows) >= 3
    assert [p.name for p in flows if "prefect" not in imported(p)] == []


@pytest.mark.parametrize("package", ["flair_lab", "dashboard", "services", "flair_cli", "flair_core"])
def test_no_module_outside_flows_imports_prefect(package):
    modules = sorted((REPO / package).rglob("*.py"))
    assert modules
    assert [str(p.relative_to(REPO)) for p in modules if "prefect" in imported(p)] == []
