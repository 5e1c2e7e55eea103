"""Parts of bench_reconcile.py (not a test): the per-line naive match, and the daily rolling check after a
day's changes (issue 26, target 4)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from returnledger.reconciliation import results
from returnledger.reconciliation.match import RESULT_COLUMNS, reconcile
from returnledger.store import db

DAILY_KEY = "daily:2026-10"
#: the rolling check of 29 October, then of 30 October after that day's changes
DAY1 = datetime(2026, 10, 30, tzinfo=UTC)
DAY2 = datetime(2026, 10, 31, tzinfo=UTC)

_LINE_SQL = """SELECT l.sku, l.quantity_received, l.disposition, l.dispositioned_at, l.quantity_announced,
       l.credit_quantity, o.returns_notice
  FROM ledger.return_line l JOIN ledger.return_order o USING (return_id)
 WHERE l.return_id = %s AND l.line = %s"""
_CREDIT_SQL = """SELECT status, round(quantity * unit_amount, 2), document_id FROM ledger.amazon_submission
 WHERE kind = 'CREDIT_NOTE' AND return_id = %s AND line = %s"""
_AMAZON_SQL = """SELECT charged_amount FROM ledger.amazon_return WHERE returns_notice = %s AND sku = %s
 ORDER BY imported_at DESC, amazon_return_id LIMIT 1"""
_ACCEPTED_SQL = """SELECT sum(round(c.quantity * c.unit_amount, 2)) FROM ledger.return_order o
  JOIN ledger.return_line l ON l.return_id = o.return_id
  JOIN ledger.amazon_submission c ON c.kind = 'CREDIT_NOTE' AND c.return_id = l.return_id AND c.line = l.line
 WHERE o.returns_notice = %s AND l.sku = %s AND c.status = 'ACCEPTED'"""
_HELD_SQL = """SELECT EXISTS (SELECT 1 FROM ledger.exception WHERE status = 'open'
   AND type IN ('UNMAPPED_REASON_CODE', 'SKU_MISMATCH', 'OUT_OF_SEQUENCE') AND return_id = %s
   AND (line = %s OR line IS NULL))"""
_CONFIRMED_SQL = "SELECT confirmed_by IS NOT NULL FROM ledger.credit_note WHERE credit_note_id = %s"


def per_line_naive(dsn: str, period_key: str, as_of: datetime, sample: int) -> tuple[float, int, int, int]:
    """The row-at-a-time match: for each line, one query per input (its line and order, its credit, Amazon's
    row, the notice and SKU's accepted credits, its holds, the credit note's confirmation), then the status
    rules in Python. Timed on ``sample`` lines of the period spread over it; returns (seconds per line,
    lines in the period, lines timed, lines whose status agrees with the set-based result)."""
    with db.connect(dsn) as conn:
        policy = dict(conn.execute("SELECT disposition, credit_fraction FROM ledger.disposition_policy"))
        keys = conn.execute(
            "SELECT return_id, line, recon_status FROM ledger.recon_result WHERE period = %s"
            " AND return_id IS NOT NULL",
            (period_key,),
        ).fetchall()
        step = max(1, len(keys) // sample)
        chosen = keys[::step][:sample]
        window = timedelta(days=7)
        agree = 0
        t0 = time.perf_counter()
        for rid, ln, expected in chosen:
            sku, received, disposition, disp_at, announced, credit_qty, notice = conn.execute(
                _LINE_SQL, (rid, ln)
            ).fetchone()
            credit = conn.execute(_CREDIT_SQL, (rid, ln)).fetchone()
            amazon = conn.execute(_AMAZON_SQL, (notice, sku)).fetchone()
            accepted = conn.execute(_ACCEPTED_SQL, (notice, sku)).fetchone()[0]
            held = conn.execute(_HELD_SQL, (rid, ln)).fetchone()[0]
            confirmed = credit is not None and bool(conn.execute(_CONFIRMED_SQL, (credit[2],)).fetchone()[0])
            status_ = credit[0] if credit else None
            fraction = policy.get(disposition)
            if held:
                s = "QUARANTINED"
            elif disposition is None:
                s = "PENDING"
            elif disposition not in policy or fraction is None:
                s = "ON_HOLD"
            elif fraction == 0 or not received or credit_qty == 0:
                s = "NO_CREDIT_DUE"
            elif received > announced and credit is None:
                s = "ON_HOLD"
            elif status_ == "FAILED":
                s = "CREDIT_REJECTED"
            elif status_ != "ACCEPTED" and (disp_at is None or as_of - disp_at <= window):
                s = "PENDING"
            elif status_ != "ACCEPTED" or not confirmed:
                s = "CREDIT_MISSING"
            elif amazon and amazon[0] is not None and amazon[0] != accepted:
                s = "CREDIT_MISMATCH"
            else:
                s = "MATCHED"
            agree += s == expected
        per_line = (time.perf_counter() - t0) / len(chosen)
        conn.rollback()
    return per_line, len(keys), len(chosen), agree


# A day's changes, each as the sync and the export import write them (one statement per kind): credits
# accepted, lines dispositioned, Amazon's charge corrected in a re-issued export. About 20k lines in all.
DAY_SQL = [
    """UPDATE ledger.amazon_submission SET status = 'ACCEPTED', resolved_at = %(at)s
        WHERE kind = 'CREDIT_NOTE' AND status = 'SUBMITTED'
          AND (return_id, line) IN (SELECT return_id, line FROM ledger.amazon_submission
                                     WHERE kind = 'CREDIT_NOTE' AND status = 'SUBMITTED'
                                     ORDER BY return_id, line LIMIT %(n)s)""",
    """UPDATE ledger.return_line SET disposition = 'RESTOCKED', grade = 'A', state = 'DISPOSITIONED',
              dispositioned_at = %(at)s
        WHERE (return_id, line) IN (SELECT return_id, line FROM ledger.return_line
                                     WHERE disposition IS NULL AND quantity_received IS NOT NULL
                                       AND state = 'RECEIVED' ORDER BY return_id, line LIMIT %(n)s)""",
    """UPDATE ledger.amazon_return SET charged_amount = COALESCE(charged_amount, 0) + 1, imported_at = %(at)s
        WHERE amazon_return_id IN (SELECT amazon_return_id FROM ledger.amazon_return WHERE label = 'REBOUND'
                                    ORDER BY amazon_return_id DESC LIMIT %(n)s)""",
]


def daily_check(dsn: str, period: str, changed: int, close_as_of: datetime, close_batch: str) -> dict:
    """The month's rolling check, then a day's changes to about ``changed`` lines, then the next day's check
    (timed), then a full recompute of that day under another key to compare with, row for row; then the
    month's close again, built on the rolling check (timed)."""
    out: dict = {}
    t0 = time.perf_counter()
    first = reconcile(dsn, period, as_of=DAY1, batch_id="bench:daily:1", result_key=DAILY_KEY)
    out["first_s"] = time.perf_counter() - t0
    out["first_steps"] = first.as_dict()["steps"]
    with db.connect(dsn) as conn:
        per_kind = [conn.execute(sql, {"at": DAY1, "n": changed // 3}).rowcount for sql in DAY_SQL]
        conn.commit()
        out["changed_rows"] = per_kind
    t0 = time.perf_counter()
    day = reconcile(dsn, period, as_of=DAY2, batch_id="bench:daily:2", result_key=DAILY_KEY)
    out["day_s"] = time.perf_counter() - t0
    out["day"] = day.as_dict()
    t0 = time.perf_counter()
    full = reconcile(dsn, period, as_of=DAY2, batch_id="bench:daily:2", result_key="daily:bench-full")
    out["full_s"] = time.perf_counter() - t0
    cols = [c for c in RESULT_COLUMNS if c not in ("period", "row_key", "computed_at", "batch_id")]
    a_cols, b_cols = ", ".join("a." + c for c in cols), ", ".join("b." + c for c in cols)
    with db.connect(dsn) as conn:
        out["differ"] = conn.execute(
            f"""SELECT count(*) FROM (SELECT * FROM ledger.recon_result WHERE period = %s) a
                FULL JOIN (SELECT * FROM ledger.recon_result WHERE period = %s) b ON a.row_key = b.row_key
               WHERE a.row_key IS NULL OR b.row_key IS NULL
                  OR ({a_cols}) IS DISTINCT FROM ({b_cols})""",
            (DAILY_KEY, "daily:bench-full"),
        ).fetchone()[0]
        out["lines_touched"] = conn.execute(
            "SELECT count(*) FROM ledger.recon_result WHERE period = %s AND batch_id = 'bench:daily:2'",
            (DAILY_KEY,),
        ).fetchone()[0]
    out["same_counts"] = day.by_status == full.by_status
    # the close as it runs in production: after the month's daily checks, built on the rolling one (the
    # close from scratch was timed before; its rows go, so this close is the period's first run again)
    with db.connect(dsn) as conn:
        results.drop_partitions(conn, [period, "daily:bench-full"])
        conn.commit()
    t0 = time.perf_counter()
    built = reconcile(dsn, period, as_of=close_as_of, batch_id=close_batch)
    out["close_s"] = time.perf_counter() - t0
    out["close"] = built.as_dict()
    return out
