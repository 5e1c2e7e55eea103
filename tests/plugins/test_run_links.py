"""From a run to what it did (issue 25): the task's identity travels in the ledger DSN the Airflow edge
builds (``ledger_dsn`` inside a task), PostgreSQL gets it as session settings, and the tasks' extra links
answer the console's run page only for a task the ledger records raising (sending) something."""

from __future__ import annotations

from types import SimpleNamespace

import psycopg
import pytest

from returnledger.airflow.links import RaisedExceptionsLink, SentCreditNotesLink, run_dsn

RUN = {
    "dag_id": "returns_sync",
    "run_id": r"manual run \ 2026-10-05T00:00:00+00:00",  # a space and a backslash, as a person may type
    "task_id": "apply",
    "map_index": -1,
    "try_number": 3,
}


def test_a_tasks_connections_carry_its_identity(monkeypatch, fresh_db):
    from returnledger.airflow.hooks import ledger_dsn
    from returnledger_dev import scratch_db

    monkeypatch.setenv("AIRFLOW_CONN_RETURNS_DB", scratch_db.airflow_connection_json(fresh_db))
    assert "returnledger.run_id" not in ledger_dsn()  # no task runs: the DSN as the connection says
    ti = SimpleNamespace(**RUN)
    monkeypatch.setattr("airflow.sdk.get_current_context", lambda: {"ti": ti})
    dsn = ledger_dsn()
    with psycopg.connect(dsn) as conn:
        got = [
            conn.execute(f"SELECT current_setting('returnledger.{k}')").fetchone()[0]
            for k in ("dag_id", "run_id", "task_id", "map_index", "try_number")
        ]
    assert got == [str(v) for v in RUN.values()]
    # options the connection had stay
    kept = run_dsn(fresh_db + " options='-c statement_timeout=5000'", RUN)
    with psycopg.connect(kept) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone()[0] == "5s"
        assert conn.execute("SELECT current_setting('returnledger.task_id')").fetchone()[0] == "apply"


def test_the_extra_links_answer_only_for_a_task_that_did_something(monkeypatch, fresh_db):
    from returnledger_dev import scratch_db

    monkeypatch.setenv("AIRFLOW_CONN_RETURNS_DB", scratch_db.airflow_connection_json(fresh_db))
    with psycopg.connect(run_dsn(fresh_db, RUN), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO ledger.exception (type, owner, subject_key, detail, opened_at, opened_by_batch)"
            " VALUES ('AMAZON_REJECTED', 'integration', 'R|1', 'x', now(), 'b')"
        )

    def key(dag_id, task_id):
        return SimpleNamespace(
            dag_id=dag_id, run_id=RUN["run_id"], task_id=task_id, map_index=-1, try_number=3
        )

    op = SimpleNamespace(dag_id="returns_sync")
    url = RaisedExceptionsLink().get_link(op, ti_key=key("returns_sync", "apply"))
    assert url.startswith("/returnledger/runs?dag_id=returns_sync&run_id=manual+run+")
    assert url.endswith("&task_id=apply&show=exceptions")
    assert RaisedExceptionsLink().get_link(op, ti_key=key("returns_sync", "confirm")) == ""
    assert SentCreditNotesLink().get_link(op, ti_key=key("returns_sync", "apply")) == ""
    assert RaisedExceptionsLink().get_link(op, ti_key=key("some_other_dag", "apply")) == ""
    monkeypatch.setenv("AIRFLOW_CONN_RETURNS_DB", "postgresql://nobody@127.0.0.1:1/none")
    assert RaisedExceptionsLink().get_link(op, ti_key=key("returns_sync", "apply")) == ""  # never breaks


def test_the_console_plugin_registers_the_links():
    pytest.importorskip("airflow.plugins_manager")
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "plugins" / "returnledger_console.py"
    spec = importlib.util.spec_from_file_location("returnledger_console_plugin", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    names = {link.name for link in module.ReturnledgerConsolePlugin.global_operator_extra_links}
    assert names == {"exceptions raised by this run", "credit notes sent by this run"}
    assert "Finance" in {v["name"] for v in module.ReturnledgerConsolePlugin.static_views}
