"""Finance's figures and the run links, on a real ledger (issue 25):

* a closed month's figures on the finance page (rows, credited and owed per status, money at risk) equal
  its month-end report's CSV, the rows behind a number are that number's rows, and the report served for
  download is the close's (from the object store, else the bytes the close stored);
* the current month is the latest daily check's;
* a task's identity, put in the ledger DSN at the Airflow edge, is written on the exceptions, credit notes
  and send-log rows it writes; the run page's queries and the extra links find them by it.
"""

from __future__ import annotations

import csv
import io
import time
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal

import psycopg
import pytest
from test_reconcile_helpers import AS_OF, PERIOD, Ledger, build_month

from returnledger.airflow.links import console_run_url, current_identity, run_dsn
from returnledger.console.finance import (
    closed_months,
    closed_summary,
    daily_summary,
    finance_rows,
    finance_summary,
    latest_daily_key,
    report_file,
    ties_out,
)
from returnledger.console.runs import run_credit_notes, run_exceptions, task_did, task_log_url
from returnledger.exception_queue.queue import NewException, raise_exceptions
from returnledger.models import ExceptionType
from returnledger.reconciliation.match import reconcile
from returnledger.reports.carry_over import AT_RISK
from returnledger.reports.finance import CSV_NAME
from returnledger.reports.month_close import close_month

pytestmark = pytest.mark.integration

BATCH = "returns_reconciliation:close:2026-10"


@pytest.fixture
def led(fresh_db):
    ledger = Ledger(fresh_db)
    build_month(ledger)
    yield ledger
    ledger.close()


def _csv_figures(data: bytes) -> tuple[dict, Decimal]:
    """Per status: rows, credited, owed; and the money at risk, as the CSV says them."""
    by = defaultdict(lambda: {"rows": 0, "credited_amount": Decimal(0), "amount_owed": Decimal(0)})
    at_risk = Decimal(0)
    for r in csv.DictReader(io.StringIO(data.decode())):
        s = by[r["recon_status"]]
        s["rows"] += 1
        s["credited_amount"] += Decimal(r["credited_amount"] or 0)
        s["amount_owed"] += Decimal(r["amount_owed"] or 0)
        if r["recon_status"] in AT_RISK:
            at_risk += Decimal(r["amount_owed"] or 0)
    return dict(by), at_risk


