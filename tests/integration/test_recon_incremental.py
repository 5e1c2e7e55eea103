"""The daily rolling check re-matches only what changed (issue 26, target 4), and its rows are exactly
what a full match gives: a generated month (September closed with open lines that carry, October's lines),
then a day of every kind of change the match reads, then the rolling check against a full recompute."""

# ruff: noqa: E501 (the generated month and the day's changes are SQL, one statement per line)

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from test_reconcile_helpers import Ledger

from returnledger.console.finance import finance_summary
from returnledger.reconciliation import match, results
from returnledger.reconciliation.match import reconcile
from returnledger.reconciliation.period import recon_window
from returnledger.reports.month_close import close_month

pytestmark = pytest.mark.integration

ORDERS = 400
KEY = "daily:2026-10"
#: a row's values, not when or by which run it was last computed
VALUES = [c for c in match.RESULT_COLUMNS if c not in ("period", "computed_at", "batch_id")]

# Orders of September (some still open when September closes: they carry) and of October; each line's story
# from k = a hash of it, like bench/bench_reconcile.py.
MONTH_SQL = [
    """INSERT INTO ledger.return_order (return_id, created_at, returns_notice, rma_id, vret)
       SELECT 'RB-' || o, timestamptz '2026-09-20 08:00Z' + (o %% 35) * interval '1 day',
              'RN' || (o / 2), 'RMA' || o, 'VRET' || o
         FROM generate_series(1, %(orders)s) o""",
    """CREATE TEMP TABLE story AS
       SELECT o, l, 'RB-' || o AS rid, 'RN' || (o / 2) AS notice,
              (array['SKU-A', 'SKU-B', 'SKU-C'])[1 + (o + l) %% 3] AS sku, abs(hashint4(o * 2 + l)) %% 100 AS k
         FROM generate_series(1, %(orders)s) o, generate_series(1, 2) l""",
    """INSERT INTO ledger.return_line (return_id, line, sku, reason, quantity_announced, quantity_received,
                                     grade, disposition, state, received_at, dispositioned_at)
       SELECT rid, l, sku, 'FAULTY', CASE WHEN k IN (95, 96) THEN 2 ELSE 1 END,
              CASE WHEN k BETWEEN 80 AND 81 THEN NULL ELSE 1 END,
              CASE WHEN k BETWEEN 80 AND 83 THEN NULL WHEN k BETWEEN 84 AND 89 THEN 'D' ELSE 'A' END,
              CASE WHEN k BETWEEN 80 AND 83 OR k IN (93, 94) THEN NULL
                   WHEN k BETWEEN 84 AND 86 THEN 'QUARANTINED' WHEN k BETWEEN 87 AND 89 THEN 'REJECTED'
                   ELSE 'RESTOCKED' END,
              'RECEIVED', CASE WHEN k BETWEEN 80 AND 81 THEN NULL ELSE timestamptz '2026-10-01Z' END,
              CASE WHEN k BETWEEN 80 AND 83 OR k IN (93, 94) THEN NULL
                   ELSE timestamptz '2026-10-02Z' + (k %% 20) * interval '1 day' END
         FROM story""",
    """INSERT INTO ledger.credit_note (credit_note_id, return_id, created_at, created_batch, confirmed_by)
       SELECT DISTINCT 'CN-' || o, rid, timestamptz '2026-10-01Z', 'test',
              CASE WHEN o %% 17 = 0 THEN NULL ELSE 'SUCCESS' END
         FROM story WHERE k NOT BETWEEN 80 AND 89 AND k NOT IN (93, 94)""",
    """INSERT INTO ledger.amazon_submission (idempotency_key, kind, return_id, line, sku, asin, quantity,
                                           unit_amount, currency, document_id, status, transaction_id,
                                           created_at, created_batch, submitted_at, resolved_at)
       SELECT 'credit:' || s.rid || ':' || s.l, 'CREDIT_NOTE', s.rid, s.l, s.sku, k.asin, 1, k.unit_cost, 'GBP',
              'CN-' || s.o,
              CASE WHEN s.k BETWEEN 60 AND 79 THEN 'SUBMITTED' WHEN s.k BETWEEN 90 AND 92 THEN 'FAILED'
                   ELSE 'ACCEPTED' END,
              'tx-' || s.o, timestamptz '2026-10-01Z', 'test', timestamptz '2026-10-01Z', NULL
         FROM story s JOIN ledger.sku k ON k.sku = s.sku
        WHERE s.k NOT BETWEEN 80 AND 89 AND s.k NOT IN (93, 94)""",
    """INSERT INTO ledger.amazon_return (amazon_return_id, returns_notice, rma_id, vret, asin, sku, quantity,
                                       label, returned_at, charged_amount, source_file, imported_at)
       SELECT 'AR-' || s.o || '-' || s.l, s.notice, 'RMA' || s.o, 'VRET' || s.o, k.asin, s.sku,
              CASE WHEN s.k IN (95, 96) THEN 2 ELSE 1 END, 'REBOUND', date '2026-10-01' + (s.o %% 25),
              CASE WHEN s.k BETWEEN 70 AND 74 THEN k.unit_cost + 5 WHEN s.k < 35 THEN k.unit_cost END,
              'f.csv', timestamptz '2026-10-01Z'
         FROM story s JOIN ledger.sku k ON k.sku = s.sku
        WHERE (s.o * 2 + s.l) %% 13 <> 0 AND NOT EXISTS (SELECT 1 FROM ledger.amazon_return a
                                                     WHERE a.returns_notice = s.notice AND a.sku = s.sku)""",
    """INSERT INTO ledger.amazon_return (amazon_return_id, returns_notice, sku, asin, quantity, label,
                                       returned_at, source_file, imported_at)
       SELECT 'AR-APRL-' || d, 'RNAPRL' || d, 'SKU-A', 'B0A0000001', 1, 'APRL', date '2026-09-25' + d,
              'f.csv', timestamptz '2026-10-01Z'
         FROM generate_series(1, 20) d""",
    """INSERT INTO ledger.exception (type, owner, subject_key, return_id, line, sku, detail, opened_at,
                                   opened_by_batch)
       SELECT 'UNMAPPED_REASON_CODE', 'operations', rid || '|' || l, rid, l, sku, 'hold',
              timestamptz '2026-10-01Z', 'test'
         FROM story WHERE k IN (93, 94)""",
    "DROP TABLE story",
]

