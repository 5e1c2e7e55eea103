"""Month-end matching of ReBound returns against Amazon's credits and return records.

Everything here is set-based SQL over the ledger: one statement classifies
every return line of the period (the recon status table in
scenarios/README.md, first status that applies), one finds the period's dark
returns (returnledger.reconciliation.dark_returns), and the exception queue
gets what the results call for (returnledger.reconciliation.findings). A
period's results become the run's rows in one transaction: a result key's first
run builds its partition of ledger.recon_result (returnledger.reconciliation.results),
a later one writes only rows that differ, so a rerun for the same period and as-of
date writes nothing.

Lines are matched to Amazon rows by returns notice and SKU (Amazon keeps one
row per returns notice and SKU). Dates come from the run (``as_of`` is the
data interval end), never from the clock.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from returnledger.models import HOLDING_TYPES
from returnledger.reconciliation import findings, incremental, planner_stats, results
from returnledger.reconciliation.dark_returns import DARK_ROWS_SQL, REBOUND_ORDER
from returnledger.reconciliation.period import PeriodClosed, period_bounds
from returnledger.store.db import unit_of_work

log = logging.getLogger(__name__)

DEFAULT_CREDIT_WINDOW_DAYS = 7
#: daily rolling-check results are kept this long; close results are kept for good
DAILY_RETENTION_DAYS = 35
#: the exception types that hold a line (its status is QUARANTINED while one is open)
_HOLDING = sorted(str(t) for t in HOLDING_TYPES)


@dataclass
class ReconSummary:
    period: str
    result_key: str
    as_of: datetime
    batch_id: str
    rows: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    exceptions_raised: dict[str, int] = field(default_factory=dict)
    exceptions_resolved: int = 0
    seconds: float = 0.0
    #: seconds per step, for the run log and the benchmark
    steps: dict[str, float] = field(default_factory=dict)
    #: rows of ledger.recon_result this run inserted, updated and deleted (a rerun: all 0)
    written: dict[str, int] = field(default_factory=dict)
    #: the earlier close this run carries from (None before any close)
    carries_from: str | None = None
    #: a rolling check built on its last run: the returns notices it re-matched (None: it matched everything)
    rematched_notices: int | None = None

    def as_dict(self) -> dict:
        """Small, JSON-safe summary for XCom."""
        return {
            "period": self.period,
            "result_key": self.result_key,
            "as_of": self.as_of.isoformat(),
            "batch_id": self.batch_id,
            "rows": self.rows,
            "by_status": self.by_status,
            "exceptions_raised": self.exceptions_raised,
            "exceptions_resolved": self.exceptions_resolved,
            "seconds": round(self.seconds, 3),
            "steps": {k: round(v, 3) for k, v in self.steps.items()},
            "written": self.written,
            "carries_from": self.carries_from,
            "rematched_notices": self.rematched_notices,
        }


# --- SQL ------------------------------------------------------------------------

_CREDIT_WINDOW_SQL = """
SELECT COALESCE((SELECT (value #>> '{}')::numeric FROM ledger.policy_setting
                  WHERE name = 'credit_window_days'),
                %(default)s)
"""

#: the columns of ledger.recon_result, in the order the row queries produce them
RESULT_COLUMNS = (
    "period", "row_key", "return_id", "line", "amazon_return_id", "sku", "asin", "quantity_received", "grade",
    "disposition", "credit_note_id", "credited_quantity", "credited_amount", "currency", "amazon_status",
    "recon_status", "computed_at", "returns_notice", "rma_id", "vret", "amazon_quantity", "charged_amount",
    "post_hoc_return_id", "batch_id", "received_total", "first_reported", "origin_date", "amount_owed",
)  # fmt: skip
_COLS = ", ".join(RESULT_COLUMNS)
_VALUE_COLS = [c for c in RESULT_COLUMNS if c not in ("period", "row_key")]

# One row per return line the run covers (the Periods rule of scenarios/README.md): lines of the return
# orders created since the earlier close's month and before this period's end, the lines an earlier close
# reported and did not settle (they carry, with the close that first reported them), and the lines of
# return orders that reached the ledger after the close of their month. A line settled by an earlier close
# is in none of the three, and none of them reads the lines settled long ago, so a close costs what its own
# lines cost, not every line ever settled. The CASE is the status table of scenarios/README.md in order
# (first status that applies).
# Shape, for a million lines: the credit join and one window over the returns
# notice and SKU (Amazon's charge against the accepted credits; the units
# received against Amazon's quantity) run over the narrow line rows first; every
# other join is a hash join, and the holds are hashed lookups, not joins that
# copy every row. The partition and DISTINCT ON keys are compared in "C" order:
# only equality matters there, and it is the same.
_LINES_SQL = f"""
WITH covered AS MATERIALIZED (  -- materialised: measured faster at 1M lines than written out where used
    SELECT o.return_id, o.returns_notice, o.rma_id, o.vret, o.created_at, NULL::text AS first_reported
      FROM ledger.return_order o
     WHERE o.created_at >= %(since)s AND o.created_at < %(end)s AND {REBOUND_ORDER}
    UNION ALL
    SELECT o.return_id, o.returns_notice, o.rma_id, o.vret, o.created_at, NULL
      FROM ledger.recon_late_order late JOIN ledger.return_order o ON o.return_id = late.return_id
     WHERE o.created_at < %(since)s AND (late.reported_period IS NULL OR late.reported_period > %(prior)s)
       AND {REBOUND_ORDER}
), carried AS (         -- lines an earlier close reported and did not settle
    SELECT k.return_id, k.line, k.first_period FROM ledger.recon_carry k
     WHERE k.return_id IS NOT NULL AND k.first_period <= %(prior)s
       AND (k.settled_period IS NULL OR k.settled_period > %(prior)s)
), run_lines AS (
    SELECT o.return_id, l.line, o.returns_notice, o.rma_id, o.vret, o.created_at, o.first_reported, l.sku,
           l.quantity_received, l.grade, l.disposition, l.dispositioned_at, l.quantity_announced,
           l.credit_quantity
      FROM covered o JOIN ledger.return_line l ON l.return_id = o.return_id
    UNION ALL
    SELECT o.return_id, l.line, o.returns_notice, o.rma_id, o.vret, o.created_at, k.first_period, l.sku,
           l.quantity_received, l.grade, l.disposition, l.dispositioned_at, l.quantity_announced,
           l.credit_quantity
      FROM carried k
      JOIN ledger.return_line l ON l.return_id = k.return_id AND l.line = k.line
      CROSS JOIN LATERAL (SELECT o.* FROM ledger.return_order o  -- by key, not all orders x carried lines
                           WHERE o.return_id = k.return_id AND {REBOUND_ORDER} OFFSET 0) o
), period_lines AS (
    SELECT p.*,
           c.asin AS credit_asin, c.document_id AS credit_note_id, c.quantity AS credited_quantity,
           round(c.quantity * c.unit_amount, 2) AS credited_amount, c.currency, c.status AS credit_status,
           sum(round(c.quantity * c.unit_amount, 2)) FILTER (WHERE c.status = 'ACCEPTED') OVER w
               AS accepted_amount,
           CASE WHEN count(*) OVER w = count(p.quantity_received) OVER w
                THEN sum(p.quantity_received) OVER w END AS received_total
      FROM run_lines p
      LEFT JOIN ledger.amazon_submission c
             ON c.kind = 'CREDIT_NOTE' AND c.return_id = p.return_id AND c.line = p.line
    WINDOW w AS (PARTITION BY p.returns_notice COLLATE "C", p.sku COLLATE "C")
), amazon AS (          -- one Amazon row per returns notice and SKU (newest import wins)
    SELECT DISTINCT ON (a.returns_notice COLLATE "C", a.sku COLLATE "C")
           a.amazon_return_id, a.returns_notice, a.sku, a.asin, a.rma_id, a.vret, a.quantity, a.charged_amount
      FROM ledger.amazon_return a
     WHERE a.returns_notice IN (SELECT o.returns_notice FROM covered o
                                UNION SELECT o.returns_notice FROM carried k
                                        JOIN ledger.return_order o ON o.return_id = k.return_id)
     ORDER BY a.returns_notice COLLATE "C", a.sku COLLATE "C", a.imported_at DESC, a.amazon_return_id
), held_lines AS (      -- lines held by an open holding exception (reported as QUARANTINED)
    SELECT e.return_id, e.line FROM ledger.exception e
     WHERE e.status = 'open' AND e.type = ANY(%(holding)s) AND e.return_id IS NOT NULL AND e.line IS NOT NULL
    UNION
    SELECT h.return_id, h.line
      FROM ledger.held_event h JOIN ledger.exception e ON e.exception_id = h.exception_id
     WHERE e.status = 'open' AND e.type = ANY(%(holding)s) AND h.line IS NOT NULL
), held_returns AS (    -- whole return orders held (exception or held event without a line)
    SELECT e.return_id FROM ledger.exception e
     WHERE e.status = 'open' AND e.type = ANY(%(holding)s) AND e.return_id IS NOT NULL AND e.line IS NULL
    UNION
    SELECT h.return_id
      FROM ledger.held_event h JOIN ledger.exception e ON e.exception_id = h.exception_id
     WHERE e.status = 'open' AND e.type = ANY(%(holding)s) AND h.line IS NULL
), joined AS (
    SELECT p.*, a.amazon_return_id, a.quantity AS amazon_quantity, a.charged_amount,
           COALESCE(p.credit_asin, s.asin, a.asin) AS asin,
           COALESCE(p.rma_id, a.rma_id) AS rma, COALESCE(p.vret, a.vret) AS vret_no,
           -- what Amazon took in, not only what the ledger says: a Success of the note's transaction, or
           -- a duplicate refusal naming it (credit_note.confirmed_by), else the ledger's ACCEPTED is unproven
           (n.confirmed_by IS NOT NULL) AS amazon_confirmed,
           dp.disposition IS NOT NULL AS has_policy, dp.credit_fraction, s.unit_cost,
           ((p.return_id, p.line) IN (SELECT return_id, line FROM held_lines)
            OR p.return_id IN (SELECT return_id FROM held_returns)) AS held
      FROM period_lines p
      -- compared in "C" order as the window and the DISTINCT ON sort them: a merge join then takes both as
      -- they come (the database's collation, C.UTF-8 here, would sort a million rows twice more, ~2 s)
      LEFT JOIN amazon a ON a.returns_notice COLLATE "C" = p.returns_notice COLLATE "C"
                        AND a.sku COLLATE "C" = p.sku COLLATE "C"
      LEFT JOIN ledger.credit_note n ON n.credit_note_id = p.credit_note_id
      LEFT JOIN ledger.sku s ON s.sku = p.sku
      LEFT JOIN ledger.disposition_policy dp ON dp.disposition = p.disposition
)
SELECT %(key)s, return_id || '|' || line, return_id, line, amazon_return_id, sku, asin, quantity_received,
       grade, disposition, credit_note_id, credited_quantity, credited_amount, currency, credit_status,
       CASE
         WHEN held THEN 'QUARANTINED'
         WHEN disposition IS NULL THEN 'PENDING'
         WHEN NOT has_policy OR credit_fraction IS NULL THEN 'ON_HOLD'
         WHEN credit_fraction = 0 OR COALESCE(quantity_received, 0) = 0 OR credit_quantity = 0
              THEN 'NO_CREDIT_DUE'
         -- rule 8: a receipt above the announced quantity holds the credit until the warehouse chooses
         WHEN quantity_received > quantity_announced AND credit_note_id IS NULL THEN 'ON_HOLD'
         WHEN credit_status = 'FAILED' THEN 'CREDIT_REJECTED'
         WHEN credit_status IS DISTINCT FROM 'ACCEPTED'
              AND (dispositioned_at IS NULL OR %(as_of)s - dispositioned_at <= %(window)s) THEN 'PENDING'
         WHEN credit_status IS DISTINCT FROM 'ACCEPTED' THEN 'CREDIT_MISSING'
         WHEN NOT amazon_confirmed THEN 'CREDIT_MISSING'
         WHEN charged_amount IS NOT NULL AND charged_amount <> accepted_amount THEN 'CREDIT_MISMATCH'
         ELSE 'MATCHED'
       END,
       %(as_of)s, returns_notice, rma, vret_no, amazon_quantity, charged_amount, NULL, %(batch)s,
       received_total, COALESCE(first_reported, %(report_period)s), (created_at AT TIME ZONE 'UTC')::date,
       -- the credit the line is owed: the credit note's amount once one is made, else the policy's
       CASE WHEN disposition IS NOT NULL AND credit_fraction > 0 AND COALESCE(quantity_received, 0) > 0
                 AND COALESCE(credit_quantity, 1) > 0
            THEN COALESCE(credited_amount, round(unit_cost * credit_fraction, 2)
                                           * COALESCE(credit_quantity, quantity_received))
       END
  FROM joined
"""

#: a period's rows: its lines, then its dark returns
_ROWS_SQL = f"""
{_LINES_SQL}
UNION ALL
{DARK_ROWS_SQL}
"""

# A later run writes only the difference: rows that are new, rows whose values changed, rows no longer
# produced. One full join of the fresh rows with the stored ones finds it; a rerun that finds the same
# answer writes nothing.
_STORED = "(SELECT * FROM ledger.recon_result WHERE period = %(key)s)"
_APPLY_SQL = f"""
WITH fresh ({_COLS}) AS (
{_ROWS_SQL}
), {incremental.diff_writes("fresh", _STORED, RESULT_COLUMNS, _VALUE_COLS)}
SELECT (SELECT count(*) FROM added), (SELECT count(*) FROM changed), (SELECT count(*) FROM gone)
"""

#: a rolling check's later run: only the returns notices whose inputs changed (reconciliation.incremental)
_REMATCH_SQL = incremental.apply_sql(incremental.scoped_rows_sql(_LINES_SQL, DARK_ROWS_SQL), RESULT_COLUMNS)

_COUNT_SQL = "SELECT recon_status, count(*) FROM ledger.recon_result WHERE period = %(key)s GROUP BY 1"

# The earlier close a run builds on: the latest close in force of a month before the run's period; a daily
# check takes only a close made before its day ended (a rerun of an old day does not see later closes).
_PRIOR_SQL = """
SELECT period, period_end, as_of FROM ledger.period_close
 WHERE reopened_at IS NULL AND period < %(period)s AND (NOT %(daily)s OR as_of < %(as_of)s)
 ORDER BY period DESC LIMIT 1
"""
_CLOSED_SQL = "SELECT version FROM ledger.period_close WHERE period = %(period)s AND reopened_at IS NULL"
#: no earlier close: every line and Amazon row since the start of time
_BEGINNING = datetime(1, 1, 1, tzinfo=UTC)


def coverage(conn, period: str, *, as_of: datetime, daily: bool) -> dict:
    """The query parameters saying what a run covers (the Periods rule): this period's end, and the
    earlier close it builds on (its month's end, its as-of, its period; None before any close)."""
    _, end = period_bounds(period)
    prior = conn.execute(_PRIOR_SQL, {"period": period, "daily": daily, "as_of": as_of}).fetchone()
    since = prior[1] if prior else _BEGINNING
    return {
        "end": end,
        "since": since,
        "end_day": end.date(),
        "since_day": since.date(),
        "prior": prior[0] if prior else None,
        "prior_as_of": prior[2] if prior else None,
        "report_period": None if daily else period,
    }


def reconcile(
    dsn: str, period: str, *, as_of: datetime, batch_id: str, result_key: str | None = None
) -> ReconSummary:
    """Classify the period's lines and dark returns, replace its results, raise exceptions.

    ``result_key`` (default: the period) is where the rows go: the close run
    writes 'YYYY-MM'; a daily rolling check writes 'daily:YYYY-MM' so it
    never overwrites a closed period's results.
    """
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware (the run's data interval end)")
    start, _ = period_bounds(period)
    key = result_key or period
    t0 = time.perf_counter()
    summary = ReconSummary(period=period, result_key=key, as_of=as_of, batch_id=batch_id)
    daily = key.startswith("daily:")
    with unit_of_work(dsn) as conn:
        # a few big hash joins and one sort: memory for them, no JIT (its compile time never pays back
        # here) and no parallel workers (two cores, and each worker would repeat the Amazon sort)
        conn.execute("SET LOCAL work_mem = '256MB'")
        conn.execute("SET LOCAL jit = off")
        conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")
        # one reconciliation of a result key at a time
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('recon:' || %s))", (key,))
        # a closed month is final: its results are what its stored report was written from
        if not daily and conn.execute(_CLOSED_SQL, {"period": key}).fetchone():
            raise PeriodClosed(f"{key} is closed: its report is final (reopen the month to close it again)")
        window_days = conn.execute(_CREDIT_WINDOW_SQL, {"default": DEFAULT_CREDIT_WINDOW_DAYS}).fetchall()[0][
            0
        ]
        params = {
            **coverage(conn, period, as_of=as_of, daily=daily),
            "key": key,
            "period": period,
            "start": start,
            "as_of": as_of,
            "batch": batch_id,
            "holding": _HOLDING,
            "window": timedelta(days=float(window_days)),
        }
        summary.carries_from = params["prior"]
        mark = time.perf_counter()

        def step(name: str) -> None:
            nonlocal mark
            now = time.perf_counter()
            summary.steps[name] = now - mark
            mark = now

        if daily:
            oldest = f"daily:{(as_of - timedelta(days=DAILY_RETENTION_DAYS)).date().isoformat()}"
            results.expire_daily(conn, oldest)
        step("retention")
        # a rolling check builds on its last run when it covers the same lines under the same policy, and
        # a close's first run on its month's rolling check (the daily runs before it matched the month)
        last = None
        snap, policy_print = incremental.snapshot(conn), incremental.fingerprint(conn, params)
        if daily or not results.has_partition(conn, key):
            last = incremental.base(conn, key if daily else f"daily:{period}", params, policy_print)
        # every query below is planned from the inputs' statistics (a re-match's lookups into them too)
        planner_stats.refresh(conn)
        step("statistics")
        # the period's results become exactly this run's rows; unchanged rows are not rewritten
        if last is not None:  # only the returns notices whose inputs changed since that run
            seeded = 0
            if not daily:  # a close starts from the rolling check's rows, as the close reports them
                seed = {**params, "seed": f"daily:{period}"}
                seeded = results.load_partition(conn, key, incremental.seed_sql(RESULT_COLUMNS), _COLS, seed)
            summary.rematched_notices, added, changed, gone = incremental.rematch(
                conn, params, last, _REMATCH_SQL
            )
            added += seeded
        elif results.has_partition(conn, key):
            added, changed, gone = conn.execute(_APPLY_SQL, params).fetchall()[0]
        else:  # the key's first run: its partition is built from the rows, then attached
            added, changed, gone = results.load_partition(conn, key, _ROWS_SQL, _COLS, params), 0, 0
        if daily and last is None:
            conn.execute("SELECT ledger.recon_partition_group_index(%s)", (key,))
        summary.written = {"inserted": added, "updated": changed, "deleted": gone}
        step("match")
        # fresh statistics for the queries below (stale ones sent the planner into nested loops over a million
        # rows); not after a re-match (a close's too): its findings read only the rows it re-matched
        if last is None:
            if added or changed or gone:
                results.analyze_partition(conn, key)
            results.analyze(conn, "ledger.exception")
        step("analyze")
        incremental.lookups(conn, last is not None)  # after a re-match: a few rows, found by key
        summary.exceptions_raised = findings.raise_found(
            conn, params, as_of=as_of, window_days=window_days, touched_only=last is not None
        )
        step("raise_exceptions")
        summary.exceptions_resolved += findings.resolve_settled(
            conn, params, at=as_of, batch_id=batch_id, since=last["snapshot"] if last is not None else None
        )
        incremental.lookups(conn, False)
        step("resolve_settled")

        # after a re-match (a close's too: it copied its rolling check's rows), the last run's counts moved by
        # the re-matched rows', not a count of every row (0.4 s at 1M rows)
        known = incremental.counts(conn, last) if last is not None else None
        summary.by_status = known if known is not None else dict(conn.execute(_COUNT_SQL, params).fetchall())
        summary.rows = sum(summary.by_status.values())
        step("count")
        if daily:  # what the next run builds on, and the changes no rolling key needs any more
            incremental.save(conn, key, params, policy_print, snap, summary.by_status)
            incremental.prune(conn)
            step("state")
    summary.seconds = time.perf_counter() - t0
    log.info(
        "reconciled %s as of %s (carrying from the close of %s): %s rows %s, exceptions %s",
        key,
        as_of.isoformat(),
        summary.carries_from or "no earlier month",
        summary.rows,
        summary.by_status,
        summary.exceptions_raised,
    )
    return summary
