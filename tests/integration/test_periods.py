"""A ledger that lives for months (scenarios/README.md and docs/operating-guide.md, "Periods"): a close
reports every line no earlier close settled, whatever month it was created in, and dark returns once; daily
checks follow the same rule as of their day; a closed month's report is final, and reopening it is an audited
action that keeps the old report beside the new version."""

from __future__ import annotations

import csv
import hashlib
import io
from datetime import UTC, datetime

import pytest
from test_reconcile_helpers import Ledger

from returnledger.cli.main import main as cli
from returnledger.reconciliation.closes import CloseRefused, reopen
from returnledger.reconciliation.match import reconcile
from returnledger.reconciliation.period import PeriodClosed
from returnledger.reports.finance import CSV_NAME, HTML_NAME
from returnledger.reports.month_close import close_month

pytestmark = pytest.mark.integration

OCT, NOV, DEC = "2026-10", "2026-11", "2026-12"
#: each close runs on the 3rd of the next month (as of the end of that day)
AS_OF = {
    OCT: datetime(2026, 11, 4, tzinfo=UTC),
    NOV: datetime(2026, 12, 4, tzinfo=UTC),
    DEC: datetime(2027, 1, 4, tzinfo=UTC),
}


@pytest.fixture
def led(fresh_db):
    ledger = Ledger(fresh_db)
    yield ledger
    ledger.close()


def close(led: Ledger, period: str, out) -> dict[str, dict]:
    """The close run of ``period`` (reconcile, then the report stored); its CSV rows keyed like check.py."""
    batch = f"returns_reconciliation:close:{period}"
    reconcile(led.dsn, period, as_of=AS_OF[period], batch_id=batch)
    close_month(led.dsn, period, str(out / period), as_of=AS_OF[period], batch_id=batch)
    return report(out / period)


def report(folder) -> dict[str, dict]:
    rows = csv.DictReader(io.StringIO((folder / CSV_NAME).read_text()))
    return {(f"{r['return_id']}|{r['line']}" if r["return_id"] else r["amazon_return_id"]): r for r in rows}


def statuses(rows: dict[str, dict]) -> dict[str, str]:
    return {k: r["recon_status"] for k, r in rows.items()}


def matched(led: Ledger, rid: str, created: str, dispositioned: str, sku: str = "SKU-A") -> None:
    """A line credited, accepted and confirmed by Amazon: settled at the first close that sees it."""
    n = led.order(rid, created)
    led.line(rid, 1, sku, received=1, grade="A", disposition="RESTOCKED", dispositioned=dispositioned)
    led.credit(rid, 1, sku, 1, "ACCEPTED")
    led.amazon(f"AR-{rid}", n, sku, 1, returned=created)


def test_a_credit_owed_across_the_month_end_goes_missing_in_the_next_month(led, tmp_path):
    """Created on 31 October, dispositioned and credited in November, the credit never arrives: November's
    daily check raises CREDIT_MISSING and November's close reports the line, first reported in October."""
    n = led.order("RB-EOM", "2026-10-31")
    led.line("RB-EOM", 1, "SKU-B", received=1, grade="A", disposition="RESTOCKED", dispositioned="2026-11-02")
    led.credit("RB-EOM", 1, "SKU-B", 1, "SUBMITTED")  # sent on 2 November, never accepted
    led.amazon("AR-EOM", n, "SKU-B", 1, returned="2026-10-31")

    october = close(led, OCT, tmp_path)
    assert statuses(october) == {"RB-EOM|1": "PENDING"}  # within its credit window on 3 November

    daily = reconcile(
        led.dsn,
        NOV,
        as_of=datetime(2026, 11, 13, tzinfo=UTC),
        batch_id="returns_reconciliation:daily:2026-11-12",
        result_key="daily:2026-11-12",
    )
    assert led.statuses("daily:2026-11-12") == {"RB-EOM|1": "CREDIT_MISSING"}
    assert daily.carries_from == OCT
    assert led.exceptions("CREDIT_MISSING") == [("CREDIT_MISSING", "RB-EOM|1", "open")]
    opened = led.conn.execute(
        "SELECT opened_at FROM ledger.exception WHERE type = 'CREDIT_MISSING'"
    ).fetchone()
    assert opened[0] == datetime(2026, 11, 13, tzinfo=UTC)  # by the daily check, not at a close

    november = close(led, NOV, tmp_path)
    assert statuses(november) == {"RB-EOM|1": "CREDIT_MISSING"}
    row = november["RB-EOM|1"]
    assert (row["first_reported"], row["origin_date"], row["age_days"], row["amount_owed"]) == (
        OCT,
        "2026-10-31",
        "34",  # 31 October to 4 December
        "10.00",
    )


