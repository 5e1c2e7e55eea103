"""The package's shape, as docs/architecture.md describes it: layers that only import downwards, no import
cycle between modules, small modules, and DAG files that reach the package only through its Airflow edge."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "include" / "returnledger"

FOUNDATION = {"models", "exception_types", "money", "moment", "fields", "store", "render", "clients"}
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


#: the one console module that may use the Airflow api-server's auth (core-internal modules that may change
#: between Airflow minor versions); everything else reaches Airflow through returnledger.airflow
AIRFLOW_AUTH_ADAPTER = "returnledger.console.auth"

#: the business subpackages, lowest first: each may import only those before it (docs/architecture.md)
BUSINESS_ORDER = (
    "reference",
    "exception_queue",
    "ledger",
    "screening",
    "intake",
    "amazon",
    "reconciliation",
    "reports",
    "sync",  # one sync run's steps (returnledger.sync.steps): they call into the business below
)


def _airflow_imports(path: Path) -> list[str]:
    """Every import of ``airflow`` in ``path``, in any form and at any depth (functions, TYPE_CHECKING)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [f"{n} (line {node.lineno})" for n in names if n == "airflow" or n.startswith("airflow.")]
    return found


@pytest.mark.parametrize("module", sorted(MODULES))
def test_only_the_airflow_edge_and_the_console_auth_adapter_import_airflow(module):
    if module == "returnledger.airflow" or module.startswith("returnledger.airflow."):
        return
    if module == AIRFLOW_AUTH_ADAPTER:
        return
    assert not _airflow_imports(MODULES[module]), (
        f"{module} imports Airflow: {_airflow_imports(MODULES[module])}; go through returnledger.airflow"
    )


def test_the_airflow_import_check_sees_every_form(tmp_path):
    """The check above sees function-level, aliased and dotted imports, not only the top of a file."""
    src = tmp_path / "m.py"
    src.write_text(
        "import os\nimport airflow\nfrom airflow_extra import x\n"
        "def f():\n    from airflow.sdk import ObjectStoragePath\n    import airflow.models as m\n"
    )
    assert _airflow_imports(src) == ["airflow (line 2)", "airflow.sdk (line 5)", "airflow.models (line 6)"]


def _package_graph() -> dict[str, dict[str, list[str]]]:
    """Business subpackage -> the other business subpackages it imports (anywhere in a module) -> where."""
    graph: dict[str, dict[str, list[str]]] = {p: {} for p in BUSINESS_ORDER}
    for module, path in MODULES.items():
        mine = module.split(".")[1] if module.count(".") >= 1 else ""
        if mine not in graph:
            continue
        for imported in _imports(path, top_level_only=False):
            theirs = imported.split(".")[1] if "." in imported else ""
            if theirs in graph and theirs != mine:
                graph[mine].setdefault(theirs, []).append(module)
    return graph


def test_the_business_order_names_every_business_subpackage():
    business = {m.split(".")[1] for m in MODULES if _layer(m) == "business" and m.count(".") >= 1}
    assert business == set(BUSINESS_ORDER)


def test_no_two_business_subpackages_import_each_other():
    graph = _package_graph()
    pairs = sorted(
        f"{a} <-> {b} ({sorted(set(graph[a][b]))} / {sorted(set(graph[b][a]))})"
        for a in graph
        for b in graph[a]
        if a < b and a in graph.get(b, {})
    )
    assert not pairs, "business subpackages that import each other: " + "; ".join(pairs)


def test_business_subpackages_import_only_those_below_them():
    """The one-way order of docs/architecture.md: a subpackage imports only those listed before it."""
    graph = _package_graph()
    upward = sorted(
        f"{a} -> {b} ({sorted(set(where))})"
        for a, targets in graph.items()
        for b, where in targets.items()
        if BUSINESS_ORDER.index(b) > BUSINESS_ORDER.index(a)
    )
    assert not upward, "imports against the business order: " + "; ".join(upward)
