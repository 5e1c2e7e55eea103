"""Failures a retry cannot fix end the task at once (issue 24): bad Amazon credentials and a rejected
export raise AirflowFailException at the task edge (returnledger.airflow.tasks.fail_fast) with a message
that says what to fix; the business modules keep raising their own errors.

The tasks run as the DAG defines them (their python_callable), against a real ledger, the SP-API
simulator and a real export file."""

from __future__ import annotations

import json
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException

from returnledger.store import db
from returnledger_dev.demo.airflow_run import load_dag

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
from test_money_path import _seed_pending_notes, _sync_without_push  # noqa: E402

pytestmark = pytest.mark.integration


def test_bad_amazon_credentials_fail_push_credits_at_once_saying_what_to_fix(ledger, tmp_path, monkeypatch):
    from returnledger_dev.sandbox.harness import run_sandbox

    path, _ = _seed_pending_notes(ledger, tmp_path, n=4)
    with run_sandbox(path, tmp_path / "out", faults=False) as sb:
        end, batch = _sync_without_push(ledger, sb, date(2026, 10, 5))
        monkeypatch.setenv(
            "AIRFLOW_CONN_AMAZON_SP_API",
            json.dumps(
                {
                    "conn_type": "amazon_sp_api",
                    "host": sb.amazon_url,
                    "login": sb.lwa_client_id,
                    "password": "not-the-secret",
                    "extra": {**sb.amazon_extra, "rate_per_s": 200, "burst": 50},
                }
            ),
        )
        push_credits = load_dag("returns_sync").get_task("push_credits").python_callable
        with pytest.raises(AirflowFailException) as err:
            push_credits({"window_end": end.isoformat(), "batch_id": batch})
    message = str(err.value)
    assert "'amazon_sp_api'" in message and "refresh_token" in message and "Test" in message, message
    with db.connect(ledger) as conn:
        statuses = conn.execute(
            "SELECT DISTINCT status FROM ledger.amazon_submission WHERE kind = 'CREDIT_NOTE'"
        ).fetchall()
    assert statuses == [("PENDING",)], statuses  # nothing lost: the next run sends them


def test_a_rejected_export_fails_the_import_at_once_saying_what_to_fix(ledger, tmp_path, monkeypatch):
    from returnledger.reconciliation.amazon_export import COLUMNS

    export = tmp_path / "vendor_central_returns_2026-10.csv"
    export.write_text(
        ",".join(COLUMNS) + "\nAR-1,RN1,RMA1,VRET1,B000000001,SKU-A,not-a-number,REBOUND,2026-10-03,\n"
    )
    monkeypatch.setenv("AIRFLOW_VAR_RETURNLEDGER_EXPORT_BASE", f"file://{tmp_path}")
    import_export = load_dag("returns_reconciliation").get_task("import_amazon_export").python_callable
    window = {"close": False, "period": "2026-10", "as_of": datetime(2026, 11, 1, tzinfo=UTC).isoformat()}
    with pytest.raises(AirflowFailException) as err:
        import_export(window)
    message = str(err.value)
    assert "rejected, nothing imported" in message and "line 2, column quantity" in message, message
    assert "returnledger_export_base" in message and "clear this task" in message, message
