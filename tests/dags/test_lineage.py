"""A DAG run emits OpenLineage events for our Assets (issue 24): ``dag.test()`` of returns_reconciliation in a
real Airflow (subprocess, metadata in PostgreSQL) with the OpenLineage provider's file transport (no
server), then the events read back: the reconcile task's input is the ledger's ``return_line`` table and
its output ``recon_result``, named as the postgres integration names them, and the export import reads
the store's ``exports/`` folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from returnledger_dev import scratch_db

ROOT = Path(__file__).resolve().parents[2]

RUNNER = """
import sys
from datetime import datetime
from airflow.dag_processing.dagbag import DagBag

bag = DagBag(dag_folder=sys.argv[1])
assert not bag.import_errors, bag.import_errors
dr = bag.dags["returns_reconciliation"].test(logical_date=datetime.fromisoformat(sys.argv[2]))
print("STATE", dr.state)
"""


@pytest.mark.slow
def test_a_reconciliation_run_emits_lineage_events_for_its_assets(pg_server, fresh_db, tmp_path):
    info = __import__("psycopg").conninfo.conninfo_to_dict(fresh_db)
    host, port, database = info.get("host", "127.0.0.1"), int(info.get("port", 5432)), info["dbname"]
    home = tmp_path / "airflow_home"
    dags = home / "dags"
    dags.mkdir(parents=True)
    (dags / "returns_reconciliation.py").write_bytes(
        (ROOT / "dags" / "returns_reconciliation.py").read_bytes()
    )
    (home / "runner.py").write_text(RUNNER)
    events_file = tmp_path / "openlineage" / "events.jsonl"
    events_file.parent.mkdir()
    store = tmp_path / "store"
    meta = scratch_db.create_scratch_database(pg_server, prefix="lineage_airflow_meta")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_", "OPENLINEAGE"))}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=scratch_db.sqlalchemy_url(meta),
        AIRFLOW__CORE__LOAD_EXAMPLES="false",
        AIRFLOW__CORE__DAGS_FOLDER=str(dags),
        AIRFLOW__CORE__UNIT_TEST_MODE="false",
        AIRFLOW__LOGGING__LOGGING_LEVEL="WARNING",
        # the provider's own configuration: its file transport, one JSON event per line
        AIRFLOW__OPENLINEAGE__NAMESPACE="returnledger",
        AIRFLOW__OPENLINEAGE__TRANSPORT=json.dumps(
            {"type": "file", "log_file_path": str(events_file), "append": True}
        ),
        AIRFLOW_CONN_RETURNS_DB=json.dumps(
            {
                "conn_type": "postgres",
                "host": host,
                "port": port,
                "login": info.get("user", "postgres"),
                "schema": database,
            }
        ),
        AIRFLOW_CONN_REBOUND_API=json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": 9}),
        AIRFLOW_VAR_RETURNLEDGER_OBJECT_STORE=store.as_uri(),
    )
    try:
        subprocess.run(
            [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
            env=env,
            check=True,
            capture_output=True,
            timeout=300,
        )
        # a daily run: an empty ledger, no export yet (allowed on a daily run)
        proc = subprocess.run(
            [sys.executable, str(home / "runner.py"), str(dags), "2026-11-10T00:00:00+00:00"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        scratch_db.drop_database(pg_server, meta)
    out = proc.stdout + proc.stderr
    assert "STATE success" in proc.stdout, out[-6000:]
    assert events_file.exists(), out[-6000:]
    events = [json.loads(line) for line in events_file.read_text().splitlines() if line.strip()]

    def datasets(task: str, side: str) -> set[tuple[str, str]]:
        return {
            (d["namespace"], d["name"])
            for e in events
            if e["job"]["name"] == f"returns_reconciliation.{task}" and e["eventType"] == "COMPLETE"
            for d in e.get(side, [])
        }

    assert {e["job"]["namespace"] for e in events} == {"returnledger"}
    # a Unix-socket ledger (the embedded server) is named on localhost (returnledger.airflow.assets)
    ledger_ns = f"postgres://{host if host and not host.startswith('/') else 'localhost'}:{port}"
    assert datasets("reconcile", "inputs") == {(ledger_ns, f"{database}.ledger.return_line")}
    assert datasets("reconcile", "outputs") == {(ledger_ns, f"{database}.ledger.recon_result")}
    assert datasets("import_amazon_export", "inputs") == {("file", f"{store}/exports")}
    # the run itself: START and COMPLETE of the DAG's job
    run_events = {e["eventType"] for e in events if e["job"]["name"] == "returns_reconciliation"}
    assert "COMPLETE" in run_events, sorted(run_events)
