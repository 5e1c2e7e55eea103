"""A close run of a closed month under ``dag.test()`` (a real Airflow in a subprocess, its metadata in
PostgreSQL): the stored report comes back byte for byte and the task log says nothing was recomputed
(issue 22)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from returnledger_dev import scratch_db

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

RUNNER = """
import sys
from datetime import datetime
from airflow.dag_processing.dagbag import DagBag

bag = DagBag(dag_folder=sys.argv[1])
assert not bag.import_errors, bag.import_errors
dag = bag.dags["returns_reconciliation"]
dr = dag.test(logical_date=datetime.fromisoformat(sys.argv[2]), run_conf={"close_period": sys.argv[3]})
print("STATE", dr.state)
"""


def _returns_db(dsn: str) -> str:
    info = __import__("psycopg").conninfo.conninfo_to_dict(dsn)
    return json.dumps(
        {
            "conn_type": "postgres",
            "host": info.get("host", "127.0.0.1"),
            "port": int(info.get("port", 5432)),
            "login": info.get("user", "postgres"),
            "schema": info["dbname"],
        }
    )


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

    home = tmp_path / "airflow_home"
    dags = home / "dags"
    dags.mkdir(parents=True)
    (dags / "returns_reconciliation.py").write_bytes(
        (ROOT / "dags" / "returns_reconciliation.py").read_bytes()
    )
    (home / "runner.py").write_text(RUNNER)
    meta = scratch_db.create_scratch_database(pg_server, prefix="close_rerun_airflow_meta")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_"))}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=scratch_db.sqlalchemy_url(meta),
        AIRFLOW__CORE__LOAD_EXAMPLES="false",
        AIRFLOW__CORE__DAGS_FOLDER=str(dags),
        AIRFLOW__CORE__UNIT_TEST_MODE="false",
        AIRFLOW_CONN_RETURNS_DB=_returns_db(fresh_db),
        AIRFLOW_CONN_REBOUND_API=json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": 9}),
        AIRFLOW_VAR_RETURNLEDGER_REPORT_BASE=f"file://{reports}",
        AIRFLOW_VAR_RETURNLEDGER_EXPORT_BASE=f"file://{tmp_path / 'landing'}",
    )
    try:
        subprocess.run(
            [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
            env=env,
            check=True,
            capture_output=True,
            timeout=300,
        )
        # the close run of October (made on 3 November), run again
        proc = subprocess.run(
            [sys.executable, str(home / "runner.py"), str(dags), "2026-11-03T00:00:00+00:00", OCT],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        scratch_db.drop_database(pg_server, meta)
    out = proc.stdout + proc.stderr
    assert "STATE success" in proc.stdout, out[-6000:]
    assert {p.name: p.read_bytes() for p in (reports / OCT).iterdir()} == stored
    assert "2026-10 is closed (version 1" in out and "nothing is recomputed" in out, out[-6000:]
    assert AS_OF[OCT].isoformat() in out