# A day of changes of every kind the match reads.
DAY_SQL = [
    # the warehouse dispositions lines; a line's SKU is corrected
    """UPDATE ledger.return_line SET disposition = 'RESTOCKED', grade = 'A', dispositioned_at = '2026-10-20Z'
        WHERE disposition IS NULL AND quantity_received IS NOT NULL AND return_id IN ('RB-7', 'RB-31', 'RB-77')""",
    "UPDATE ledger.return_line SET quantity_received = 1, received_at = '2026-10-20Z' WHERE return_id = 'RB-130'",
    "UPDATE ledger.return_line SET sku = 'SKU-C' WHERE return_id = 'RB-12' AND line = 1",
    # Amazon answers credits, one is refused; a credit note is confirmed
    "UPDATE ledger.amazon_submission SET status = 'ACCEPTED' WHERE document_id IN ('CN-5', 'CN-66', 'CN-201')",
    "UPDATE ledger.amazon_submission SET status = 'FAILED' WHERE document_id = 'CN-90'",
    "UPDATE ledger.credit_note SET confirmed_by = 'SUCCESS' WHERE credit_note_id IN ('CN-17', 'CN-34')",
    # a later export: a charge corrected, rows for lines that had none, a new dark return
    "UPDATE ledger.amazon_return SET charged_amount = 99, imported_at = '2026-10-20Z' WHERE returns_notice = 'RN40'",
    """INSERT INTO ledger.amazon_return (amazon_return_id, returns_notice, sku, asin, quantity, label, returned_at,
                                       source_file, imported_at)
       VALUES ('AR-LATE-1', 'RN6', 'SKU-A', 'B0A0000001', 3, 'REBOUND', '2026-10-19', 'g.csv', '2026-10-20Z'),
              ('AR-APRL-NEW', 'RNAPRL-NEW', 'SKU-B', 'B0B0000002', 1, 'APRL', '2026-10-19', 'g.csv', '2026-10-20Z')""",
    # a dark return gets its post-hoc ReBound return
    """INSERT INTO ledger.return_order (return_id, created_at, returns_notice, source, amazon_return_id)
       VALUES ('PH-1', '2026-10-20Z', 'RNAPRL3', 'POST_HOC', 'AR-APRL-3')""",
    "UPDATE ledger.amazon_return SET linked_return_id = 'PH-1' WHERE amazon_return_id = 'AR-APRL-3'",
    # a ReBound return arrives for a dark return's notice and SKU, and a new return of the month
    """INSERT INTO ledger.return_order (return_id, created_at, returns_notice, rma_id, vret)
       VALUES ('RB-NEW-1', '2026-10-20 08:00Z', 'RNAPRL5', 'RMA-N1', 'VRET-N1'),
              ('RB-NEW-2', '2026-10-20 09:00Z', 'RN-NEW-2', 'RMA-N2', 'VRET-N2')""",
    """INSERT INTO ledger.return_line (return_id, line, sku, reason, quantity_announced, state)
       VALUES ('RB-NEW-1', 1, 'SKU-A', 'FAULTY', 1, 'ANNOUNCED'), ('RB-NEW-2', 1, 'SKU-B', 'FAULTY', 1, 'ANNOUNCED')""",
    # an order's notice corrected; a hold resolved and another opened
    "UPDATE ledger.return_order SET returns_notice = 'RN-MOVED' WHERE return_id = 'RB-151'",
    """UPDATE ledger.exception SET status = 'resolved', resolved_at = '2026-10-20Z', resolved_by = 'test',
              resolution = 'mapped' WHERE type = 'UNMAPPED_REASON_CODE' AND return_id IN (SELECT return_id
              FROM ledger.exception WHERE type = 'UNMAPPED_REASON_CODE' ORDER BY exception_id LIMIT 3)""",
    """INSERT INTO ledger.exception (type, owner, subject_key, return_id, line, sku, detail, opened_at,
                                   opened_by_batch)
       VALUES ('SKU_MISMATCH', 'integration', 'RB-3|1', 'RB-3', 1, 'SKU-A', 'hold', '2026-10-20Z', 'test')""",
    # a SKU's stock alone changes nothing the match reads
    "UPDATE ledger.sku SET available = available + 5",
]


