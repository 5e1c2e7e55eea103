"""AMAZON_REJECTED: send a rejected credit note (or inventory update) again, once the cause was fixed on
Amazon's side, as exactly the same document: same idempotency key, same credit-note id."""

from __future__ import annotations

import json
from datetime import datetime

from psycopg.rows import dict_row

from returnledger.exception_queue.queue import (
    ExceptionActionError,
    close,
    exception_subject,
    line_subject,
    lock_open,
    required,
)
from returnledger.exception_types import offering
from returnledger.store.audit import record_one
from returnledger.store.db import unit_of_work

_RETRY_RESET_SQL = """
WITH mine AS (
    SELECT document_id FROM ledger.amazon_submission
    WHERE return_id = %(rid)s AND line = %(line)s AND kind = 'CREDIT_NOTE' AND status = 'FAILED'
      AND document_id IS NOT NULL
), target AS (
    SELECT s.submission_id FROM ledger.amazon_submission s
    WHERE s.status = 'FAILED'
      AND ((s.return_id = %(rid)s AND s.line = %(line)s)
           OR (s.kind = 'CREDIT_NOTE' AND s.document_id IN (SELECT document_id FROM mine)))
    FOR UPDATE
)
UPDATE ledger.amazon_submission s
SET status = 'PENDING', transaction_id = NULL, submitted_at = NULL, resolved_at = NULL
FROM target t WHERE s.submission_id = t.submission_id
RETURNING s.submission_id, s.idempotency_key, s.kind, s.return_id, s.line, s.document_id, s.attempts,
          s.last_error
"""

_RETRY_LINES_SQL = """
WITH l AS (SELECT * FROM unnest(%(rid)s::text[], %(line)s::int[]) AS l(return_id, line)),
moved AS (
    UPDATE ledger.return_line r SET state = 'DISPOSITIONED', updated_at = %(at)s
    FROM l WHERE r.return_id = l.return_id AND r.line = l.line
      AND r.state = 'REJECTED' AND r.disposition IS DISTINCT FROM 'REJECTED'
    RETURNING r.return_id, r.line
)
INSERT INTO ledger.line_history (return_id, line, from_state, to_state, event_id, cause, batch_id, at, detail)
SELECT m.return_id, m.line, 'REJECTED', 'DISPOSITIONED', NULL, 'RETRY_SUBMISSION', %(batch)s, %(at)s,
       %(detail)s
FROM moved m
RETURNING return_id, line
"""


def retry_submission(dsn_or_conn, exception_id: int, *, actor: str, at: datetime) -> dict:
    """Send a rejected credit note / inventory update again after the cause was fixed on Amazon's side.

    The line's FAILED submissions go back to PENDING with the same idempotency key and credit-note id
    (attempts kept), so the next sync run resubmits exactly the same document and never a second one.
    Lines that share the credit note (one note per returns notice) go back with it: a credit note is
    resubmitted whole or not at all. Their open AMAZON_REJECTED exceptions are resolved too.
    """
    actor = required(actor, "actor")
    with unit_of_work(dsn_or_conn) as conn:
        row = lock_open(conn, exception_id, types=offering("retry"), action="retry")
        if row["return_id"] is None or row["line"] is None:
            raise ExceptionActionError(f"cannot retry exception {exception_id}: it names no return line")
        with conn.cursor(row_factory=dict_row) as cur:
            reset = cur.execute(_RETRY_RESET_SQL, {"rid": row["return_id"], "line": row["line"]}).fetchall()
        if not reset:
            states = conn.execute(
                "SELECT kind || '=' || status FROM ledger.amazon_submission"
                " WHERE return_id = %s AND line = %s"
                " ORDER BY kind",
                (row["return_id"], row["line"]),
            ).fetchall()
            raise ExceptionActionError(
                f"cannot retry exception {exception_id}: line {row['subject_key']} has no FAILED submission"
                f" (submissions: {', '.join(s[0] for s in states) or 'none'})"
            )
        lines = sorted({(r["return_id"], r["line"]) for r in reset})
        batch = f"manual:retry:{exception_id}"
        moved = conn.execute(
            _RETRY_LINES_SQL,
            {
                "rid": [x[0] for x in lines],
                "line": [x[1] for x in lines],
                "at": at,
                "batch": batch,
                "detail": json.dumps({"actor": actor, "exception_id": exception_id}),
            },
        ).fetchall()
        why = f"retry requested by {actor}: {len(reset)} submission(s) back to PENDING for the next sync run"
        out = close(conn, exception_id, status="resolved", actor=actor, resolution=why, at=at)
        siblings = conn.execute(
            "UPDATE ledger.exception e SET status = 'resolved', resolved_at = %(at)s,"
            " resolved_by = %(actor)s,"
            " resolution = %(why)s"
            " FROM unnest(%(rid)s::text[], %(line)s::int[]) AS l(return_id, line)"
            " WHERE e.status = 'open' AND e.type = 'AMAZON_REJECTED' AND e.return_id = l.return_id"
            " AND e.line = l.line AND e.exception_id <> %(id)s RETURNING e.exception_id",
            {
                "at": at,
                "actor": actor,
                "why": f"{why} (with exception {exception_id})",
                "rid": [x[0] for x in lines],
                "line": [x[1] for x in lines],
                "id": exception_id,
            },
        ).fetchall()
        detail = {
            "type": row["type"],
            "subject_key": row["subject_key"],
            "submissions": [
                {
                    "idempotency_key": r["idempotency_key"],
                    "kind": r["kind"],
                    "document_id": r["document_id"],
                    "attempts": r["attempts"],
                    "last_error": r["last_error"],
                }
                for r in reset
            ],
            "lines_back_to_dispositioned": [line_subject(*m) for m in moved],
            "also_resolved": [s[0] for s in siblings],
        }
        record_one(
            conn,
            at=at,
            actor=actor,
            action="exception.retry",
            subject=exception_subject(exception_id),
            detail=detail,
        )
        for s in siblings:
            record_one(
                conn,
                at=at,
                actor=actor,
                action="exception.retry",
                subject=exception_subject(s[0]),
                detail={"with_exception": exception_id, "why": why},
            )
    out.update(
        {
            "submissions_reset": [r["idempotency_key"] for r in reset],
            "lines_reset": [line_subject(*m) for m in moved],
            "also_resolved": [s[0] for s in siblings],
        }
    )
    return out
