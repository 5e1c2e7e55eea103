"""DAG policy tests (as in the Astro template): every DAG imports, is documented and owned."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAG_FILES = sorted((ROOT / "dags").glob("*.py"))
HEAVY = ("pandas", "great_expectations", "sp_api", "numpy")


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    os.environ.setdefault("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow_home")))
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


def test_no_import_errors(dagbag):
    assert not dagbag.import_errors, dagbag.import_errors
    assert "returns_sync" in dagbag.dags


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.name)
def test_one_dag_per_file_named_after_it(dagbag, dag_file):
    ids = [d.dag_id for d in dagbag.dags.values() if Path(d.fileloc).name == dag_file.name]
    assert ids == [dag_file.stem]


def test_policy(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        assert dag.doc_md and len(dag.doc_md) > 200, f"{dag_id} needs a doc_md that explains it"
        assert dag.on_failure_callback, f"{dag_id} has no DAG-level failure notifier"
        for t in dag.tasks:
            assert t.owner and t.owner != "airflow", f"{dag_id}.{t.task_id} has no owner"
            assert t.retries >= 2, f"{dag_id}.{t.task_id} retries {t.retries} < 2"
            assert t.on_failure_callback, f"{dag_id}.{t.task_id} has no failure notifier"
            assert t.execution_timeout is not None, f"{dag_id}.{t.task_id} has no execution_timeout"
            assert t.doc_md, f"{dag_id}.{t.task_id} has no docstring (the UI shows it as the task's doc)"


def test_sync_routes_with_labels_and_pool(dagbag):
    dag = dagbag.dags["returns_sync"]
    route = dag.get_task("route")
    assert set(route.downstream_task_ids) == {"quarantine", "apply"}
    for t in ("push_inventory", "push_credits", "confirm"):
        assert dag.get_task(t).pool == "amazon_sp_api"
    assert dag.get_task("confirm").outlets, "returns_sync must emit the ledger Asset"


def test_task_results_are_one_xcom_each(dagbag):
    """A task returning a dict pushes it as one XCom: inferred multiple_outputs would also push every key
    as its own XCom (40 extra writes a daily run), and the DAGs only ever read the whole result."""
    for dag_id, dag in dagbag.dags.items():
        for t in dag.tasks:
            assert not getattr(t, "multiple_outputs", False), f"{dag_id}.{t.task_id} pushes each key"


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.name)
def test_no_heavy_imports_at_top(dag_file):
    for line in dag_file.read_text().splitlines():
        if line.startswith(("import ", "from ")):
            assert not any(line.split()[1].startswith(h) for h in HEAVY), f"{dag_file.name}: {line}"


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.name)
def test_parse_time_well_under_a_second(dag_file, tmp_path):
    """Import each DAG file in a fresh interpreter after Airflow itself is loaded; time the file only."""
    code = (
        "import time, importlib.util, airflow.sdk\n"
        "import returnledger.airflow.defaults, returnledger.airflow.schedule, returnledger.airflow.tasks\n"
        f"spec = importlib.util.spec_from_file_location('d', {str(dag_file)!r})\n"
        "m = importlib.util.module_from_spec(spec); t = time.perf_counter(); spec.loader.exec_module(m)\n"
        "print(time.perf_counter() - t)\n"
    )
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    seconds = float(out.stdout.strip().splitlines()[-1])
    assert seconds < 1.0, f"{dag_file.name} takes {seconds:.2f}s to parse"


def _decorator_root(node: ast.expr) -> str:
    """``dag`` for ``@dag(...)``, ``task`` for ``@task``, ``@task.branch`` or ``@task(pool=...)``."""
    while isinstance(node, (ast.Call, ast.Attribute)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else ""


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.name)
def test_dag_files_are_wiring_only(dag_file):
    """A DAG file defines its DAG and that DAG's tasks; any other function or class belongs in the package."""
    tree = ast.parse(dag_file.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            pytest.fail(f"{dag_file.name}: class {node.name} belongs in the package")
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            roots = {_decorator_root(d) for d in getattr(node, "decorator_list", [])}
            name = getattr(node, "name", "lambda")
            assert roots & {"dag", "task"}, f"{dag_file.name}: {name} is neither a DAG nor a task"
