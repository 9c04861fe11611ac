"""The packages depend on each other one way (DESIGN section 3).

engine <- store <- shards <- workers, gateway <- payments; bench and
simulators use the library packages; nothing in the library imports bench,
simulators or payments; no import of ours hides inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "store", "shards", "workers", "gateway", "simulators", "bench", "payments")
LIBRARY = ("engine", "store", "shards", "workers", "gateway")
OUTSIDE_LIBRARY = ("simulators", "bench", "payments")


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, whether the import sits inside a function) of a file."""
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend((alias.name, in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.append((child.module, in_function))
            visit(child, inside)

    visit(tree, False)
    return found


def _package_files() -> dict[str, list[Path]]:
    return {package: sorted((ROOT / package).glob("**/*.py")) for package in PACKAGES if (ROOT / package).is_dir()}


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {package: set() for package in _package_files()}
    for package, files in _package_files().items():
        for path in files:
            for module, _ in _imports(path):
                target = module.split(".")[0]
                if target in PACKAGES and target != package:
                    edges[package].add(target)
    return edges


def test_no_package_level_import_cycle() -> None:
    edges = _edges()
    state: dict[str, str] = {}

    def walk(package: str, path: list[str]) -> None:
        state[package] = "open"
        for target in sorted(edges.get(package, ())):
            assert state.get(target) != "open", "import cycle: " + " -> ".join([*path, package, target])
            if target not in state:
                walk(target, [*path, package])
        state[package] = "done"

    for package in sorted(edges):
        if package not in state:
            walk(package, [])


def test_the_library_never_imports_bench_simulators_or_payments() -> None:
    edges = _edges()
    for package in LIBRARY:
        assert not edges.get(package, set()) & set(OUTSIDE_LIBRARY), (package, edges.get(package))


def test_the_engine_imports_nothing_of_ours_but_itself() -> None:
    assert _edges().get("engine", set()) == set()


def test_no_import_of_ours_hides_inside_a_function() -> None:
    hidden = [
        f"{path.relative_to(ROOT)}: {module}"
        for files in _package_files().values()
        for path in files
        for module, in_function in _imports(path)
        if in_function and module.split(".")[0] in PACKAGES
    ]
    assert hidden == []
