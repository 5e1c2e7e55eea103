"""Two recipes of docs/architecture.md, worked through with a throwaway change each (issue 23):

- "How to add a validation rule that quarantines": a throwaway check in the events suite raising a
  throwaway holding type; a run of the sync's steps holds the event that fails it (exception open, owner
  from owners.yaml) and applies the rest; later runs keep it waiting until a person resolves it, then the
  next run applies it.
- "How to add a task to returns_sync": a throwaway step added to ``returnledger.sync.steps.STEPS``
  becomes a task of the DAG in its place (upstream, doc, defaults) whose callable runs the step with the
  run's moment, and the runner outside the scheduler calls it in the same order.

Each test also checks that the recipe names the files it touched (and nothing that does not exist).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import psycopg
import pytest

from returnledger import exception_types as et
from returnledger.moment import RunMoment
from returnledger.sync import steps as sync_steps

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DAY1 = datetime(2026, 10, 6, tzinfo=UTC)
NEW_TYPE = "RECALLED_SKU"


def recipe_files(title: str) -> set[str]:
    """The repository files a recipe of docs/architecture.md names (backticked paths with a suffix)."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    m = re.search(rf"^### {re.escape(title)}\n(.*?)(?=^#|\Z)", text, re.S | re.M)
    assert m, f"docs/architecture.md has no recipe {title!r}"
    return set(re.findall(r"`((?:include|dags|dev|bench|tests|docs)/[\w./-]+\.(?:py|yaml|md|sql))`", m[1]))


# ------------------------------------------------------------------- a validation rule that quarantines


@pytest.fixture
def recalled_sku_rule(monkeypatch, tmp_path):
    """The recipe's steps, throwaway: a holding type (registry + owners.yaml, a copy of the reference folder)
    and a check in the events suite that raises it for a recalled SKU."""
    from returnledger.reference import owners
    from returnledger.screening import suite

    folder = tmp_path / "reference"
    shutil.copytree(owners.default_folder(), folder)
    with (folder / "owners.yaml").open("a") as f:
        f.write(f"{NEW_TYPE}:\n  owner: warehouse\n  sla_days: 2\n  what_to_do: Check the recall list.\n")
    monkeypatch.setattr(owners, "default_folder", lambda: folder)
    owners.default_owners.cache_clear()
    monkeypatch.setitem(
        et.KINDS,
        NEW_TYPE,
        et.ExceptionKind(
            NEW_TYPE,
            et.Subject.LINE,
            "the product is on the recall list",
            et.Holds.LINE,
            et.Release.CLOSE,
            "{return_id}|{line}",
        ),
    )
    built = suite.build_checks

    def with_rule() -> list:
        rule = suite.Check(
            "sku_not_recalled",
            NEW_TYPE,
            "ExpectColumnValuesToNotBeInSet",
            {"column": "sku", "value_set": ["SKU-RECALLED"], "row_condition": "is_line_event==True",
             "condition_parser": "pandas"},
            "SKU {sku!r} is recalled; the line waits for the warehouse",
        )  # fmt: skip
        et.screening_outcome(rule.exception_type)  # as build_checks does for its own checks
        return [*built(), rule]

    monkeypatch.setattr(suite, "build_checks", with_rule)
    yield NEW_TYPE
    owners.default_owners.cache_clear()


def _land(dsn: str, events: list[dict], at: datetime) -> None:
    from returnledger.intake.raw import land_rows, raw_rows

    with psycopg.connect(dsn) as conn:
        raw = [msgspec.Raw(msgspec.json.encode(e)) for e in events]
        land_rows(conn, raw_rows(raw), len(raw), window_end=at, batch_id="landed")


def _run(dsn: str, end: datetime) -> dict:
    """The sync's steps for the day ending at ``end``, as the DAG runs them (the feed already landed here;
    no Amazon)."""
    from returnledger_dev.run_window import ClientsEnv, run_steps

    skip = {"extract"} | {s.name for s in sync_steps.STEPS if s.amazon}
    return run_steps(
        ClientsEnv(dsn, vendor={"currency": "GBP"}), RunMoment(end, end - timedelta(days=1)), skip=skip
    )


