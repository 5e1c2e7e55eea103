"""Reading the exception queue: the listing people filter (owner team, type, status, age, SLA) and
everything about one exception that a person needs to act on it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from returnledger.exception_queue.queue import ExceptionNotFound, exception_columns, exception_subject
from returnledger.exception_queue.sla import SLA_CTE, overdue_sql, sla_params
from returnledger.exception_types import is_known, kind
from returnledger.models import ExceptionStatus

_LIST_SQL = f"""
WITH {SLA_CTE}
SELECT {exception_columns("e")},
       sla.sla_days, sla.what_to_do,
       floor(extract(epoch FROM (COALESCE(e.resolved_at, %(as_of)s) - e.opened_at)) / 86400)::int AS age_days,
       e.opened_at + make_interval(days => sla.sla_days) AS sla_due_at,
       {overdue_sql("e", "COALESCE(e.resolved_at, %(as_of)s)")} AS sla_breached
FROM ledger.exception e
JOIN sla ON sla.type = e.type
WHERE (%(owner)s::text IS NULL OR e.owner = %(owner)s)
  AND (%(type)s::text IS NULL OR e.type = %(type)s)
  AND (%(status)s::text IS NULL OR e.status = %(status)s)
  AND (%(min_age)s::int IS NULL
       OR COALESCE(e.resolved_at, %(as_of)s) - e.opened_at >= make_interval(days => %(min_age)s::int))