def test_a_closed_months_figures_equal_its_month_end_report(led, tmp_path):
    reconcile(led.dsn, PERIOD, as_of=AS_OF, batch_id=BATCH)
    close_month(led.dsn, PERIOD, str(tmp_path / PERIOD), as_of=AS_OF, batch_id=BATCH)
    written = (tmp_path / PERIOD / CSV_NAME).read_bytes()
    expected, at_risk = _csv_figures(written)
    assert len(expected) >= 4 and at_risk > 0  # the month has several statuses and money at risk

    with psycopg.connect(led.dsn) as conn:
        s = finance_summary(conn, PERIOD)
        page = {
            st: {k: v[k] for k in ("rows", "credited_amount", "amount_owed")}
            for st, v in s["by_status"].items()
        }
        assert page == expected
        assert s["total"]["rows"] == sum(v["rows"] for v in expected.values())
        assert s["at_risk"]["amount"] == at_risk
        assert sum(v["amount"] for v in s["at_risk"]["by_origin"].values()) == at_risk
        # the trend's stored totals are the same figures
        (month,) = closed_months(conn)
        assert month["period"] == PERIOD and month["rows"] == s["total"]["rows"]
        assert {st: v["rows"] for st, v in month["totals"].items()} == {
            st: v["rows"] for st, v in expected.items()
        }
        assert month["at_risk"] == at_risk
        assert ties_out(s, month)
        assert closed_summary(conn, month) == s  # read once per close version, then kept
        conn.execute(
            "DELETE FROM ledger.recon_result WHERE period = %s AND recon_status = 'MATCHED'", (PERIOD,)
        )
        assert closed_summary(conn, month) == s
        assert closed_summary(conn, {**month, "version": 2})["by_status"].get("MATCHED") is None
        conn.rollback()
        changed = {**month, "totals": {**month["totals"], "MATCHED": {"rows": 0, "amount_owed": "0"}}}
        assert not ties_out(s, changed)
        # each number's rows are its rows
        for st, v in expected.items():
            rows = finance_rows(conn, PERIOD, status=st)
            assert len(rows) == v["rows"] and {r["recon_status"] for r in rows} == {st}
        risky = finance_rows(conn, PERIOD, at_risk=True)
        assert len(risky) == s["at_risk"]["rows"]
        assert sum(r["amount_owed"] for r in risky) == at_risk
        for bucket, v in s["at_risk"]["by_age"].items():
            assert len(finance_rows(conn, PERIOD, at_risk=True, bucket=bucket)) == v["rows"]
        for origin, v in s["at_risk"]["by_origin"].items():
            assert len(finance_rows(conn, PERIOD, at_risk=True, origin=origin)) == v["rows"]
        # the download: the object store's file when it is the close's, else the stored bytes
        data, source = report_file(conn, PERIOD, CSV_NAME, base=tmp_path)
        assert (data, source) == (written, "object store")
        (tmp_path / PERIOD / CSV_NAME).write_bytes(b"tampered")
        assert report_file(conn, PERIOD, CSV_NAME, base=tmp_path) == (written, "stored close")
        (tmp_path / PERIOD / CSV_NAME).unlink()
        assert report_file(conn, PERIOD, CSV_NAME, base=tmp_path) == (written, "stored close")
        with pytest.raises(LookupError):
            report_file(conn, "2026-09", CSV_NAME, base=tmp_path)


def test_the_current_month_is_the_latest_daily_check(led):
    for day in ("2026-10-20", "2026-10-21"):
        reconcile(
            led.dsn,
            PERIOD,
            as_of=datetime.fromisoformat(day).replace(tzinfo=UTC),
            batch_id=day,
            result_key=f"daily:{day}",
        )
    with psycopg.connect(led.dsn) as conn:
        assert latest_daily_key(conn) == "daily:2026-10-21"
        s = finance_summary(conn, "daily:2026-10-21")
        counted = conn.execute(
            "SELECT count(*) FROM ledger.recon_result WHERE period = 'daily:2026-10-21'"
        ).fetchone()[0]
    assert s["period"] == PERIOD and s["daily"] and s["total"]["rows"] == counted > 0
    # the page's figures are kept until the check's rows are written again
    with psycopg.connect(led.dsn) as conn:
        assert daily_summary(conn, "daily:2026-10-21") == s
    with psycopg.connect(led.dsn) as writer:  # a rerun of the check that changes a row (its session ends)
        writer.execute(
            "DELETE FROM ledger.recon_result WHERE period = 'daily:2026-10-21'"
            " AND row_key = (SELECT min(row_key) FROM ledger.recon_result WHERE period = 'daily:2026-10-21')"
        )
    for _ in range(50):  # the writer's statistics reach the shared counts as its session ends
        with psycopg.connect(led.dsn) as conn:
            rows = daily_summary(conn, "daily:2026-10-21")["total"]["rows"]
        if rows != counted:
            break
        time.sleep(0.1)
    assert rows == counted - 1


IDENTITY = {
    "dag_id": "returns_sync",
    "run_id": "scheduled__2026-10-05T00:00:00+00:00",
    "task_id": "confirm",
    "map_index": -1,
    "try_number": 2,
}