def _state(dsn: str) -> dict:
    with psycopg.connect(dsn) as c:
        return {
            "lines": dict(c.execute("SELECT line, state FROM ledger.return_line WHERE return_id = 'RB-1'")),
            "open": c.execute(
                "SELECT type, subject_key, owner FROM ledger.exception WHERE status = 'open' ORDER BY 1, 2"
            ).fetchall(),
            "outcomes": dict(
                c.execute(
                    "SELECT r.event_key, o.status FROM ledger.raw_event r JOIN ledger.event_outcome o"
                    " USING (raw_id)"
                )
            ),
        }


def test_a_quarantining_rule_holds_the_failing_event_and_applies_the_rest(fresh_db, recalled_sku_rule):
    from returnledger.exception_queue.actions import resolve_exception
    from returnledger.intake.orders import store_return_orders
    from returnledger.reference import owners
    from returnledger.reference.load import load_reference
    from returnledger.store import migrate

    with psycopg.connect(fresh_db) as c:
        assert migrate.seed_exception_types(c) == 1  # `returnledger migrate` stores the new type
    # reason mappings, policy, owner teams (the new type's too: the fixture's copy of the reference folder)
    load_reference(fresh_db, owners.default_folder(), at=DAY1)
    with psycopg.connect(fresh_db) as c:
        store_return_orders(
            c,
            [
                {
                    "return_id": "RB-1",
                    "created_at": "2026-10-01T00:00:00Z",
                    "amazon_refs": {"returns_notice": "RN-1"},
                    "lines": [
                        {"line": 1, "sku": "SKU-A", "reason": "FAULTY", "quantity": 1},
                        {"line": 2, "sku": "SKU-RECALLED", "reason": "FAULTY", "quantity": 1},
                    ],
                }
            ],
        )
        for sku in ("SKU-A", "SKU-RECALLED"):  # both in the catalog: only the new rule fails line 2
            c.execute(
                "INSERT INTO ledger.sku (sku, asin, unit_cost, available, updated_at, updated_by)"
                " VALUES (%s, 'B000000001', 9.99, 0, %s, 'test')",
                (sku, DAY1),
            )
    received = {"type": "RECEIVED", "return_id": "RB-1", "quantity": 1, "occurred_at": "2026-10-05T10:00:00Z"}
    _land(
        fresh_db, [{"event_id": "r1", **received, "line": 1}, {"event_id": "r2", **received, "line": 2}], DAY1
    )

    stats = _run(fresh_db, DAY1)
    assert stats["route"] == ["quarantine", "apply"]
    assert stats["validate"]["failed"] == 1 and stats["validate"]["passed"] == 1
    state = _state(fresh_db)
    assert state["open"] == [(NEW_TYPE, "RB-1|2", "warehouse")]  # in the queue, with its owner
    assert state["outcomes"] == {"r1": "APPLIED", "r2": "HELD"}
    assert state["lines"] == {1: "RECEIVED", 2: "ANNOUNCED"}

    # the next runs keep it waiting (no "held, then released by apply in the same run")
    _run(fresh_db, DAY1 + timedelta(days=1))
    assert _state(fresh_db) == state

    # a person resolves it (the registry's release: CLOSE); the next run applies the held event
    with psycopg.connect(fresh_db) as c:
        (exc_id,) = c.execute(
            "SELECT exception_id FROM ledger.exception WHERE type = %s", (NEW_TYPE,)
        ).fetchone()
    resolve_exception(fresh_db, exc_id, actor="wendy", resolution="not recalled after all", at=DAY1)
    _run(fresh_db, DAY1 + timedelta(days=2))
    state = _state(fresh_db)
    assert state["lines"] == {1: "RECEIVED", 2: "RECEIVED"}
    assert state["outcomes"]["r2"] == "APPLIED" and state["open"] == []