def test_three_closes_carry_open_lines_and_report_settled_lines_and_dark_returns_once(led, tmp_path):
    matched(led, "RB-A", "2026-10-05", "2026-10-08")  # settled at October's close
    n = led.order("RB-B", "2026-10-10")  # credit sent on 30 October, never accepted
    led.line("RB-B", 1, "SKU-C", received=1, grade="A", disposition="RESTOCKED", dispositioned="2026-10-30")
    led.credit("RB-B", 1, "SKU-C", 1, "SUBMITTED")
    led.amazon("AR-RB-B", n, "SKU-C", 1, returned="2026-10-10")
    n = led.order("RB-C", "2026-10-20")  # still in the warehouse at October's close
    led.line("RB-C", 1, "SKU-A", received=1, grade="A")
    led.amazon("AR-RB-C", n, "SKU-A", 1, returned="2026-10-20")
    led.amazon("AR-D1", "RN-DARK-1", "SKU-B", 1, label="APRL", returned="2026-10-15")
    # in November's export, returned in November: not October's to report
    led.amazon("AR-D2", "RN-DARK-2", "SKU-B", 1, label="APRL", returned="2026-11-20", period=NOV)

    october = close(led, OCT, tmp_path)
    assert statuses(october) == {
        "RB-A|1": "MATCHED",
        "RB-B|1": "PENDING",
        "RB-C|1": "PENDING",
        "AR-D1": "DARK_RETURN",
    }
    assert {r["first_reported"] for r in october.values()} == {OCT}

    # November: RB-C is dispositioned and credited, a new return is settled at once
    led.conn.execute(
        "UPDATE ledger.return_line SET disposition = 'RESTOCKED', dispositioned_at = '2026-11-10T12:00Z'"
        " WHERE return_id = 'RB-C'"
    )
    led.credit("RB-C", 1, "SKU-A", 1, "ACCEPTED")
    matched(led, "RB-N1", "2026-11-05", "2026-11-09", sku="SKU-B")

    november = close(led, NOV, tmp_path)
    assert statuses(november) == {
        "RB-B|1": "CREDIT_MISSING",  # carried: not settled in October
        "RB-C|1": "MATCHED",  # carried, settled now
        "RB-N1|1": "MATCHED",
        "AR-D2": "DARK_RETURN",  # AR-D1 was reported by October's close
    }
    assert {k: r["first_reported"] for k, r in november.items()} == {
        "RB-B|1": OCT,
        "RB-C|1": OCT,
        "RB-N1|1": NOV,
        "AR-D2": NOV,
    }

    led.order("RB-Z", "2026-12-03")
    led.line("RB-Z", 1, "SKU-A")
    december = close(led, DEC, tmp_path)
    assert statuses(december) == {"RB-B|1": "CREDIT_MISSING", "RB-Z|1": "PENDING"}
    assert december["RB-B|1"]["first_reported"] == OCT and december["RB-B|1"]["age_days"] == "86"
    html = (tmp_path / DEC / HTML_NAME).read_text()
    assert html.index("Money at risk") < html.index("Trend over the closed months") < html.index("Totals by")
    for period in (OCT, NOV, DEC):
        assert f"<td>{period}" in html  # a trend row per closed month
    assert "carry to next period" not in html


def test_an_order_that_reaches_the_ledger_after_its_months_close_is_reported_by_the_next(led, tmp_path):
    matched(led, "RB-A", "2026-10-05", "2026-10-08")
    close(led, OCT, tmp_path)
    led.order("RB-LATE", "2026-10-30")  # ReBound delivered it after October was closed
    led.line("RB-LATE", 1, "SKU-A")
    november = close(led, NOV, tmp_path)
    assert statuses(november) == {"RB-LATE|1": "PENDING"}
    assert november["RB-LATE|1"]["first_reported"] == NOV
    assert statuses(close(led, DEC, tmp_path)) == {"RB-LATE|1": "PENDING"}  # carried, not lost


