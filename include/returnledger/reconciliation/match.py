"""Month-end matching of ReBound returns against Amazon's credits and return records.

Everything here is set-based SQL over the ledger: one statement classifies
every return line of the period (the recon status table in
scenarios/README.md, first status that applies), one finds the period's dark
returns (Amazon return records with no ReBound return), and the exception
queue gets CREDIT_MISSING, CREDIT_MISMATCH, DARK_RETURN and QUANTITY_MISMATCH
raised once per subject. A period's results are replaced in one transaction,
so a rerun for the same period and as-of date writes the same rows.

Lines are matched to Amazon rows by returns notice and SKU (Amazon keeps one
row per returns notice and SKU). Dates come from the run (``as_of`` is the
data interval end), never from the clock.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

from returnledger.exception_queue.queue import NewException, raise_exceptions, resolve_open
from returnledger.models import ExceptionType
from returnledger.store.db import connect

log = logging.getLogger(__name__)

PERIOD_RE = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
DEFAULT_CREDIT_WINDOW_DAYS = 7
#: daily rolling-check results are kept this long; close results are kept for good
DAILY_RETENTION_DAYS = 35


def period_bounds(period: str) -> tuple[datetime, datetime]:
    """[start, end) of a 'YYYY-MM' period in UTC."""
    m = PERIOD_RE.match(period or "")
    if not m:
        raise ValueError(f"period must be YYYY-MM, got {period!r}")
    year, month = int(m.group(1)), int(m.group(2))
    start = datetime(year, month, 1, tzinfo=timezone.utc)
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=timezone.utc)
    return start, end


def period_of(day: date | datetime) -> str:
    return f"{day.year:04d}-{day.month:02d}"


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
    steps: dict[str, float] = field(default_factory=dict)   # seconds per step, for the run log and the benchmark

    def as_dict(self) -> dict:
        """Small, JSON-safe summary for XCom."""
        return {"period": self.period, "result_key": self.result_key, "as_of": self.as_of.isoformat(),
                "batch_id": self.batch_id, "rows": self.rows, "by_status": self.by_status,
                "exceptions_raised": self.exceptions_raised, "exceptions_resolved": self.exceptions_resolved,
                "seconds": round(self.seconds, 3), "steps": {k: round(v, 3) for k, v in self.steps.items()}}


# --- SQL ------------------------------------------------------------------------

#: a return order that belongs to ReBound's own flow (not a post-hoc record made for a dark return)
_REBOUND_ORDER = """
    o.source = 'REBOUND' AND o.amazon_return_id IS NULL
    AND NOT EXISTS (SELECT 1 FROM ledger.amazon_return x WHERE x.linked_return_id = o.return_id)
