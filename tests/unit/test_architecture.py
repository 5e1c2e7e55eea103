"""The package's shape, as docs/architecture.md describes it: layers that only import downwards, no import
cycle between modules, small modules, and DAG files that reach the package only through its Airflow edge."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "include" / "returnledger"

FOUNDATION = {"models", "money", "store", "render", "clients"}
EDGE = {"airflow", "console", "cli"}
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    """Modules of the package that ``path`` imports (at module level only, or anywhere)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:  # module-level imports, including those under `if TYPE_CHECKING:` are excluded
        nodes = [n for n in nodes if isinstance(n, ast.Import | ast.ImportFrom)]
    out = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("returnledger"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.add(full if full in MODULES else node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("returnledger"))
    return out


def _layer(module: str) -> str:
    part = module.split(".")[1] if "." in module else ""
    return "foundation" if part in FOUNDATION else "edge" if part in EDGE else "business"


def test_no_import_cycle_between_modules():
    graph = {m: _imports(p, top_level_only=True) & MODULES.keys() for m, p in MODULES.items()}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                pytest.fail("import cycle: " + " -> ".join([*path[path.index(n) :], n]))
            if n not in state:
                visit(n, [*path, n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_layers_import_downwards(module):
    """Foundations import no business or edge module; business modules import no edge module."""
    mine = _layer(module)
    if mine == "edge":
        return
    allowed = {"foundation"} if mine == "foundation" else {"foundation", "business"}
    wrong = {m for m in _imports(MODULES[module], top_level_only=False) if _layer(m) not in allowed}
    # a foundation subpackage may use its own modules (clients.amazon uses clients.ratelimit)
    wrong = {m for m in wrong if m.split(".")[:2] != module.split(".")[:2]}
    assert not wrong, f"{module} ({mine}) imports {sorted(wrong)}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_small(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines; split it by concept (docs/architecture.md)"


@pytest.mark.parametrize("dag_file", sorted((ROOT / "dags").glob("*.py")), ids=lambda p: p.name)
def test_dag_files_reach_the_package_only_through_its_airflow_edge(dag_file):
    top = _imports(dag_file, top_level_only=True)
    assert all(m.startswith("returnledger.airflow") for m in top), sorted(top)


def test_subpackage_inits_only_say_what_they_are_for():
    for init in PACKAGE.rglob("__init__.py"):
        if init.parent == PACKAGE:
            continue
        body = ast.parse(init.read_text()).body
        assert len(body) == 1 and isinstance(body[0], ast.Expr), f"{init} should hold only its docstring"