def _rows(led: Ledger, key: str, values: list[str] = VALUES) -> dict[str, tuple]:
    cols = ", ".join(values)
    return {
        r[0]: r[1:]
        for r in led.conn.execute(
            f"SELECT row_key, {cols} FROM ledger.recon_result WHERE period = %s", (key,)
        ).fetchall()
    }


def _daily(led: Ledger, day: str, key: str = KEY):
    start = datetime.fromisoformat(f"{day}T00:00:00+00:00")
    w = recon_window(start, start + timedelta(days=1))
    return reconcile(led.dsn, w.period, as_of=w.as_of, batch_id=w.batch_id, result_key=key)


@pytest.fixture
def led(fresh_db, tmp_path):
    ledger = Ledger(fresh_db)
    for sql in MONTH_SQL:
        ledger.conn.execute(sql, {"orders": ORDERS})
    # September closes: its lines still open carry into October's checks
    sept_as_of = datetime(2026, 10, 4, tzinfo=UTC)
    reconcile(ledger.dsn, "2026-09", as_of=sept_as_of, batch_id="close:2026-09")
    close_month(ledger.dsn, "2026-09", str(tmp_path / "2026-09"), as_of=sept_as_of, batch_id="close:2026-09")
    yield ledger
    ledger.close()


def test_the_daily_check_is_one_rolling_key_per_month():
    w = recon_window(datetime(2026, 10, 19, tzinfo=UTC), datetime(2026, 10, 20, tzinfo=UTC))
    assert w.result_key == KEY


