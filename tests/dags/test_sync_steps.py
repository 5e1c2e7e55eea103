"""returns_sync is made from the one definition of a sync run's steps (returnledger.sync.steps, issue 23):
one task per step, in the same order the runner calls them, with the edges, labels, pools and trigger rules
the steps say; and the run it had before the steps were defined once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from returnledger.sync.steps import STEPS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dag(tmp_path_factory):
    os.environ.setdefault("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow_home")))
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags" / "returns_sync.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags["returns_sync"]


def test_one_task_per_step_with_the_steps_edges(dag):
    assert {t.task_id for t in dag.tasks} == {s.name for s in STEPS}
    for s in STEPS:
        t = dag.get_task(s.name)
        assert t.upstream_task_ids == set(s.upstream()), s.name
        assert str(t.trigger_rule) == s.trigger_rule or t.trigger_rule == s.trigger_rule, s.name
        assert (t.pool == "amazon_sp_api") == s.amazon, s.name
        assert bool(t.outlets) == s.emits_ledger, s.name
        if s.branch_of:
            assert dag.get_edge_info(s.branch_of, s.name).get("label") == s.label


def test_the_steps_order_is_one_the_dag_allows(dag):
    seen: set[str] = set()
    for s in STEPS:
        assert dag.get_task(s.name).upstream_task_ids <= seen, f"{s.name} comes before its upstream"
        seen.add(s.name)


def test_the_run_is_the_one_it_was():
    """The DAG as it was wired by hand before issue 23: these upstream sets, labels and rules."""
    want = {
        "extract": set(),
        "validate": {"extract"},
        "route": {"validate"},
        "quarantine": {"extract", "route"},
        "apply": {"extract", "route", "quarantine"},
        "push_inventory": {"extract", "apply"},
        "push_credits": {"extract", "apply"},
        "confirm": {"extract", "push_inventory", "push_credits"},
        "finish": {"extract", "validate", "confirm"},
    }
    assert {s.name: set(s.upstream()) for s in STEPS} == want
    assert [s.name for s in STEPS if s.amazon] == ["push_inventory", "push_credits", "confirm"]
    rules = {s.name: s.trigger_rule for s in STEPS if s.trigger_rule != "all_success"}
    assert rules == {
        "apply": "none_failed_min_one_success",
        "push_inventory": "none_failed",
        "push_credits": "none_failed",
        "confirm": "none_failed",
    }


def test_the_dag_doc_lists_the_steps_in_order(dag):
    doc = dag.doc_md
    positions = [doc.index(f"`{s.name}` - ") for s in STEPS]
    assert positions == sorted(positions)
