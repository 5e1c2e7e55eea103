"""A close run of a closed month under ``dag.test()`` (a real Airflow in a subprocess, its metadata in
PostgreSQL): the stored report comes back byte for byte and the task log says nothing was recomputed
(issue 22)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from airflow_dag_run import throwaway_airflow
from returnledger_dev import scratch_db

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "integration"))


@pytest.mark.slow
def test_a_cleared_close_run_of_a_closed_month_returns_the_stored_report(pg_server, fresh_db, tmp_path):
    from test_periods import AS_OF, OCT, close
    from test_reconcile_helpers import Ledger

    led = Ledger(fresh_db)
    try:
        n = led.order("RB-B", "2026-10-10")
        led.line(
            "RB-B", 1, "SKU-C", received=1, grade="A", disposition="RESTOCKED", dispositioned="2026-10-12"
        )
        led.credit("RB-B", 1, "SKU-C", 1, "SUBMITTED")
        led.amazon("AR-RB-B", n, "SKU-C", 1)
        reports = tmp_path / "reports"
        close(led, OCT, reports)  # October's close, stored
        stored = {p.name: p.read_bytes() for p in (reports / OCT).iterdir()}
        # the ledger moves on, the files are lost: a recomputed report would differ
        led.conn.execute("UPDATE ledger.amazon_submission SET status = 'ACCEPTED' WHERE return_id = 'RB-B'")
        led.conn.execute("UPDATE ledger.credit_note SET confirmed_by = 'SUCCESS' WHERE return_id = 'RB-B'")
        for p in (reports / OCT).iterdir():
            p.unlink()
    finally:
        led.close()

    with throwaway_airflow(
        pg_server,
        tmp_path / "airflow_home",
        dag_files={"returns_reconciliation.py": (ROOT / "dags" / "returns_reconciliation.py").read_bytes()},
        prefix="close_rerun_airflow_meta",
        extra_env={
            "AIRFLOW_CONN_RETURNS_DB": scratch_db.airflow_connection_json(fresh_db),
            "AIRFLOW_CONN_REBOUND_API": json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": 9}),
            "AIRFLOW_VAR_RETURNLEDGER_REPORT_BASE": f"file://{reports}",
            "AIRFLOW_VAR_RETURNLEDGER_EXPORT_BASE": f"file://{tmp_path / 'landing'}",
        },
    ) as airflow:
        # the close run of October (made on 3 November), run again
        proc = airflow.test(
            "returns_reconciliation", logical="2026-11-03T00:00:00+00:00", conf={"close_period": OCT}
        )
    out = proc.stdout + proc.stderr
    assert "STATE success" in proc.stdout, out[-6000:]
    assert {p.name: p.read_bytes() for p in (reports / OCT).iterdir()} == stored
    assert "2026-10 is closed (version 1" in out and "nothing is recomputed" in out, out[-6000:]
    assert AS_OF[OCT].isoformat() in out
