"""Stalled flows: what is stuck at the run's date (Amazon actions, held events, lines owed a credit that
nothing will send, the sync itself), raised as SYNC_STALLED and resolved again once it moves.

Every answer is *as of* the run's date (the data interval end), never the wall clock, so a rerun of a past
day's check finds that day's stalls again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg
from psycopg.rows import dict_row

from returnledger.exception_queue.queue import NewException, raise_exceptions, resolve_open
from returnledger.models import ExceptionType
from returnledger.store.db import unit_of_work

#: the actor (and batch prefix) of the operating checks
CHECKER = "operating_checks"


@dataclass(frozen=True)
class StallLimits:
    """How long something may wait before it counts as stalled."""

    pending_submission: timedelta = timedelta(hours=24)  # earned, not yet sent to Amazon
    submitted_unanswered: timedelta = timedelta(hours=48)  # sent, Amazon's transaction still not final
    held_event: timedelta = timedelta(days=3)  # an event held (ledger.held_event) waiting for its release
    sync_expected: timedelta = timedelta(hours=26)  # daily sync plus slack


_STALLED_SUBMISSIONS_SQL = """
SELECT idempotency_key, kind, return_id, line, sku, document_id AS credit_note_id, attempts,
       CASE WHEN submitted_at IS NOT NULL AND submitted_at <= %(as_of)s THEN 'SUBMITTED' ELSE 'PENDING' END
           AS status_at,
       CASE WHEN submitted_at IS NOT NULL AND submitted_at <= %(as_of)s THEN submitted_at ELSE created_at END
           AS waiting_since
FROM ledger.amazon_submission
WHERE created_at <= %(as_of)s
  AND (resolved_at IS NULL OR resolved_at > %(as_of)s)
  AND ((submitted_at IS NULL OR submitted_at > %(as_of)s) AND created_at <= %(as_of)s - %(pending)s
       OR submitted_at <= %(as_of)s - %(submitted)s)
ORDER BY waiting_since, idempotency_key
"""

_STALLED_HELD_SQL = """
SELECT return_id, line, string_agg(DISTINCT reason, ', ' ORDER BY reason) AS reasons, count(*) AS events,
       min(held_at) AS held_since
FROM ledger.held_event
WHERE held_at <= %(as_of)s - %(held)s
GROUP BY return_id, line
ORDER BY held_since, return_id, line
"""


# dispositioned lines whose policy owes a credit (units received, or the units the warehouse chose for an
# over-receipt) that no credit note carries and no exception explains: nothing would ever send it
_UNCREDITED_SQL = """
SELECT l.return_id, l.line, l.sku, l.disposition, COALESCE(l.credit_quantity, l.quantity_received) AS units,
       l.dispositioned_at AS waiting_since
FROM ledger.return_line l
JOIN ledger.disposition_policy p ON p.disposition = l.disposition AND p.credit_fraction > 0
WHERE l.state = 'DISPOSITIONED'
  AND l.dispositioned_at <= %(as_of)s - %(pending)s
  AND l.updated_at <= %(as_of)s - %(pending)s
  AND COALESCE(l.credit_quantity, l.quantity_received) > 0
  AND NOT EXISTS (SELECT 1 FROM ledger.amazon_submission a
                   WHERE a.kind = 'CREDIT_NOTE' AND a.return_id = l.return_id AND a.line = l.line)
  AND NOT EXISTS (SELECT 1 FROM ledger.exception e
                   WHERE e.return_id = l.return_id AND e.line = l.line AND e.type <> 'SYNC_STALLED'
                     AND e.opened_at <= %(as_of)s AND (e.status = 'open' OR e.resolved_at > %(as_of)s))