ORDER BY (e.status = 'open') DESC, e.opened_at, e.exception_id
LIMIT %(limit)s
"""

_DETAIL_SQL = f"""
WITH {SLA_CTE}
SELECT {exception_columns("e")}, sla.sla_days, sla.what_to_do
FROM ledger.exception e LEFT JOIN sla ON sla.type = e.type
WHERE e.exception_id = %(id)s
"""


def list_exceptions(
    conn: psycopg.Connection,
    *,
    owner: str | None = None,
    type: str | None = None,
    status: str | None = None,
    min_age_days: int | None = None,
    as_of: datetime,
    limit: int = 500,
) -> list[dict]:
    """The queue as people see it: open first, oldest first; age and SLA breach measured at ``as_of``.

    ``age_days`` of a closed exception is how long it stayed open. The SLA comes from ledger.owner_team,
    else owners.yaml (``exception_queue.sla``).
    """
    if status is not None and status not in {s.value for s in ExceptionStatus}:
        raise ValueError(f"unknown status {status!r}: use open, resolved or dismissed")
    if type is not None and not is_known(type):
        raise ValueError(f"unknown exception type {type!r}")
    params = {
        **sla_params(),
        "as_of": as_of,
        "owner": owner,
        "type": None if type is None else str(type),
        "status": status,
        "min_age": min_age_days,
        "limit": limit,
    }
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(_LIST_SQL, params).fetchall()


def exception_detail(conn: psycopg.Connection, exception_id: int) -> dict:
    """Everything a person needs to act on one exception: the exception, the line and its returns notice,
    the line's history, the raw ReBound payloads, held events, Amazon submissions, the Amazon return
    record and the audit trail."""
    with conn.cursor(row_factory=dict_row) as cur:
        exc = cur.execute(_DETAIL_SQL, {**sla_params(), "id": exception_id}).fetchone()
        if exc is None:
            raise ExceptionNotFound(f"exception {exception_id} does not exist")
        rid, line = exc["return_id"], exc["line"]
        sections = kind(exc["type"]).sections  # the parts only some types show (the registry's)
        out: dict[str, Any] = {
            "exception": exc,
            "return_order": None,
            "line": None,
            "history": [],
            "raw_events": [],
            "held_events": [],
            "submissions": [],
            "amazon_return": None,
            "audit": [],
        }
        if rid is not None:
            out["return_order"] = cur.execute(
                "SELECT return_id, order_reference, created_at, returns_notice, rma_id, vret, source,"
                " amazon_return_id FROM ledger.return_order WHERE return_id = %s",
                (rid,),
            ).fetchone()
        if rid is not None and line is not None:
            out["line"] = cur.execute(
                "SELECT * FROM ledger.return_line WHERE return_id = %s AND line = %s", (rid, line)
            ).fetchone()
            out["history"] = cur.execute(
                "SELECT history_id, from_state, to_state, event_id, cause, batch_id, at, detail"
                " FROM ledger.line_history WHERE return_id = %s AND line = %s ORDER BY at, history_id",
                (rid, line),
            ).fetchall()
            out["submissions"] = cur.execute(
                "SELECT submission_id, idempotency_key, kind, sku, asin, quantity, unit_amount, currency,"
                " document_id, status, transaction_id, attempts, last_error, created_at, submitted_at,"
                " resolved_at FROM ledger.amazon_submission WHERE return_id = %s AND line = %s"
                " ORDER BY kind",
                (rid, line),
            ).fetchall()
            if "send_log" in sections:
                # the send log: every HTTP attempt of the line's submissions, what Amazon answered
                out["send_log"] = cur.execute(
                    "SELECT a.attempt_id, a.kind, a.document_id, a.attempt, a.http_status, a.outcome,"
                    " a.transaction_id, a.errors, a.request_sha256, a.claimed_by, a.batch_id, a.at, a.sent_at"
                    " FROM ledger.submission_attempt a WHERE a.submission_ids && ARRAY(SELECT submission_id"
                    " FROM ledger.amazon_submission WHERE return_id = %s AND line = %s)::bigint[]"
                    " ORDER BY a.attempt_id",
                    (rid, line),
                ).fetchall()
                out["credit_note"] = cur.execute(
                    "SELECT n.* FROM ledger.credit_note n WHERE n.credit_note_id IN (SELECT document_id"
                    " FROM ledger.amazon_submission WHERE return_id = %s AND line = %s)",
                    (rid, line),
                ).fetchall()
        out["held_events"] = cur.execute(
            "SELECT raw_id, return_id, line, reason, exception_id, held_at FROM ledger.held_event"
            " WHERE exception_id = %(id)s OR (return_id = %(rid)s AND (%(line)s::int IS NULL"
            " OR line IS NULL OR line = %(line)s)) ORDER BY held_at, raw_id",
            {"id": exception_id, "rid": rid, "line": line},
        ).fetchall()
        # raw payloads: the exception's own event, held events, and every event of the line (or return);
        # for a type showing "event_bodies" every body of the event id. Bytes the payload column could not
        # hold as received are shown as stored (bytea, escape format) with the reason.
        conflict_of = (
            exc["subject_key"][len("event:") :]
            if "event_bodies" in sections and exc["subject_key"].startswith("event:")
            else None
        )
        out["raw_events"] = cur.execute(
            "SELECT raw_id, r.event_key, r.event_id, r.payload, r.delivered_at, r.received_at, r.batch_id,"
            " r.deliveries,"
            " COALESCE(o.status, 'NEW') AS status, o.detail AS status_detail,"
            " r.body_problem, encode(r.body, 'escape') AS body_as_received"
            " FROM ledger.raw_event r LEFT JOIN ledger.event_outcome o USING (raw_id)"
            " WHERE raw_id = %(raw)s"
            "    OR raw_id IN (SELECT raw_id FROM ledger.held_event WHERE exception_id = %(id)s)"
            "    OR raw_id IN (SELECT raw_id FROM ledger.event_conflict WHERE event_id = %(eid)s)"
            "    OR (%(rid)s::text IS NOT NULL AND r.return_id = %(rid)s"
            "        AND (%(line)s::int IS NULL OR NOT (r.payload ? 'line')"
            "             OR r.payload->>'line' = %(line)s::text))"
            " ORDER BY r.delivered_at NULLS LAST, raw_id",
            {"raw": exc["raw_id"], "id": exception_id, "rid": rid, "line": line, "eid": conflict_of},
        ).fetchall()
        if "rejected_return_orders" in sections:
            out["rejected_return_orders"] = cur.execute(
                "SELECT rejected_id, return_id, problems, payload,"
                " encode(body, 'escape') AS body_as_received,"
                " first_seen_at, last_seen_at, batch_id, cleared_at FROM ledger.return_order_rejected"
                " WHERE return_id = %(rid)s OR (%(rid)s::text IS NULL AND %(key)s LIKE 'order:?%%'"
                "      AND 'order:?' || body_md5 = %(key)s)"
                " ORDER BY last_seen_at DESC, rejected_id",
                {"rid": rid, "key": exc["subject_key"]},
            ).fetchall()
        if exc["amazon_return_id"] is not None:
            out["amazon_return"] = cur.execute(
                "SELECT * FROM ledger.amazon_return WHERE amazon_return_id = %s", (exc["amazon_return_id"],)
            ).fetchone()
        out["audit"] = cur.execute(
            "SELECT audit_id, at, actor, action, subject, detail FROM ledger.audit_log WHERE subject = %s"
            " ORDER BY at, audit_id",
            (exception_subject(exception_id),),
        ).fetchall()
    return out
