"""Matching engine on hand-built ledgers: every recon status, the exceptions it raises, reruns."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from test_reconcile_helpers import AS_OF, PERIOD, Ledger, build_month

from returnledger.reconciliation import results
from returnledger.reconciliation.match import reconcile
from returnledger.reconciliation.period import period_bounds
from returnledger.reports.month_close import close_month
from returnledger.store.db import connect

pytestmark = pytest.mark.integration


@pytest.fixture
def led(fresh_db):
    ledger = Ledger(fresh_db)
    yield ledger
    ledger.close()


def test_every_status_first_that_applies(led):
    expected = build_month(led)
    summary = reconcile(led.dsn, PERIOD, as_of=AS_OF, batch_id="recon:2026-10")
    assert led.statuses() == expected
    assert summary.rows == len(expected)
    assert sum(summary.by_status.values()) == len(expected)
    assert summary.by_status["DARK_RETURN"] == 4  # AR-OLD-DARK too: no September close reported it


_TUPLES = """SELECT n.nspname || '.' || c.relname, c.reltuples
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = ANY(%s::regclass[])"""
_INPUTS = ["ledger.return_order", "ledger.return_line", "ledger.amazon_return", "ledger.amazon_submission"]


def _tuples(led) -> dict[str, float]:
    return dict(led.conn.execute(_TUPLES, (_INPUTS,)).fetchall())


def test_a_full_match_is_planned_from_fresh_statistics_of_its_inputs(led):
    """A ledger never analyzed (autovacuum off, as on the test server) had the close's dark-return anti-join
    compare every Amazon row of the run with every ReBound line ever kept; a full match first analyzes the
    inputs with no statistics, and those with more rows written since their last ANALYZE than autovacuum
    allows (50 + 10 %), and no others."""
    build_month(led)
    if any(n >= 0 for n in _tuples(led).values()):
        pytest.skip("autovacuum analyzed the inputs before the run")
    summary = reconcile(led.dsn, PERIOD, as_of=AS_OF, batch_id="day1")
    assert "statistics" in summary.steps
    counts = {t: led.conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in _INPUTS}
    assert _tuples(led) == {t: float(n) for t, n in counts.items()}

    # a load of more than 10 % of the orders since: analyzed again by the next full match; the lines, not
    led.conn.execute(
        "INSERT INTO ledger.return_order (return_id, created_at, returns_notice, rma_id, vret)"
        " SELECT 'RB-LOAD-' || g, timestamptz '2026-10-20Z', 'RN-LOAD-' || g, 'RMA-L' || g, 'VRET-L' || g"
        " FROM generate_series(1, 60) g"
    )
    led.conn.execute("SELECT pg_stat_force_next_flush()")
    modified = (
        "SELECT n_mod_since_analyze FROM pg_stat_user_tables WHERE relid = 'ledger.return_order'::regclass"
    )
    for _ in range(50):  # the inserting session reports its counts when it goes idle
        if led.conn.execute(modified).fetchone()[0] >= 60:
            break
        time.sleep(0.1)
    reconcile(led.dsn, PERIOD, as_of=AS_OF, batch_id="day2", result_key="daily:2026-10-30")
    assert _tuples(led)["ledger.return_order"] == counts["ledger.return_order"] + 60
    assert _tuples(led)["ledger.return_line"] == counts["ledger.return_line"]

    # statistics gone though the table was analyzed (a run's ANALYZE rolled back with it): analyzed again
    has_stats = "SELECT count(*) FROM pg_stats WHERE schemaname = 'ledger' AND tablename = 'return_line'"
    led.conn.execute("DELETE FROM pg_statistic WHERE starelid = 'ledger.return_line'::regclass")
    assert led.conn.execute(has_stats).fetchone()[0] == 0
    reconcile(led.dsn, PERIOD, as_of=AS_OF, batch_id="day3", result_key="daily:2026-10-31")
    assert led.conn.execute(has_stats).fetchone()[0] > 0


def test_exceptions_raised_once_with_owner_and_subject(led):
    build_month(led)
    reconcile(led.dsn, PERIOD, as_of=AS_OF, batch_id="recon:2026-10")
    raised = led.exceptions("CREDIT_MISSING", "CREDIT_MISMATCH", "DARK_RETURN", "QUANTITY_MISMATCH")
    assert raised == [
        ("CREDIT_MISMATCH", "RB-2|1", "open"),
        ("CREDIT_MISSING", "RB-3|1", "open"),
        ("CREDIT_MISSING", "RB-9|1", "open"),
        ("CREDIT_MISSING", "RB-OLD|1", "open"),
        ("DARK_RETURN", "AR-1-X", "open"),
        ("DARK_RETURN", "AR-APRL-1", "open"),
        ("DARK_RETURN", "AR-APRL-2", "open"),
        ("DARK_RETURN", "AR-OLD-DARK", "open"),
        ("QUANTITY_MISMATCH", "RB-8|1", "open"),
    ]
    rows = led.conn.execute(
        "SELECT type, owner, amazon_return_id, return_id, line, detail, opened_at"
        " FROM ledger.exception WHERE type IN ('DARK_RETURN', 'CREDIT_MISMATCH')"
        " ORDER BY subject_key"
    ).fetchall()
    owners = {r[0]: r[1] for r in rows}
    assert owners == {"DARK_RETURN": "warehouse", "CREDIT_MISMATCH": "finance"}
    dark = next(r for r in rows if r[2] == "AR-APRL-1")
    assert dark[3] is None and "RN-APRL-1" in dark[5] and "APRL" in dark[5]
    mismatch = next(r for r in rows if r[3] == "RB-2")
    assert mismatch[4] == 1 and "15.00" in mismatch[5] and "10.00" in mismatch[5]
    assert {r[6] for r in rows} == {AS_OF}  # opened at the run's as-of, not the wall clock


def test_rerun_changes_nothing(led):
    build_month(led)
    reconcile(led.dsn, PERIOD, as_of=AS_OF, batch_id="recon:2026-10")
    q = "SELECT * FROM ledger.recon_result WHERE period = %s ORDER BY row_key"
    first = led.conn.execute(q, (PERIOD,)).fetchall()
    n_exc = led.conn.execute("SELECT count(*) FROM ledger.exception").fetchone()[0]
    again = reconcile(led.dsn, PERIOD, as_of=AS_OF, batch_id="recon:2026-10")
    assert led.conn.execute(q, (PERIOD,)).fetchall() == first
    assert led.conn.execute("SELECT count(*) FROM ledger.exception").fetchone()[0] == n_exc
    assert sum(again.exceptions_raised.values()) == 0


def test_sync_raised_quantity_mismatch_is_not_duplicated(led):
    build_month(led)
    led.exception("QUANTITY_MISMATCH", "RB-8|1", rid="RB-8", line=1)  # the sync saw announced 2, received 1
    summary = reconcile(led.dsn, PERIOD, as_of=AS_OF, batch_id="recon:2026-10")
    assert led.exceptions("QUANTITY_MISMATCH") == [("QUANTITY_MISMATCH", "RB-8|1", "open")]
    assert summary.exceptions_raised.get("QUANTITY_MISMATCH", 0) == 0
    assert led.statuses()["RB-8|1"] == "MATCHED"  # the status follows the credit, not the count


def test_handled_exceptions_are_not_reopened(led):
    build_month(led)
    led.exception("CREDIT_MISSING", "RB-3|1", rid="RB-3", line=1, status="dismissed")
    led.exception("DARK_RETURN", "AR-APRL-1", arid="AR-APRL-1", status="resolved")
    reconcile(led.dsn, PERIOD, as_of=AS_OF, batch_id="recon:2026-10")
    assert ("CREDIT_MISSING", "RB-3|1", "open") not in led.exceptions("CREDIT_MISSING")
    assert led.exceptions("DARK_RETURN")[:2] == [
        ("DARK_RETURN", "AR-1-X", "open"),
        ("DARK_RETURN", "AR-APRL-1", "resolved"),
    ]
    assert led.statuses()["RB-3|1"] == "CREDIT_MISSING"  # the report still says so


def test_credit_window_edge_and_policy_setting(led):
    n = led.order("RB-W", "2026-10-20")
    led.line(
        "RB-W",
        1,
        "SKU-A",
        received=1,
        grade="A",
        disposition="RESTOCKED",
        dispositioned="2026-10-27",
        state="CREDIT_SUBMITTED",
    )
    led.credit("RB-W", 1, "SKU-A", 1, "SUBMITTED")
    led.amazon("AR-W", n, "SKU-A", 1)
    exactly_7_days = led.conn.execute("SELECT dispositioned_at FROM ledger.return_line").fetchone()[
        0
    ] + timedelta(days=7)
    reconcile(led.dsn, PERIOD, as_of=exactly_7_days, batch_id="b1")
    assert led.statuses()["RB-W|1"] == "PENDING"
    reconcile(led.dsn, PERIOD, as_of=exactly_7_days + timedelta(seconds=1), batch_id="b2")
    assert led.statuses()["RB-W|1"] == "CREDIT_MISSING"
    led.conn.execute("UPDATE ledger.policy_setting SET value = '10'::jsonb WHERE name = 'credit_window_days'")
    reconcile(led.dsn, PERIOD, as_of=exactly_7_days + timedelta(days=1), batch_id="b3")
    assert led.statuses()["RB-W|1"] == "PENDING"


def test_accepted_credit_resolves_credit_missing(led):
    build_month(led)
    reconcile(led.dsn, PERIOD, as_of=AS_OF, batch_id="day1")
    led.conn.execute("UPDATE ledger.amazon_submission SET status = 'ACCEPTED' WHERE return_id = 'RB-3'")
    # the ledger's ACCEPTED alone proves nothing: Amazon has not confirmed the note's transaction yet
    reconcile(led.dsn, PERIOD, as_of=AS_OF + timedelta(days=1), batch_id="day2")
    assert led.statuses()["RB-3|1"] == "CREDIT_MISSING"
    led.conn.execute("UPDATE ledger.credit_note SET confirmed_by = 'SUCCESS' WHERE return_id = 'RB-3'")
    summary = reconcile(led.dsn, PERIOD, as_of=AS_OF + timedelta(days=1), batch_id="day2")
    assert led.statuses()["RB-3|1"] == "MATCHED"
    assert ("CREDIT_MISSING", "RB-3|1", "resolved") in led.exceptions("CREDIT_MISSING")
    assert summary.exceptions_resolved == 1


def test_rebound_return_arriving_later_settles_a_dark_return(led):
    build_month(led)
    reconcile(led.dsn, PERIOD, as_of=AS_OF, batch_id="day1")
    led.order("RB-LATE", "2026-10-30", "RN-APRL-1")
    led.line("RB-LATE", 1, "SKU-B", state="IN_TRANSIT")
    reconcile(led.dsn, PERIOD, as_of=AS_OF, batch_id="day2")
    st = led.statuses()
    assert "AR-APRL-1" not in st and st["RB-LATE|1"] == "PENDING"
    assert ("DARK_RETURN", "AR-APRL-1", "resolved") in led.exceptions("DARK_RETURN")


def test_period_scope_and_daily_key(led, tmp_path):
    build_month(led)
    september = reconcile(led.dsn, "2026-09", as_of=AS_OF, batch_id="sept")
    assert led.statuses("2026-09") == {"RB-OLD|1": "CREDIT_MISSING", "AR-OLD-DARK": "DARK_RETURN"}
    assert september.rows == 2
    close_month(led.dsn, "2026-09", str(tmp_path / "2026-09"), as_of=AS_OF, batch_id="sept")
    reconcile(led.dsn, PERIOD, as_of=AS_OF, batch_id="close")
    closed = led.statuses()
    daily = reconcile(
        led.dsn, PERIOD, as_of=AS_OF - timedelta(days=20), batch_id="daily", result_key="daily:2026-10-14"
    )
    assert led.statuses() == closed  # the close results are untouched
    d = led.statuses("daily:2026-10-14")
    assert d["RB-4|1"] == "PENDING" and daily.rows == len(d)
    # September's open line carries into October; its dark return was reported once, by September
    assert closed["RB-OLD|1"] == "CREDIT_MISSING" and "AR-OLD-DARK" not in closed
    # the daily check of 2026-10-14 ended before September's close was made: it does not build on it
    assert d["RB-OLD|1"] == "CREDIT_MISSING" and d["AR-OLD-DARK"] == "DARK_RETURN"


def test_report_columns_carry_amazon_references(led):
    build_month(led)
    reconcile(led.dsn, PERIOD, as_of=AS_OF, batch_id="close")
    row = led.conn.execute(
        "SELECT asin, returns_notice, rma_id, vret, amazon_return_id, amazon_quantity, charged_amount,"
        " credit_note_id, credited_quantity, credited_amount, currency, amazon_status"
        " FROM ledger.recon_result WHERE row_key = 'RB-2|1'"
    ).fetchone()
    assert row == (
        "B0B0000002",
        "RN-RB-2",
        "RMA-RB-2",
        "VRET-RB-2",
        "AR-2-1",
        1,
        pytest.approx(15),
        "CN-RB-2",
        1,
        pytest.approx(10),
        "GBP",
        "ACCEPTED",
    )
    dark = led.conn.execute(
        "SELECT return_id, line, post_hoc_return_id, amazon_quantity FROM ledger.recon_result"
        " WHERE row_key = 'AR-APRL-2'"
    ).fetchone()
    assert dark == (None, None, "RB-PH-2", 1)


def test_rejects_bad_period_and_naive_as_of(led):
    with pytest.raises(ValueError):
        reconcile(led.dsn, "2026-13", as_of=AS_OF, batch_id="x")
    with pytest.raises(ValueError):
        reconcile(led.dsn, PERIOD, as_of=AS_OF.replace(tzinfo=None), batch_id="x")
    assert period_bounds("2026-12")[1].year == 2027


def test_quantity_counts_every_line_of_the_notice_and_sku_once_all_are_received(led):
    """Two returns on one returns notice and SKU: nothing is compared until both are received, then the
    sum of their units (the row's received_total) is held against Amazon's quantity for the notice."""
    n = led.order("RB-Q1", "2026-10-05", "RN-SHARED")
    led.order("RB-Q2", "2026-10-06", "RN-SHARED")
    led.line("RB-Q1", 1, "SKU-A", received=1, grade="A", disposition="RESTOCKED", dispositioned="2026-10-20")
    led.line("RB-Q2", 1, "SKU-A")  # announced, not received yet
    led.amazon("AR-Q", n, "SKU-A", 3)
    reconcile(led.dsn, PERIOD, as_of=AS_OF, batch_id="recon:q1")
    totals = "SELECT row_key, received_total FROM ledger.recon_result WHERE period = %s ORDER BY row_key"
    assert led.conn.execute(totals, (PERIOD,)).fetchall() == [("RB-Q1|1", None), ("RB-Q2|1", None)]
    assert led.exceptions("QUANTITY_MISMATCH") == []

    led.conn.execute("UPDATE ledger.return_line SET quantity_received = 1 WHERE return_id = 'RB-Q2'")
    summary = reconcile(led.dsn, PERIOD, as_of=AS_OF, batch_id="recon:q2")
    assert led.conn.execute(totals, (PERIOD,)).fetchall() == [("RB-Q1|1", 2), ("RB-Q2|1", 2)]
    assert summary.exceptions_raised["QUANTITY_MISMATCH"] == 2
    assert led.exceptions("QUANTITY_MISMATCH") == [
        ("QUANTITY_MISMATCH", "RB-Q1|1", "open"),
        ("QUANTITY_MISMATCH", "RB-Q2|1", "open"),
    ]
    detail = led.conn.execute(
        "SELECT detail FROM ledger.exception WHERE type = 'QUANTITY_MISMATCH' AND subject_key = 'RB-Q1|1'"
    ).fetchone()[0]
    assert detail.startswith("2 unit(s) of SKU-A received for returns notice RN-SHARED") and detail.endswith(
        " 3"
    )


def test_each_result_key_is_a_partition_and_expired_daily_results_are_dropped(led):
    build_month(led)
    for day in ("2026-09-20", "2026-10-20", "2026-10-21"):  # each run as of the end of its day
        as_of = datetime.fromisoformat(day).replace(tzinfo=UTC) + timedelta(days=1)
        reconcile(led.dsn, PERIOD, as_of=as_of, batch_id=f"daily {day}", result_key=f"daily:{day}")
    with connect(led.dsn) as conn:
        assert sorted(results.partitions(conn)) == [
            "daily:2026-09-20",
            "daily:2026-10-20",
            "daily:2026-10-21",
        ]
        name = results.partition_name(conn, "daily:2026-10-20")
    assert name.startswith("recon_result_daily_2026_10_20_")
    # the run for 2026-11-03 keeps 35 days: 2026-09-20 goes, with its partition
    reconcile(led.dsn, PERIOD, as_of=AS_OF, batch_id="daily 2026-11-03", result_key="daily:2026-11-03")
    with connect(led.dsn) as conn:
        assert sorted(results.partitions(conn)) == [
            "daily:2026-10-20",
            "daily:2026-10-21",
            "daily:2026-11-03",
        ]
    assert led.statuses("daily:2026-09-20") == {}
    assert set(led.statuses("daily:2026-10-20")) == set(led.statuses("daily:2026-11-03"))
    # a rerun of a key finds its partition and writes nothing
    again = reconcile(
        led.dsn, PERIOD, as_of=AS_OF, batch_id="daily 2026-11-03", result_key="daily:2026-11-03"
    )
    assert again.written == {"inserted": 0, "updated": 0, "deleted": 0}


def test_a_failed_first_run_leaves_no_partition(led, monkeypatch):
    build_month(led)

    def boom(*args, **kwargs):
        raise RuntimeError("findings failed")

    monkeypatch.setattr("returnledger.reconciliation.findings.raise_found", boom)
    with pytest.raises(RuntimeError, match="findings failed"):
        reconcile(led.dsn, PERIOD, as_of=AS_OF, batch_id="recon:2026-10")
    with connect(led.dsn) as conn:
        assert results.partitions(conn) == {}
    monkeypatch.undo()
    assert reconcile(led.dsn, PERIOD, as_of=AS_OF, batch_id="recon:2026-10").written["inserted"] > 0
