"""The floors of flair_core: a module imports from its own floor or lower ones only, the imports form no
cycle, and no flair_core import hides inside a function (the usual way to dodge a cycle), so a module's head
shows everything it depends on.

Read from the source with `ast`: nothing is imported. Edges are the import statements as written (importing
`a.b.c` also runs `a/b/__init__.py`, which is on the floor of its modules). The package root only re-exports:
it is the top floor, so no module imports it for a name.
"""

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

from tests.helpers.paths import REPO

PACKAGE = REPO / "flair_core"

# Lowest first. An entry is a module or a package (with all its modules), relative to flair_core;
# "" is the root.
FLOORS = (
    # files, configs, process groups and the maths the models are made of; no data, model or run
    ("ground",
     ("fileio", "lifetime", "model_config", "distributed", "pooling", "losses", "scores", "preprocess",
      "weights", "checkpoints")),
    ("data", ("data",)),  # built-in and benchmark data sets, captions, the training loader
    # the towers, each method's model and loss, building and loading
    ("models", ("towers", "methods", "models")),
    ("model users", ("inference", "run_config")),  # scoring with a model; a run's config (it names a method)
    ("evaluation", ("evaluation",)),  # benchmarks, metrics, reports
    ("training", ("training",)),  # the loop: it builds, trains, validates and checkpoints a model
    ("package root", ("",)),  # re-exports only
)

# (importer, imported) -> why it may reach up a floor. At most two; none today.
UPWARD_ALLOWED: dict[tuple[str, str], str] = {}


def module_names(package: Path = PACKAGE) -> dict[str, Path]:
    """Module name relative to flair_core ("data.loader", "data" for data/__init__.py, "" for the root) ->
    file."""
    names = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def covers(entry: str, module: str) -> bool:
    return module == entry or (entry != "" and module.startswith(entry + "."))


def floor_of(module: str) -> int:
    for level, (_, entries) in enumerate(FLOORS):
        if any(covers(e, module) for e in entries):
            return level
    raise KeyError(module)


def flair_core_imports(package: Path = PACKAGE) -> list[tuple[str, str, int, bool]]:
    """(importer, imported module, line, inside a function) for every import of flair_core."""
    modules = module_names(package)
    found = []
    for importer, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        in_function = {id(node) for fn in ast.walk(tree)
                       if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
                       for node in ast.walk(fn) if node is not fn}
        for node in ast.walk(tree):
            for target in _targets(node, modules):
                found.append((importer, target, node.lineno, id(node) in in_function))
    return found


def _targets(node: ast.AST, modules: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        return [_relative(alias.name) for alias in node.names if _relative(alias.name) is not None]
    if not isinstance(node, ast.ImportFrom):
        return []
    assert node.level == 0, f"line {node.lineno}: a relative import (flair_core imports by absolute names)"
    source = _relative(node.module)
    if source is None:
        return []
    # `from flair_core.evaluation import metrics` imports a module; `... import CHANCE` the package itself
    return [_join(source, a.name) if _join(source, a.name) in modules else source for a in node.names]


def _join(package: str, name: str) -> str:
    return f"{package}.{name}" if package else name


def _relative(name: str) -> str | None:
    if name == "flair_core":
        return ""
    return name.removeprefix("flair_core.") if name.startswith("flair_core.") else None


def upward(package: Path = PACKAGE) -> list[str]:
    return sorted({f"{importer} (line {line}, {FLOORS[floor_of(importer)][0]}) imports "
                   f"{target or 'flair_core'} ({FLOORS[floor_of(target)][0]})"
                   for importer, target, line, _ in flair_core_imports(package)
                   if floor_of(target) > floor_of(importer) and (importer, target) not in UPWARD_ALLOWED})


def cycle(package: Path = PACKAGE) -> list[str]:
    graph: dict[str, set[str]] = {}
    for importer, target, _, _ in flair_core_imports(package):
        graph.setdefault(importer, set()).add(target)
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as err:  # its cycle lists each module before the ones importing it
        return [name or "flair_core" for name in reversed(err.args[1])]
    return []


def function_level(package: Path = PACKAGE) -> list[str]:
    return sorted({f"{importer} line {line}: {target or 'flair_core'}"
                   for importer, target, line, inside in flair_core_imports(package) if inside})


def test_every_module_is_on_one_floor():
    for module in module_names():
        entries = [e for _, es in FLOORS for e in es if covers(e, module)]
        assert len(entries) == 1, (f"flair_core.{module or ''}: on {len(entries)} floors; put it on one in "
                                   "FLOORS")


def test_no_module_imports_from_a_higher_floor():
    found = upward()
    assert not found, "imports from a higher floor:\n" + "\n".join(found)
    assert len(UPWARD_ALLOWED) <= 2
    edges = {(importer, target) for importer, target, _, _ in flair_core_imports()}
    assert set(UPWARD_ALLOWED) <= edges, "an allowed upward import is gone: drop it from UPWARD_ALLOWED"


def test_the_imports_form_no_cycle():
    found = cycle()
    assert not found, "import cycle (each imports the next): " + " -> ".join(found)


def test_flair_core_is_imported_at_the_top_of_a_module_only():
    found = function_level()
    assert not found, "flair_core imported inside a function:\n" + "\n".join(found)