def test_the_rule_recipe_names_the_files_the_rule_touched():
    touched = {
        "include/returnledger/screening/suite.py",  # the check (build_checks)
        "include/returnledger/exception_types.py",  # the holding type, when a new one is needed
        "include/reference/owners.yaml",  # its owner team and SLA
    }
    named = recipe_files("How to add a validation rule that quarantines")
    assert touched <= named, sorted(touched - named)
    assert all((ROOT / f).exists() for f in named), sorted(f for f in named if not (ROOT / f).exists())


# --------------------------------------------------------------------------- a task in returns_sync


def _throwaway_call(env, run, results):
    return {"run_end": run.end.isoformat(), "batch_id": run.batch_id, "after_apply": "apply" in results}


THROWAWAY = sync_steps.Step(
    "count_lines",
    "Counts the lines the run touched (a throwaway step of the recipe test).",
    _throwaway_call,
    after=("apply",),
    trigger_rule="none_failed",
)


@pytest.fixture
def with_throwaway_step(monkeypatch):
    """The recipe: one Step in STEPS, in its place (after apply, before the pushes)."""
    at = [s.name for s in sync_steps.STEPS].index("apply") + 1
    monkeypatch.setattr(sync_steps, "STEPS", (*sync_steps.STEPS[:at], THROWAWAY, *sync_steps.STEPS[at:]))
    return THROWAWAY


def test_a_new_step_runs_in_its_place_through_the_runner(with_throwaway_step, monkeypatch):
    from returnledger_dev.run_window import ClientsEnv, run_steps

    done = []

    def recorded(step):
        def call(env, run, results):
            done.append(step.name)
            if step.name == "validate":
                return {"failed": 0, "passed": 3}
            return step.call(env, run, results) if step is THROWAWAY or step.branch else {}

        return dataclasses.replace(step, call=call)

    monkeypatch.setattr(sync_steps, "STEPS", tuple(recorded(s) for s in sync_steps.STEPS))
    run = RunMoment(DAY1, DAY1 - timedelta(days=1))
    results = run_steps(ClientsEnv("postgresql://unused"), run)
    assert done == [
        "extract",
        "validate",
        "route",
        "apply",
        "count_lines",
        "push_inventory",
        "push_credits",
        "confirm",
        "finish",
    ]  # fmt: skip  (no failures: route picks apply only)
    assert results["count_lines"] == {
        "run_end": DAY1.isoformat(),
        "batch_id": run.batch_id,
        "after_apply": True,
    }


def test_a_new_step_becomes_a_task_of_the_dag_in_its_place(with_throwaway_step, tmp_path):
    os.environ.setdefault("AIRFLOW_HOME", str(tmp_path))
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags" / "returns_sync.py"))
    assert not bag.import_errors, bag.import_errors
    dag = bag.dags["returns_sync"]
    task = dag.get_task("count_lines")
    assert task.upstream_task_ids == {"extract", "apply"}
    assert task.downstream_task_ids == set()
    assert task.doc_md == THROWAWAY.doc and "`count_lines`" in dag.doc_md
    assert (
        task.owner == "integration"
        and task.retries >= 2
        and task.execution_timeout
        and task.on_failure_callback
    )
    # the task's callable runs the step with the run the first task handed on
    run = RunMoment(DAY1, DAY1 - timedelta(days=1))
    got = task.python_callable({**run.to_xcom(), "extract": {}})
    assert got == {"run_end": DAY1.isoformat(), "batch_id": run.batch_id, "after_apply": False}
    # the other tasks keep their edges
    assert dag.get_task("push_credits").upstream_task_ids == {"extract", "apply"}


def test_the_task_recipe_names_the_files_the_task_touched():
    touched = {"include/returnledger/sync/steps.py"}  # the Step; its function's business module besides
    named = recipe_files("How to add a task to returns_sync")
    assert touched <= named, sorted(touched - named)
    assert "dags/returns_sync.py" not in named  # the DAG is made from the steps: not touched
    assert all((ROOT / f).exists() for f in named), sorted(f for f in named if not (ROOT / f).exists())