def test_a_days_changes_rematch_only_their_notices_and_give_the_full_answer(led):
    first = _daily(led, "2026-10-19")
    assert first.rematched_notices is None  # the month's first check matches everything
    assert first.carries_from == "2026-09" and first.rows > 2 * ORDERS // 2
    for sql in DAY_SQL:
        led.conn.execute(sql)

    day = _daily(led, "2026-10-20")
    assert day.rematched_notices is not None and 0 < day.rematched_notices < ORDERS // 4
    assert sum(day.written.values()) < first.rows // 4  # the rows of the changed notices, not the month

    full = _daily(led, "2026-10-20", key="daily:full-recompute")
    assert full.rematched_notices is None
    incremental, recomputed = _rows(led, KEY), _rows(led, "daily:full-recompute")
    assert incremental.keys() == recomputed.keys()
    differ = {k: (incremental[k], recomputed[k]) for k in incremental if incremental[k] != recomputed[k]}
    assert differ == {}
    assert day.by_status == full.by_status
    # every exception the full answer calls for was raised by the re-match
    assert sum(full.exceptions_raised.values()) == 0
    # the day's changes show: the post-hoc return took its dark return's line, the new returns are there
    assert incremental["RB-NEW-2|1"][VALUES.index("recon_status")] == "PENDING"
    assert incremental["RB-151|1"][VALUES.index("returns_notice")] == "RN-MOVED"

    # a rerun of the same day, and a day with no change: nothing written, the credit windows still move
    again = _daily(led, "2026-10-20")
    assert again.written == {"inserted": 0, "updated": 0, "deleted": 0}
    later = _daily(led, "2026-10-30")
    assert later.rematched_notices is not None
    full_later = _daily(led, "2026-10-30", key="daily:full-later")
    assert _rows(led, KEY) == _rows(led, "daily:full-later")
    assert later.by_status == full_later.by_status
    assert later.by_status != day.by_status  # windows ended: PENDING lines became CREDIT_MISSING
    # finance's page ages every row as of the check's last run, not as of the run that last changed it
    rolling, recomputed_page = finance_summary(led.conn, KEY), finance_summary(led.conn, "daily:full-later")
    assert rolling["computed_at"] == recomputed_page["computed_at"] == later.as_of
    assert rolling["at_risk"] == recomputed_page["at_risk"] and rolling["at_risk"]["rows"] > 0

    led.conn.execute("UPDATE ledger.sku SET asin = 'B0B0000099' WHERE sku = 'SKU-B'")  # every line of a SKU
    priced = _daily(led, "2026-10-30")
    assert priced.written["updated"] > 0
    _daily(led, "2026-10-30", key="daily:full-priced")
    assert _rows(led, KEY) == _rows(led, "daily:full-priced")


def test_a_close_built_on_the_rolling_check_is_the_close_matched_from_scratch(led):
    _daily(led, "2026-10-19")
    for sql in DAY_SQL:
        led.conn.execute(sql)
    _daily(led, "2026-10-30")
    # changes after the last daily check, then the close on 3 November (credit windows end meanwhile)
    led.conn.execute("UPDATE ledger.amazon_submission SET status = 'ACCEPTED' WHERE document_id = 'CN-220'")
    led.conn.execute("UPDATE ledger.return_line SET sku = 'SKU-A' WHERE return_id = 'RB-240' AND line = 2")
    as_of = datetime(2026, 11, 4, tzinfo=UTC)
    close = reconcile(led.dsn, "2026-10", as_of=as_of, batch_id="close:2026-10")
    assert close.rematched_notices is not None  # built on daily:2026-10
    with led.conn.transaction():
        results.drop_partitions(led.conn, [KEY])  # no rolling check: the same close matched from scratch
    cold = reconcile(led.dsn, "2026-10", as_of=as_of, batch_id="close:2026-10", result_key="cold:2026-10")
    assert cold.rematched_notices is None
    every = [c for c in match.RESULT_COLUMNS if c != "period"]
    built, scratch = _rows(led, "2026-10", every), _rows(led, "cold:2026-10", every)
    assert built == scratch
    assert {r[every.index("first_reported")] for r in built.values()} == {"2026-09", "2026-10"}
    assert close.by_status == cold.by_status and sum(cold.exceptions_raised.values()) == 0