def test_a_rerun_of_a_closed_months_close_returns_the_stored_report_byte_for_byte(led, tmp_path, caplog):
    matched(led, "RB-A", "2026-10-05", "2026-10-08")
    n = led.order("RB-B", "2026-10-10")
    led.line("RB-B", 1, "SKU-C", received=1, grade="A", disposition="RESTOCKED", dispositioned="2026-10-12")
    led.credit("RB-B", 1, "SKU-C", 1, "SUBMITTED")
    led.amazon("AR-RB-B", n, "SKU-C", 1)
    close(led, OCT, tmp_path)
    folder = tmp_path / OCT
    first = {name: (folder / name).read_bytes() for name in (CSV_NAME, HTML_NAME)}
    stored = led.conn.execute("SELECT version, csv_sha256, html_sha256 FROM ledger.period_close").fetchall()
    assert stored == [
        (1, hashlib.sha256(first[CSV_NAME]).hexdigest(), hashlib.sha256(first[HTML_NAME]).hexdigest())
    ]

    # the ledger moves on: the credit is accepted; the files are lost
    led.conn.execute("UPDATE ledger.amazon_submission SET status = 'ACCEPTED' WHERE return_id = 'RB-B'")
    led.conn.execute("UPDATE ledger.credit_note SET confirmed_by = 'SUCCESS' WHERE return_id = 'RB-B'")
    for name in first:
        (folder / name).unlink()
    with pytest.raises(PeriodClosed, match="2026-10 is closed"):
        reconcile(led.dsn, OCT, as_of=AS_OF[OCT], batch_id="again")
    caplog.set_level("INFO", logger="returnledger.reconciliation.closes")
    again = close_month(led.dsn, OCT, str(folder), as_of=AS_OF[OCT], batch_id="again")
    assert again["stored"] is True and again["version"] == 1
    assert {name: (folder / name).read_bytes() for name in first} == first
    assert "2026-10 is closed (version 1" in caplog.text and "nothing recomputed" in caplog.text
    assert led.statuses(OCT)["RB-B|1"] == "CREDIT_MISSING"  # the results it was written from stand


def test_reopening_keeps_the_old_report_writes_a_new_version_and_is_audited(led, tmp_path, capsys):
    n = led.order("RB-B", "2026-10-10")
    led.line("RB-B", 1, "SKU-C", received=1, grade="A", disposition="RESTOCKED", dispositioned="2026-10-12")
    led.credit("RB-B", 1, "SKU-C", 1, "SUBMITTED")
    led.amazon("AR-RB-B", n, "SKU-C", 1)
    close(led, OCT, tmp_path)
    folder = tmp_path / OCT
    v1 = (folder / CSV_NAME).read_bytes()
    with pytest.raises(CloseRefused, match="reason"):
        reopen(led.dsn, OCT, actor="admin", reason=" ", at=datetime(2026, 11, 20, tzinfo=UTC))

    # Amazon's credit turns out to have been accepted after all: finance reopens October
    led.conn.execute("UPDATE ledger.amazon_submission SET status = 'ACCEPTED' WHERE return_id = 'RB-B'")
    led.conn.execute("UPDATE ledger.credit_note SET confirmed_by = 'SUCCESS' WHERE return_id = 'RB-B'")
    code = cli(
        [
            "reopen-period",
            OCT,
            "--reason",
            "Amazon accepted CN-RB-B late",
            "--actor",
            "finance-admin",
            "--at",
            "2026-11-20T09:00:00+00:00",
            "--out",
            str(folder),
            "--as-of",
            "2026-11-21T00:00:00+00:00",
            "--dsn",
            led.dsn,
        ]
    )
    assert code == 0, capsys.readouterr().out
    assert statuses(report(folder)) == {"RB-B|1": "MATCHED"}
    assert (folder / "month_end_report.v1.csv").read_bytes() == v1  # the old report, as written
    versions = led.conn.execute(
        "SELECT version, csv_sha256, reopened_by, reopen_reason FROM ledger.period_close ORDER BY version"
    ).fetchall()
    assert versions == [
        (1, hashlib.sha256(v1).hexdigest(), "finance-admin", "Amazon accepted CN-RB-B late"),
        (2, hashlib.sha256((folder / CSV_NAME).read_bytes()).hexdigest(), None, None),
    ]
    html = (folder / HTML_NAME).read_text()
    assert "Versions of this close" in html and hashlib.sha256(v1).hexdigest() in html
    assert "Amazon accepted CN-RB-B late" in html
    audit = led.conn.execute(
        "SELECT actor, action, subject, detail->>'version', detail->>'reason' FROM ledger.audit_log"
        " WHERE action = 'reopen_period'"
    ).fetchall()
    assert audit == [("finance-admin", "reopen_period", OCT, "1", "Amazon accepted CN-RB-B late")]

    # a month before a closed one stays closed: the later close was built on it
    close(led, NOV, tmp_path)
    with pytest.raises(CloseRefused, match="2026-11 is closed after it"):
        reopen(led.dsn, OCT, actor="admin", reason="again", at=datetime(2026, 12, 20, tzinfo=UTC))