def test_a_tasks_rows_name_its_run(led):
    assert current_identity() is None  # no task runs here: the DSN stays as it is
    assert run_dsn(led.dsn) == led.dsn
    with psycopg.connect(run_dsn(led.dsn, IDENTITY), autocommit=True) as conn:
        raise_exceptions(
            conn,
            [NewException(ExceptionType.AMAZON_REJECTED, "RX|1", "refused", return_id="RX", line=1)],
            at=AS_OF,
            batch_id="returns_sync:2026-10-05T00:00Z",
        )
        conn.execute(
            "INSERT INTO ledger.submission_attempt (kind, document_id, submission_ids, attempt,"
            " request_sha256, http_status, outcome, batch_id, at)"
            " VALUES ('CREDIT_NOTE', 'CN-RX-1', '{}', 1, 'x', 202, 'ACCEPTED_202', 'b', %s)",
            (AS_OF,),
        )
    with psycopg.connect(led.dsn, autocommit=True) as conn:  # outside a task: no run
        raise_exceptions(
            conn,
            [NewException(ExceptionType.AMAZON_REJECTED, "RY|1", "refused", return_id="RY", line=1)],
            at=AS_OF,
            batch_id="cli",
        )
        rows = conn.execute(
            "SELECT subject_key, run_dag_id, run_id, run_task_id, run_map_index, run_try_number"
            " FROM ledger.exception WHERE subject_key IN ('RX|1', 'RY|1') ORDER BY 1"
        ).fetchall()
        assert rows == [("RX|1", *IDENTITY.values()), ("RY|1", None, None, None, None, None)]
        found = run_exceptions(conn, "returns_sync", IDENTITY["run_id"])
        assert [x["subject_key"] for x in found] == ["RX|1"]
        assert found[0]["log_url"] == (
            "/dags/returns_sync/runs/scheduled__2026-10-05T00%3A00%3A00%2B00%3A00/tasks/confirm?try_number=2"
        )
        assert run_exceptions(conn, "returns_sync", IDENTITY["run_id"], "apply") == []
        notes = run_credit_notes(conn, "returns_sync", IDENTITY["run_id"], "confirm")
        assert [(n["credit_note_id"], n["attempts"], n["last_outcome"]) for n in notes] == [
            ("CN-RX-1", 1, "ACCEPTED_202")
        ]
        assert task_did(conn, "exceptions", "returns_sync", IDENTITY["run_id"], "confirm")
        assert task_did(conn, "credit_notes", "returns_sync", IDENTITY["run_id"], "confirm")
        assert not task_did(conn, "exceptions", "returns_sync", IDENTITY["run_id"], "apply")
    assert task_log_url("d", "r", "t", 3, 1) == "/dags/d/runs/r/tasks/t/mapped/3?try_number=1"
    assert console_run_url("returns_sync", "r 1", "confirm", "exceptions") == (
        "/returnledger/runs?dag_id=returns_sync&run_id=r+1&task_id=confirm&show=exceptions"
    )