def test_the_change_log_names_the_holding_types_the_match_reads(led):
    from returnledger.models import HOLDING_TYPES

    src = led.conn.execute("SELECT prosrc FROM pg_proc WHERE proname = 'note_recon_change'").fetchone()[0]
    listed = "('UNMAPPED_REASON_CODE', 'SKU_MISMATCH', 'OUT_OF_SEQUENCE')"
    assert src.count(listed) == 3
    assert {str(t) for t in HOLDING_TYPES} == {"UNMAPPED_REASON_CODE", "SKU_MISMATCH", "OUT_OF_SEQUENCE"}


def test_a_row_whose_notice_moved_unlogged_is_found_by_its_key(led):
    """A stored row that left its notice without a log entry (not expected: every write is logged) is not
    among the dirty notices' stored rows; the re-match finds it by its key and updates it, rather than adding
    its key a second time."""
    _daily(led, "2026-10-19")
    led.conn.execute("SET session_replication_role = replica")  # the change log's triggers off
    led.conn.execute("UPDATE ledger.return_order SET returns_notice = 'RN2' WHERE return_id = 'RB-151'")
    led.conn.execute("SET session_replication_role = origin")
    led.conn.execute("UPDATE ledger.return_line SET grade = grade WHERE return_id = 'RB-4'")  # RN2 is dirty
    day = _daily(led, "2026-10-20")
    assert day.rematched_notices is not None and day.written["updated"] >= 2
    moved = _rows(led, KEY)
    assert {moved[f"RB-151|{n}"][VALUES.index("returns_notice")] for n in (1, 2)} == {"RN2"}


def _open(led: Ledger, type_: str) -> set[str]:
    return {
        r[0]
        for r in led.conn.execute(
            "SELECT subject_key FROM ledger.exception WHERE type = %s AND status = 'open'", (type_,)
        ).fetchall()
    }


def test_a_rematch_settles_what_it_matched_and_what_another_run_opened_since(led):
    """A re-match settles open CREDIT_MISSING exceptions of the rows it changed, and those opened since its
    last run (by another result key's run) on a row it had matched already, without reading every open one."""
    _daily(led, "2026-10-19")
    _daily(led, "2026-10-20")  # the exceptions the first run raised are older than this run's snapshot
    rows = _rows(led, KEY)
    status, amazon = VALUES.index("recon_status"), VALUES.index("amazon_status")
    unconfirmed = sorted(
        k for k, v in rows.items() if v[status] == "CREDIT_MISSING" and v[amazon] == "ACCEPTED"
    )
    matched = sorted(k for k, v in rows.items() if v[status] == "MATCHED")
    assert unconfirmed and matched and unconfirmed[0] in _open(led, "CREDIT_MISSING")
    # Amazon confirms the accepted credit of one (its row becomes MATCHED or CREDIT_MISMATCH) ...
    note = rows[unconfirmed[0]][VALUES.index("credit_note_id")]
    led.conn.execute(
        "UPDATE ledger.credit_note SET confirmed_by = 'SUCCESS' WHERE credit_note_id = %s", (note,)
    )
    # ... and another run opened CREDIT_MISSING on a line matched here (no change the re-match would see)
    rid, line = matched[0].split("|")
    led.conn.execute(
        """INSERT INTO ledger.exception (type, owner, subject_key, return_id, line, detail, opened_at,
                                         opened_by_batch)
           VALUES ('CREDIT_MISSING', 'finance', %s, %s, %s, 'another run', '2026-10-19Z', 'other')""",
        (matched[0], rid, int(line)),
    )
    day = _daily(led, "2026-10-21")
    assert day.rematched_notices is not None
    assert _rows(led, KEY)[unconfirmed[0]][status] in ("MATCHED", "CREDIT_MISMATCH")
    still_open = _open(led, "CREDIT_MISSING")
    assert unconfirmed[0] not in still_open and matched[0] not in still_open
    assert day.exceptions_resolved >= 2
    # the rest stay open: what a full recompute settles, the re-match settled
    full = _daily(led, "2026-10-21", key="daily:full-recompute")
    assert full.exceptions_resolved == 0 and _open(led, "CREDIT_MISSING") == still_open