ORDER BY l.dispositioned_at, l.return_id, l.line
"""


def uncredited_subject(return_id: str, line: int) -> str:
    """Subject of the SYNC_STALLED raised for a line owed a credit that nothing will send."""
    return f"uncredited:{return_id}|{line}"


def stalled_flows(
    conn: psycopg.Connection, *, as_of: datetime, thresholds: StallLimits = StallLimits()
) -> dict:
    """What is stuck at ``as_of``: Amazon actions (``ledger.amazon_submission``), held events, and the sync
    itself (read only)."""
    p = {
        "as_of": as_of,
        "pending": thresholds.pending_submission,
        "submitted": thresholds.submitted_unanswered,
        "held": thresholds.held_event,
    }
    with conn.cursor(row_factory=dict_row) as cur:
        submissions = cur.execute(_STALLED_SUBMISSIONS_SQL, p).fetchall()
        held = cur.execute(_STALLED_HELD_SQL, p).fetchall()
        uncredited = cur.execute(_UNCREDITED_SQL, p).fetchall()
        last = cur.execute(
            "SELECT max(finished_at) AS last FROM ledger.sync_run WHERE finished_at <= %s", (as_of,)
        ).fetchall()[0]["last"]  # an aggregate: always one row
    sync_late = last is None or as_of - last > thresholds.sync_expected
    return {
        "submissions": submissions,
        "held": held,
        "uncredited": uncredited,
        "last_sync": last,
        "sync_late": sync_late,
    }


def held_line(return_id: str, line: int | None) -> str:
    """A held return line as people read it: 'RID|LINE', or the return id when the whole return is held."""
    return f"{return_id}|{line}" if line is not None else return_id


def held_subject(return_id: str, line: int | None) -> str:
    """Subject of the SYNC_STALLED raised for events held too long."""
    return f"held:{held_line(return_id, line)}"


def check_stalled_flows(dsn_or_conn, *, as_of: datetime, thresholds: StallLimits = StallLimits()) -> dict:
    """Raise SYNC_STALLED for what is stuck (idempotent) and resolve the ones that got moving again."""
    batch = f"{CHECKER}:{as_of:%Y-%m-%dT%H:%M}"
    with unit_of_work(dsn_or_conn) as conn:
        found = stalled_flows(conn, as_of=as_of, thresholds=thresholds)
        items = [
            NewException(
                type=ExceptionType.SYNC_STALLED,
                subject_key=f"submission:{s['idempotency_key']}",
                detail=f"{s['kind']} {s['status_at']} since {s['waiting_since']:%Y-%m-%d %H:%M} UTC"
                f" (attempts {s['attempts']})",
                return_id=s["return_id"],
                line=s["line"],
                sku=s["sku"],
            )
            for s in found["submissions"]
        ]
        items += [
            NewException(
                type=ExceptionType.SYNC_STALLED,
                subject_key=held_subject(h["return_id"], h["line"]),
                detail=f"{h['events']} event(s) held ({h['reasons']}) since"
                f" {h['held_since']:%Y-%m-%d %H:%M} UTC",
                return_id=h["return_id"],
                line=h["line"],
            )
            for h in found["held"]
        ]
        items += [
            NewException(
                type=ExceptionType.SYNC_STALLED,
                subject_key=uncredited_subject(u["return_id"], u["line"]),
                detail=f"dispositioned {u['disposition']} on {u['waiting_since']:%Y-%m-%d} with {u['units']}"
                " unit(s) of credit owed, but no credit note and no open exception: nothing will send it",
                return_id=u["return_id"],
                line=u["line"],
                sku=u["sku"],
            )
            for u in found["uncredited"]
        ]
        if found["sync_late"]:
            last = f"{found['last_sync']:%Y-%m-%d %H:%M} UTC" if found["last_sync"] else "never"
            items.append(
                NewException(
                    type=ExceptionType.SYNC_STALLED,
                    subject_key="sync:returns_sync",
                    detail=f"no successful returns_sync run since {last}",
                )
            )
        raised = raise_exceptions(conn, items, at=as_of, batch_id=batch)
        current = {i.subject_key for i in items}
        open_mine = [
            r[0]
            for r in conn.execute(
                "SELECT subject_key FROM ledger.exception WHERE type = 'SYNC_STALLED' AND status = 'open'"
                " AND opened_at <= %s AND (subject_key LIKE 'submission:%%' OR subject_key LIKE 'held:%%'"
                " OR subject_key LIKE 'sync:%%' OR subject_key LIKE 'uncredited:%%')",
                (as_of,),
            )
        ]
        cleared = [s for s in open_mine if s not in current]
        resolved = resolve_open(
            conn,
            ExceptionType.SYNC_STALLED,
            cleared,
            at=as_of,
            actor=CHECKER,
            resolution="cleared: no longer stalled at the operating check",
        )
    return {
        "stalled_submissions": len(found["submissions"]),
        "stalled_held_lines": len(found["held"]),
        "uncredited_lines": len(found["uncredited"]),
        "sync_late": int(found["sync_late"]),
        "raised": raised,
        "resolved": resolved,
    }
