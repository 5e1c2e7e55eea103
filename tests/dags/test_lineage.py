"""A DAG run emits OpenLineage events for our Assets (issue 24): ``dag.test()`` of returns_reconciliation in a
real Airflow (subprocess, metadata in PostgreSQL) with the OpenLineage provider's file transport (no
server), then the events read back: the reconcile task's input is the ledger's ``return_line`` table and
its output ``recon_result``, named as the postgres integration names them, and the export import reads
the store's ``exports/`` folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airflow_dag_run import throwaway_airflow
from returnledger_dev import scratch_db

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_reconciliation_run_emits_lineage_events_for_its_assets(pg_server, fresh_db, tmp_path):
    info = __import__("psycopg").conninfo.conninfo_to_dict(fresh_db)
    host, port, database = info.get("host", "127.0.0.1"), int(info.get("port", 5432)), info["dbname"]
    events_file = tmp_path / "openlineage" / "events.jsonl"
    events_file.parent.mkdir()
    store = tmp_path / "store"
    with throwaway_airflow(
        pg_server,
        tmp_path / "airflow_home",
        dag_files={"returns_reconciliation.py": (ROOT / "dags" / "returns_reconciliation.py").read_bytes()},
        prefix="lineage_airflow_meta",
        drop=("AIRFLOW_", "OPENLINEAGE"),
        extra_env={
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
            # the provider's own configuration: its file transport, one JSON event per line
            "AIRFLOW__OPENLINEAGE__NAMESPACE": "returnledger",
            "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
                {"type": "file", "log_file_path": str(events_file), "append": True}
            ),
            "AIRFLOW_CONN_RETURNS_DB": scratch_db.airflow_connection_json(fresh_db),
            "AIRFLOW_CONN_REBOUND_API": json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": 9}),
            "AIRFLOW_VAR_RETURNLEDGER_OBJECT_STORE": store.as_uri(),
        },
    ) as airflow:
        # a daily run: an empty ledger, no export yet (allowed on a daily run)
        proc = airflow.test("returns_reconciliation", logical="2026-11-10T00:00:00+00:00")
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
