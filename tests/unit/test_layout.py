"""The package's layout (docs/design.md, "Layout"): every module imports; each imports only from
its own subpackage or from a lower layer, with no circles; no module or function is too long."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "dgkd_core"

# Lowest first. A module may import from its own unit and from units of lower layers only; the
# units of one layer do not import each other.
LAYERS = [
    {"errors"},
    {"io", "schema", "device"},
    {"method"},
    {"config"},
    {"data"},
    {"runtime"},
    {"guides"},
    {"training"},
    {"experiment"},
    {"reporting"},
    {"campaign"},
    {"bench"},
    {"cli"},
    {"__main__"},
]
RANK = {unit: rank for rank, layer in enumerate(LAYERS) for unit in layer}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def unit(module: str) -> str | None:
    """The layer unit of a dgkd_core module: its subpackage, or the root module itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def imported_modules(path: Path) -> set[str]:
    """The dgkd_core modules `path` imports, at any depth (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("dgkd_core"))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and \
                (node.module or "").startswith("dgkd_core"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
    return found - {"dgkd_core"}


GRAPH = {name: imported_modules(path) for name, path in MODULES.items()}


@pytest.mark.parametrize("name", sorted(n for n in MODULES if not n.endswith("__main__")))
def test_every_module_imports(name):
    importlib.import_module(name)


def test_every_unit_has_a_layer():
    units = {unit(name) for name in MODULES} - {None}
    assert units <= set(RANK), f"add {sorted(units - set(RANK))} to LAYERS"


def test_no_module_imports_from_its_own_layer_or_above():
    wrong = []
    for name, targets in GRAPH.items():
        here = unit(name)
        for target in targets:
            there = unit(target)
            if here is None or there == here:
                continue
            if RANK[there] >= RANK[here]:
                wrong.append(f"{name} -> {target}")
    assert not wrong, "imports that go up or sideways:\n" + "\n".join(sorted(wrong))


def test_no_import_circles():
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = "open"
        stack.append(name)
        for target in sorted(GRAPH.get(name, ())):
            if state.get(target) == "open":
                circle = stack[stack.index(target):] + [target]
                pytest.fail("import circle: " + " -> ".join(circle))
            if target not in state:
                visit(target)
        stack.pop()
        state[name] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)


def test_modules_and_functions_are_short():
    long = []
    for name, path in MODULES.items():
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            long.append(f"{name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert not long, "over the limits:\n" + "\n".join(long)


def test_test_files_have_distinct_names():
    """pytest imports test files by basename (rootdir, no packages): two files of one name stop
    the whole run at collection."""
    names = [p.name for p in (PACKAGE.parent / "tests").rglob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []
