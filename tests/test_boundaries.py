"""The code's boundaries, as tools check them: the import contracts in pyproject.toml, and no import cycle."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import ROOT


def test_the_import_contracts_hold():
    lint_imports = shutil.which("lint-imports", path=str(ROOT / ".venv" / "bin")) or shutil.which("lint-imports")
    if lint_imports is None:
        pytest.skip("import-linter is not installed (it comes with the test extra)")
    done = subprocess.run([lint_imports], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:]


def test_no_module_of_optwatch_imports_itself_back_through_others():
    """An import cycle inside the package (one ran through the probe and its plugins) is a design fault:
    each module's imports, function-level ones included, must form a graph without cycles."""
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("optwatch")
    modules = sorted(m for m in graph.modules if m.startswith("optwatch"))
    # A package's __init__ may name its submodules (optwatch.watch imports the probe lazily): the edges
    # that matter are between modules that hold code.
    edges = {
        m: {d for d in graph.find_modules_directly_imported_by(m) if d.startswith("optwatch.") and d != m}
        for m in modules
    }
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(module: str, path: list[str]) -> bool:
        state[module] = 1
        for target in edges.get(module, ()):
            if module == "optwatch" or target == "optwatch":
                continue
            if state.get(target) == 1:
                cycle.extend(path[path.index(target) :] + [module, target] if target in path else [module, target])
                return True
            if state.get(target) is None and visit(target, [*path, module]):
                return True
        state[module] = 2
        return False

    for module in modules:
        if state.get(module) is None and visit(module, []):
            break
    assert not cycle, " -> ".join(cycle)