"""

_CREDIT_WINDOW_SQL = """
SELECT COALESCE((SELECT (value #>> '{}')::numeric FROM ledger.policy_setting WHERE name = 'credit_window_days'),
                %(default)s)
"""

_DELETE_RESULTS_SQL = "DELETE FROM ledger.recon_result WHERE period = %(key)s"

_DELETE_OLD_DAILY_SQL = """
DELETE FROM ledger.recon_result
 WHERE period LIKE 'daily:%%' AND period < %(oldest)s
"""

# One row per return line of the period's return orders; the CASE is the
# status table of scenarios/README.md in order (first that applies).
_LINES_SQL = f"""
INSERT INTO ledger.recon_result (
    period, row_key, return_id, line, amazon_return_id, sku, asin, quantity_received, grade, disposition,
    credit_note_id, credited_quantity, credited_amount, currency, amazon_status, recon_status, computed_at,
    returns_notice, rma_id, vret, amazon_quantity, charged_amount, post_hoc_return_id, batch_id)
WITH period_lines AS (
    SELECT o.return_id, l.line, o.returns_notice, o.rma_id, o.vret, l.sku, l.quantity_received, l.grade,
           l.disposition, l.dispositioned_at, l.quantity_announced, l.credit_quantity
      FROM ledger.return_order o
      JOIN ledger.return_line l ON l.return_id = o.return_id
     WHERE o.created_at >= %(start)s AND o.created_at < %(end)s AND {_REBOUND_ORDER}
), amazon AS (          -- one Amazon row per returns notice and SKU (newest import wins)
    SELECT DISTINCT ON (a.returns_notice, a.sku)
           a.amazon_return_id, a.returns_notice, a.sku, a.asin, a.rma_id, a.vret, a.quantity, a.charged_amount
      FROM ledger.amazon_return a
     WHERE a.returns_notice IN (SELECT returns_notice FROM period_lines)
     ORDER BY a.returns_notice, a.sku, a.imported_at DESC, a.amazon_return_id
), held_lines AS (      -- lines held by an open quarantine exception
    SELECT e.return_id, e.line FROM ledger.exception e
     WHERE e.status = 'open' AND e.type = ANY(%(holding)s) AND e.return_id IS NOT NULL AND e.line IS NOT NULL
    UNION
    SELECT h.return_id, h.line FROM ledger.held_event h JOIN ledger.exception e ON e.exception_id = h.exception_id
     WHERE e.status = 'open' AND e.type = ANY(%(holding)s) AND h.line IS NOT NULL
), held_returns AS (    -- whole return orders held (exception or held event without a line)
    SELECT e.return_id FROM ledger.exception e
     WHERE e.status = 'open' AND e.type = ANY(%(holding)s) AND e.return_id IS NOT NULL AND e.line IS NULL
    UNION
    SELECT h.return_id FROM ledger.held_event h JOIN ledger.exception e ON e.exception_id = h.exception_id
     WHERE e.status = 'open' AND e.type = ANY(%(holding)s) AND h.line IS NULL
), joined AS (
    SELECT p.*, a.amazon_return_id, a.quantity AS amazon_quantity, a.charged_amount,
           COALESCE(c.asin, s.asin, a.asin) AS asin,
           COALESCE(p.rma_id, a.rma_id) AS rma, COALESCE(p.vret, a.vret) AS vret_no,
           c.document_id, c.quantity AS credited_quantity, round(c.quantity * c.unit_amount, 2) AS credited_amount,
           c.currency, c.status AS credit_status,
           -- what Amazon took in, not only what the ledger says: a Success of the note's transaction, or
           -- a duplicate refusal naming it (credit_note.confirmed_by), else the ledger's ACCEPTED is unproven
           (n.confirmed_by IS NOT NULL) AS amazon_confirmed,
           dp.disposition IS NOT NULL AS has_policy, dp.credit_fraction,
           (hl.return_id IS NOT NULL OR hr.return_id IS NOT NULL) AS held,
           sum(round(c.quantity * c.unit_amount, 2)) FILTER (WHERE c.status = 'ACCEPTED')
               OVER (PARTITION BY p.returns_notice, p.sku) AS accepted_amount
      FROM period_lines p
      LEFT JOIN amazon a ON a.returns_notice = p.returns_notice AND a.sku = p.sku
      LEFT JOIN ledger.amazon_submission c
             ON c.kind = 'CREDIT_NOTE' AND c.return_id = p.return_id AND c.line = p.line
      LEFT JOIN ledger.credit_note n ON n.credit_note_id = c.document_id
      LEFT JOIN ledger.sku s ON s.sku = p.sku
      LEFT JOIN ledger.disposition_policy dp ON dp.disposition = p.disposition
      LEFT JOIN (SELECT DISTINCT return_id, line FROM held_lines) hl
             ON hl.return_id = p.return_id AND hl.line = p.line
      LEFT JOIN (SELECT DISTINCT return_id FROM held_returns) hr ON hr.return_id = p.return_id
)
SELECT %(key)s, return_id || '|' || line, return_id, line, amazon_return_id, sku, asin, quantity_received,
       grade, disposition, document_id, credited_quantity, credited_amount, currency, credit_status,
       CASE
         WHEN held THEN 'QUARANTINED'
         WHEN disposition IS NULL THEN 'PENDING'
         WHEN NOT has_policy OR credit_fraction IS NULL THEN 'ON_HOLD'
         WHEN credit_fraction = 0 OR COALESCE(quantity_received, 0) = 0 OR credit_quantity = 0
              THEN 'NO_CREDIT_DUE'
         -- rule 8: a receipt above the announced quantity holds the credit until the warehouse chooses
         WHEN quantity_received > quantity_announced AND document_id IS NULL THEN 'ON_HOLD'
         WHEN credit_status = 'FAILED' THEN 'CREDIT_REJECTED'
         WHEN credit_status IS DISTINCT FROM 'ACCEPTED'
              AND (dispositioned_at IS NULL OR %(as_of)s - dispositioned_at <= %(window)s) THEN 'PENDING'
         WHEN credit_status IS DISTINCT FROM 'ACCEPTED' THEN 'CREDIT_MISSING'
         WHEN NOT amazon_confirmed THEN 'CREDIT_MISSING'
         WHEN charged_amount IS NOT NULL AND charged_amount <> accepted_amount THEN 'CREDIT_MISMATCH'
         ELSE 'MATCHED'
       END,
       %(as_of)s, returns_notice, rma, vret_no, amazon_quantity, charged_amount, NULL, %(batch)s
  FROM joined
"""

# Amazon return records of the period's export with no ReBound return line for
# their returns notice and SKU. Still reported after a post-hoc record exists.
_DARK_SQL = f"""
INSERT INTO ledger.recon_result (
    period, row_key, return_id, line, amazon_return_id, sku, asin, quantity_received, grade, disposition,
    credit_note_id, credited_quantity, credited_amount, currency, amazon_status, recon_status, computed_at,
    returns_notice, rma_id, vret, amazon_quantity, charged_amount, post_hoc_return_id, batch_id)
SELECT %(key)s, ar.amazon_return_id, NULL, NULL, ar.amazon_return_id, ar.sku, ar.asin, NULL, NULL, NULL,
       NULL, NULL, NULL, NULL, NULL, 'DARK_RETURN', %(as_of)s,
       ar.returns_notice, ar.rma_id, ar.vret, ar.quantity, ar.charged_amount, ar.linked_return_id, %(batch)s
  FROM ledger.amazon_return ar
 WHERE ar.export_period = %(period)s
   AND NOT EXISTS (SELECT 1 FROM ledger.return_order o JOIN ledger.return_line l ON l.return_id = o.return_id
                    WHERE o.returns_notice = ar.returns_notice AND l.sku = ar.sku AND {_REBOUND_ORDER})
"""

# Candidates for the exception queue: a subject that already has an exception of
# the type (open, resolved or dismissed) is not raised again. A person who
# resolved or dismissed it made a decision; the report keeps showing the status.
_NOT_RAISED = """
NOT EXISTS (SELECT 1 FROM ledger.exception e WHERE e.type = %(type)s AND e.subject_key = r.row_key)
"""

_CREDIT_MISSING_SQL = f"""
SELECT r.row_key, r.return_id, r.line, r.sku, r.returns_notice, r.credit_note_id, r.amazon_status,
       r.quantity_received, l.dispositioned_at
  FROM ledger.recon_result r
  JOIN ledger.return_line l ON l.return_id = r.return_id AND l.line = r.line
 WHERE r.period = %(key)s AND r.recon_status = 'CREDIT_MISSING' AND {_NOT_RAISED}
"""

_CREDIT_MISMATCH_SQL = f"""
SELECT r.row_key, r.return_id, r.line, r.sku, r.returns_notice, r.credit_note_id, r.credited_amount,
       r.charged_amount, r.currency, r.amazon_return_id
  FROM ledger.recon_result r
 WHERE r.period = %(key)s AND r.recon_status = 'CREDIT_MISMATCH' AND {_NOT_RAISED}
"""

_DARK_EXC_SQL = f"""
SELECT r.row_key, r.sku, r.returns_notice, r.rma_id, r.amazon_quantity, a.label, a.returned_at, a.source_file
  FROM ledger.recon_result r
  JOIN ledger.amazon_return a ON a.amazon_return_id = r.amazon_return_id
 WHERE r.period = %(key)s AND r.recon_status = 'DARK_RETURN' AND {_NOT_RAISED}
"""

# Received units (all lines of a returns notice and SKU, once all are received)
# against Amazon's quantity for that notice and SKU.
_QUANTITY_SQL = f"""
WITH g AS (
    SELECT r.*, sum(r.quantity_received) OVER w AS received_total,
           count(*) OVER w AS n_lines, count(r.quantity_received) OVER w AS n_received
      FROM ledger.recon_result r
     WHERE r.period = %(key)s AND r.return_id IS NOT NULL AND r.amazon_quantity IS NOT NULL
    WINDOW w AS (PARTITION BY r.returns_notice, r.sku)
)
SELECT r.row_key, r.return_id, r.line, r.sku, r.returns_notice, r.received_total, r.amazon_quantity,
       r.amazon_return_id
  FROM g r
 WHERE r.n_lines = r.n_received AND r.received_total <> r.amazon_quantity AND {_NOT_RAISED}
"""

# Open exceptions that this run shows are settled: the credit was accepted after
# all, or a ReBound return turned up for a dark return.
_SETTLED_CREDIT_MISSING_SQL = """
SELECT r.row_key FROM ledger.recon_result r
  JOIN ledger.exception e ON e.type = 'CREDIT_MISSING' AND e.status = 'open' AND e.subject_key = r.row_key
 WHERE r.period = %(key)s AND r.return_id IS NOT NULL AND r.recon_status IN ('MATCHED', 'CREDIT_MISMATCH')
"""

_SETTLED_DARK_SQL = f"""
SELECT ar.amazon_return_id FROM ledger.amazon_return ar
  JOIN ledger.exception e ON e.type = 'DARK_RETURN' AND e.status = 'open' AND e.subject_key = ar.amazon_return_id
 WHERE ar.export_period = %(period)s
   AND EXISTS (SELECT 1 FROM ledger.return_order o JOIN ledger.return_line l ON l.return_id = o.return_id
                WHERE o.returns_notice = ar.returns_notice AND l.sku = ar.sku AND {_REBOUND_ORDER})
"""

_COUNT_SQL = "SELECT recon_status, count(*) FROM ledger.recon_result WHERE period = %(key)s GROUP BY 1"

_HOLDING = ["UNMAPPED_REASON_CODE", "SKU_MISMATCH", "OUT_OF_SEQUENCE"]


def _money(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _credit_missing(rows, as_of: datetime, window_days) -> list[NewException]:
    out = []
    for key, rid, line, sku, notice, doc, status, qty, disp_at in rows:
        age = (as_of - disp_at).days if disp_at else None
        sent = f"credit note {doc} is {status}" if doc else "no credit note was sent"
        if status == "ACCEPTED":
            sent = (f"the ledger marks credit note {doc} accepted, but Amazon never confirmed it (no Success "
                    "of its transaction and no duplicate refusal naming it in the send log)")
        out.append(NewException(
            ExceptionType.CREDIT_MISSING, key,
            f"{qty} unit(s) of {sku} (returns notice {notice}) were dispositioned {age} days before "
            f"{as_of:%Y-%m-%d} and Amazon has not accepted a credit within the {window_days}-day window: {sent}",
            return_id=rid, line=line, sku=sku))
    return out


def _credit_mismatch(rows) -> list[NewException]:
    return [NewException(
        ExceptionType.CREDIT_MISMATCH, key,
        f"Amazon charged {_money(charged)} {cur or ''} for returns notice {notice} / {sku} "
        f"(export row {arid}) but the accepted credit note {doc} credited {_money(credited)}",
        return_id=rid, line=line, sku=sku, amazon_return_id=arid)
        for key, rid, line, sku, notice, doc, credited, charged, cur, arid in rows]


def _dark(rows) -> list[NewException]:
    return [NewException(
        ExceptionType.DARK_RETURN, key,
        f"Amazon return {key} ({label} label, returns notice {notice}, RMA {rma or '-'}, {qty} x {sku}, "
        f"returned {returned}, file {src}) has no ReBound return; check the parcel at the warehouse",
        sku=sku, amazon_return_id=key)
        for key, sku, notice, rma, qty, label, returned, src in rows]


def _quantity(rows) -> list[NewException]:
    return [NewException(
        ExceptionType.QUANTITY_MISMATCH, key,
        f"{received} unit(s) of {sku} received for returns notice {notice}, Amazon's returns export "
        f"{arid} shows {amazon_qty}",
        return_id=rid, line=line, sku=sku, amazon_return_id=arid)
        for key, rid, line, sku, notice, received, amazon_qty, arid in rows]


def reconcile(dsn: str, period: str, *, as_of: datetime, batch_id: str,
              result_key: str | None = None) -> ReconSummary:
    """Classify the period's lines and dark returns, replace its results, raise exceptions.

    ``result_key`` (default: the period) is where the rows go: the close run
    writes 'YYYY-MM'; a daily rolling check writes 'daily:YYYY-MM-DD' so it
    never overwrites a closed period's results.
    """
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware (the run's data interval end)")
    start, end = period_bounds(period)
    key = result_key or period
    t0 = time.perf_counter()
    summary = ReconSummary(period=period, result_key=key, as_of=as_of, batch_id=batch_id)
    with connect(dsn) as conn:
        with conn.transaction():
            conn.execute("SET LOCAL work_mem = '256MB'")
            # one reconciliation of a result key at a time
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('recon:' || %s))", (key,))
            window_days = conn.execute(_CREDIT_WINDOW_SQL, {"default": DEFAULT_CREDIT_WINDOW_DAYS}).fetchone()[0]
            params = {"key": key, "period": period, "start": start, "end": end, "as_of": as_of,
                      "batch": batch_id, "holding": _HOLDING, "window": timedelta(days=float(window_days))}
            mark = time.perf_counter()

            def step(name: str) -> None:
                nonlocal mark
                now = time.perf_counter()
                summary.steps[name] = now - mark
                mark = now

            conn.execute(_DELETE_RESULTS_SQL, params)
            if key.startswith("daily:"):
                oldest = f"daily:{(as_of - timedelta(days=DAILY_RETENTION_DAYS)).date().isoformat()}"
                conn.execute(_DELETE_OLD_DAILY_SQL, {"oldest": oldest})
            step("replace")
            conn.execute(_LINES_SQL, params)
            step("lines")
            conn.execute(_DARK_SQL, params)
            step("dark")
            # fresh statistics: the queries below read the rows just written and the exception queue
            # (stale stats of a once-empty table send the planner into nested loops over a million rows)
            conn.execute("ANALYZE ledger.recon_result")
            conn.execute("ANALYZE ledger.exception")
            step("analyze")

            new: list[NewException] = []
            new += _credit_missing(conn.execute(_CREDIT_MISSING_SQL, {**params, "type": "CREDIT_MISSING"}),
                                   as_of, window_days)
            new += _credit_mismatch(conn.execute(_CREDIT_MISMATCH_SQL, {**params, "type": "CREDIT_MISMATCH"}))
            new += _dark(conn.execute(_DARK_EXC_SQL, {**params, "type": "DARK_RETURN"}))
            new += _quantity(conn.execute(_QUANTITY_SQL, {**params, "type": "QUANTITY_MISMATCH"}))
            step("find_exceptions")
            for t in sorted({str(n.type) for n in new}):
                batch = [n for n in new if str(n.type) == t]
                summary.exceptions_raised[t] = raise_exceptions(conn, batch, at=as_of, batch_id=batch_id)
            step("raise_exceptions")

            settled = [r[0] for r in conn.execute(_SETTLED_CREDIT_MISSING_SQL, params)]
            summary.exceptions_resolved += resolve_open(
                conn, ExceptionType.CREDIT_MISSING, settled, at=as_of, actor=f"reconciliation:{batch_id}",
                resolution="Amazon accepted the credit note")
            found = [r[0] for r in conn.execute(_SETTLED_DARK_SQL, params)]
            summary.exceptions_resolved += resolve_open(
                conn, ExceptionType.DARK_RETURN, found, at=as_of, actor=f"reconciliation:{batch_id}",
                resolution="a ReBound return now exists for this returns notice and SKU")
            step("resolve_settled")

            summary.by_status = {s: n for s, n in conn.execute(_COUNT_SQL, params)}
            summary.rows = sum(summary.by_status.values())
            step("count")
    summary.seconds = time.perf_counter() - t0
    log.info("reconciled %s as of %s: %s rows %s, exceptions %s", key, as_of.isoformat(), summary.rows,
             summary.by_status, summary.exceptions_raised)
    return summary


# --- post-hoc ReBound returns for dark returns -----------------------------------

_UNLINKED_DARK_SQL = f"""
SELECT ar.amazon_return_id, ar.returns_notice, ar.rma_id, ar.vret, ar.sku, ar.asin, ar.quantity, ar.returned_at
  FROM ledger.amazon_return ar
 WHERE ar.linked_return_id IS NULL
   AND EXISTS (SELECT 1 FROM ledger.exception e
                WHERE e.type = 'DARK_RETURN' AND e.subject_key = ar.amazon_return_id)
   AND NOT EXISTS (SELECT 1 FROM ledger.exception e
                    WHERE e.type = 'DARK_RETURN' AND e.subject_key = ar.amazon_return_id
                      AND e.status = 'dismissed')
   AND NOT EXISTS (SELECT 1 FROM ledger.return_order o JOIN ledger.return_line l ON l.return_id = o.return_id
                    WHERE o.returns_notice = ar.returns_notice AND l.sku = ar.sku AND {_REBOUND_ORDER})
 ORDER BY ar.amazon_return_id
"""

_LINK_SQL = """
WITH o AS (
    INSERT INTO ledger.return_order (return_id, created_at, returns_notice, rma_id, vret, source,
                                     amazon_return_id, payload)
    VALUES (%(return_id)s, %(at)s, %(notice)s, %(rma)s, %(vret)s, 'POST_HOC', %(arid)s, %(payload)s)
    ON CONFLICT (return_id) DO NOTHING
)
UPDATE ledger.amazon_return SET linked_return_id = %(return_id)s
 WHERE amazon_return_id = %(arid)s AND linked_return_id IS NULL
"""

_AUDIT_SQL = """
INSERT INTO ledger.audit_log (at, actor, action, subject, detail)
VALUES (%(at)s, %(actor)s, 'create_post_hoc_return', %(arid)s, %(payload)s)
"""


def create_post_hoc_returns(dsn: str, rebound_client, *, at: datetime, batch_id: str) -> int:
    """Create a ReBound return for every dark return not linked yet; returns how many were linked.

    Only Amazon records that reconciliation flagged (a DARK_RETURN exception
    that nobody dismissed) and that still have no ReBound return qualify.
    ReBound's post-hoc endpoint is idempotent on the Amazon return id and each
    link is committed on its own, so a retry after a failure resumes where it
    stopped and never creates a record twice.
    """
    from psycopg.types.json import Jsonb

    linked = 0
    with connect(dsn) as conn:
        todo = conn.execute(_UNLINKED_DARK_SQL).fetchall()
        conn.commit()
        for arid, notice, rma, vret, sku, asin, qty, returned_at in todo:
            answer = rebound_client.create_post_hoc_return(
                amazon_return_id=arid, returns_notice=notice, rma_id=rma, sku=sku, asin=asin, quantity=qty,
                returned_at=returned_at.isoformat() if returned_at else None)
            return_id = str(answer["return_id"])
            payload = Jsonb({"batch_id": batch_id, "rebound": answer})
            with conn.transaction():
                cur = conn.execute(_LINK_SQL, {"return_id": return_id, "at": at, "notice": notice, "rma": rma,
                                               "vret": vret or None, "arid": arid, "payload": payload})
                if cur.rowcount:
                    linked += 1
                    conn.execute(_AUDIT_SQL, {"at": at, "actor": f"reconciliation:{batch_id}", "arid": arid,
                                              "payload": Jsonb({"return_id": return_id})})
    log.info("post-hoc ReBound returns linked: %s of %s dark returns", linked, len(todo))
    return linked


# --- CLI ------------------------------------------------------------------------

def _cli_reconcile(args) -> int:
    from returnledger.store.db import resolve_dsn

    as_of = datetime.fromisoformat(args.as_of)
    if as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=timezone.utc)
    s = reconcile(resolve_dsn(args.dsn), args.period, as_of=as_of,
                  batch_id=args.batch_id or f"cli:reconcile:{args.period}")
    import json

    print(json.dumps(s.as_dict(), indent=1))
    return 0


def register_cli(subparsers) -> None:
    """`returnledger reconcile PERIOD --as-of ...`."""
    p = subparsers.add_parser("reconcile", help="match a period's returns against Amazon (writes recon_result)")
    p.add_argument("period", help="YYYY-MM")
    p.add_argument("--as-of", required=True, help="ISO timestamp: the close run's data interval end")
    p.add_argument("--batch-id", default=None)
    p.add_argument("--dsn", default=None)
    p.set_defaults(func=_cli_reconcile)