def test_the_pages_render_for_a_viewer(led, tmp_path, monkeypatch):
    """Every finance and run page answers a Viewer (token checked by Airflow's SimpleAuthManager) with the
    figures of the ledger; the CSV download is the close's report."""
    pytest.importorskip("airflow.api_fastapi.auth.managers.simple.simple_auth_manager")
    from airflow.api_fastapi import app as airflow_app
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.models.revoked_token import RevokedToken
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from returnledger.console.app import create_console_app

    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "finance-test-secret-not-for-production-" + "x" * 40)
    monkeypatch.setenv("AIRFLOW_VAR_RETURNLEDGER_REPORT_BASE", tmp_path.as_uri())
    manager = SimpleAuthManager()
    monkeypatch.setattr(airflow_app._AuthManagerState, "instance", manager)
    monkeypatch.setattr(RevokedToken, "is_revoked", classmethod(lambda cls, jti, **kw: False))
    token = manager.generate_jwt(SimpleAuthManagerUser(username="vera", role="VIEWER"))

    reconcile(led.dsn, PERIOD, as_of=AS_OF, batch_id=BATCH, result_key="daily:2026-10-31")
    reconcile(led.dsn, PERIOD, as_of=AS_OF, batch_id=BATCH)
    close_month(led.dsn, PERIOD, str(tmp_path / PERIOD), as_of=AS_OF, batch_id=BATCH)
    written = (tmp_path / PERIOD / CSV_NAME).read_bytes()
    expected, at_risk = _csv_figures(written)
    with psycopg.connect(run_dsn(led.dsn, IDENTITY), autocommit=True) as conn:
        raise_exceptions(
            conn,
            [NewException(ExceptionType.AMAZON_REJECTED, "RZ|1", "refused", return_id="RZ", line=1)],
            at=AS_OF,
            batch_id="b",
        )

    root = FastAPI()
    root.mount("/returnledger", create_console_app(dsn_provider=lambda: led.dsn))
    with TestClient(root, base_url="http://airflow.test", headers={"Authorization": f"Bearer {token}"}) as c:
        overview = c.get("/returnledger/finance")
        assert overview.status_code == 200, overview.text
        assert "daily check of 2026-10-31" in overview.text and 'data-period="2026-10"' in overview.text
        month = c.get("/returnledger/finance/month/2026-10")
        assert month.status_code == 200, month.text
        for status, v in expected.items():
            assert f'finance/rows?key=2026-10&amp;status={status}">{v["rows"]}</a>' in month.text
        assert f">{at_risk}</a></span> GBP" in month.text
        assert 'id="ties-out" class="msg"' in month.text
        rows = c.get("/returnledger/finance/rows", params={"key": PERIOD, "at_risk": "1", "age": "0-30"})
        assert rows.status_code == 200 and rows.text.count("data-row-key=") >= 0
        assert c.get("/returnledger/finance/rows", params={"key": PERIOD, "age": "old"}).status_code == 400
        csv_file = c.get("/returnledger/finance/report/2026-10/month_end_report.csv")
        assert csv_file.status_code == 200 and csv_file.content == written
        assert csv_file.headers["x-returnledger-source"] == "object store"
        assert c.get("/returnledger/finance/report/2026-09/month_end_report.csv").status_code == 404
        assert c.get("/returnledger/finance/report/2026-10/secrets.txt").status_code == 404
        run = c.get("/returnledger/runs", params={"dag_id": "returns_sync", "run_id": IDENTITY["run_id"]})
        assert run.status_code == 200 and 'data-exception-id="' in run.text
        assert "/tasks/confirm?try_number=2" in run.text
        raised = run.text.split('data-exception-id="')[1].split('"')[0]
        to_run = c.get("/returnledger/runs", params={"exception_id": raised}, follow_redirects=False)
        assert to_run.status_code == 303
        assert to_run.headers["location"].endswith("&task_id=confirm&show=exceptions")
        detail = c.get(f"/returnledger/exceptions/{raised}")  # the exception's own page links to its run
        assert detail.status_code == 200 and f"runs?exception_id={raised}" in detail.text
        with psycopg.connect(led.dsn) as conn:  # raised by reconcile here, outside Airflow: no run
            no_run = conn.execute(
                "SELECT min(exception_id) FROM ledger.exception WHERE run_id IS NULL"
            ).fetchone()[0]
        assert c.get("/returnledger/runs", params={"exception_id": no_run}).status_code == 404
        with psycopg.connect(led.dsn) as conn:
            note, rid = conn.execute(
                "SELECT credit_note_id, return_id FROM ledger.credit_note LIMIT 1"
            ).fetchone()
        story = c.get(f"/returnledger/returns/{rid}")  # the return's story links each note to its sender
        assert story.status_code == 200 and f"runs?credit_note_id={note}" in story.text
        listing = c.get("/returnledger/runs")
        assert listing.status_code == 200 and IDENTITY["run_id"] in listing.text
        assert c.get("/returnledger/finance", headers={"Authorization": ""}).status_code == 401
