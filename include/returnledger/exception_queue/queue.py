"""The exception queue: raise once, with the owner team from configuration.

Owners and SLAs come from ``ledger.owner_team`` (loaded from
include/reference/owners.yaml). The partial unique index
``exception_open_once`` guarantees one open exception per type and subject,
so raising is idempotent: a rerun or a second detector adds nothing.

People then work the queue (console page, ``returnledger exceptions ...``):
resolve, dismiss, retry a rejected credit note, fix the cause and
resolve in one step (add the reason mapping, add the SKU), or keep one body
of an event id ReBound sent twice with different contents (EVENT_CONFLICT).
Each action is one transaction that also writes ``ledger.audit_log``; the
sync releases held events on its next run, and events an action sends back
(``replay_events``: a resolved INVALID_EVENT or INVALID_RETURN_ORDER, a kept
body) are validated and applied by that run like a new delivery.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Iterator

import psycopg
from psycopg.rows import dict_row

from returnledger.models import ExceptionType

DEFAULT_OWNERS = {  # used only when owners.yaml has not been loaded (design.md defaults)
    "UNMAPPED_REASON_CODE": "operations", "SKU_MISMATCH": "operations", "INVALID_EVENT": "integration",
    "OUT_OF_SEQUENCE": "integration", "QUANTITY_MISMATCH": "warehouse", "AMAZON_REJECTED": "integration",
    "CREDIT_MISSING": "finance", "DARK_RETURN": "warehouse", "CREDIT_MISMATCH": "finance",
    "SYNC_STALLED": "integration", "EVENT_CONFLICT": "integration", "INVALID_RETURN_ORDER": "integration",
}


@dataclass(frozen=True)
class NewException:
    type: ExceptionType
    subject_key: str          # 'RID|LINE', an amazon_return_id, or 'raw:<raw_id>'
    detail: str
    return_id: str | None = None
    line: int | None = None
    sku: str | None = None
    amazon_return_id: str | None = None
    raw_id: int | None = None


def line_subject(return_id: str, line: int) -> str:
    return f"{return_id}|{line}"


def event_subject(event_id: str) -> str:
    """Subject of an EVENT_CONFLICT: the event id that arrived with more than one body."""
    return f"event:{event_id}"


def order_subject(return_id: str) -> str:
    """Subject of an INVALID_RETURN_ORDER: the return whose order failed its own checks."""
    return f"order:{return_id}"


_REPLAY_SQL = """
WITH target AS (
    SELECT x.raw_id FROM unnest(%(ids)s::bigint[]) AS x(raw_id)
    LEFT JOIN ledger.event_outcome o USING (raw_id)
    WHERE o.status IS NULL OR o.status IN ('HELD', 'INVALID')
), held AS (
    DELETE FROM ledger.held_event h USING target t WHERE h.raw_id = t.raw_id
), failed AS (
    DELETE FROM ledger.validation_failure f USING target t WHERE f.raw_id = t.raw_id
), decided AS (
    DELETE FROM ledger.event_outcome o USING target t WHERE o.raw_id = t.raw_id
)
SELECT count(*) FROM target
"""


def replay_events(conn: psycopg.Connection, raw_ids: list[int]) -> int:
    """Send held or invalid raw events back through the sync: the next run validates them again and, if
    they pass, applies them (the same path a new delivery takes). The raw rows are untouched; applied
    events never go back. Returns how many events will be examined again."""
    if not raw_ids:
        return 0
    return conn.execute(_REPLAY_SQL, {"ids": list(raw_ids)}).fetchone()[0]


_RAISE_SQL = """
INSERT INTO ledger.exception (type, owner, subject_key, return_id, line, sku, amazon_return_id, raw_id,
                              detail, opened_at, opened_by_batch)
SELECT x.type, COALESCE(o.owner, x.default_owner), x.subject_key, x.return_id, x.line, x.sku,
       x.amazon_return_id, x.raw_id, x.detail, %(at)s, %(batch)s
FROM unnest(%(type)s::text[], %(default_owner)s::text[], %(subject_key)s::text[], %(return_id)s::text[],
            %(line)s::int[], %(sku)s::text[], %(amazon_return_id)s::text[], %(raw_id)s::bigint[],
            %(detail)s::text[])
     AS x(type, default_owner, subject_key, return_id, line, sku, amazon_return_id, raw_id, detail)
LEFT JOIN ledger.owner_team o ON o.exception_type = x.type
ON CONFLICT (type, subject_key) WHERE status = 'open' DO NOTHING
"""


def raise_exceptions(conn: psycopg.Connection, items: list[NewException], *, at: datetime,
                     batch_id: str) -> int:
    """Open the exceptions that are not already open; returns how many were opened."""
    if not items:
        return 0
    cols = {
        "type": [str(i.type) for i in items],
        "default_owner": [DEFAULT_OWNERS[str(i.type)] for i in items],
        "subject_key": [i.subject_key for i in items],
        "return_id": [i.return_id for i in items],
        "line": [i.line for i in items],
        "sku": [i.sku for i in items],
        "amazon_return_id": [i.amazon_return_id for i in items],
        "raw_id": [i.raw_id for i in items],
        "detail": [i.detail for i in items],
    }
    cur = conn.execute(_RAISE_SQL, {**cols, "at": at, "batch": batch_id})
    return cur.rowcount


def open_exception_ids(conn: psycopg.Connection, type_: ExceptionType, subject_keys: list[str]) -> dict[str, int]:
    """subject_key -> exception_id of the open exceptions of one type."""
    rows = conn.execute(
        "SELECT subject_key, exception_id FROM ledger.exception"
        " WHERE status = 'open' AND type = %s AND subject_key = ANY(%s)",
        (str(type_), subject_keys),
    ).fetchall()
    return dict(rows)


def resolve_open(conn: psycopg.Connection, type_: ExceptionType, subject_keys: list[str], *, at: datetime,
                 actor: str, resolution: str) -> int:
    """Mark open exceptions of one type and subjects resolved (system resolutions, e.g. a hold released)."""
    if not subject_keys:
        return 0
    cur = conn.execute(
        "UPDATE ledger.exception SET status = 'resolved', resolved_at = %s, resolved_by = %s, resolution = %s"
        " WHERE status = 'open' AND type = %s AND subject_key IN (SELECT unnest(%s::text[]))",
        (at, actor, resolution, str(type_), subject_keys),
    )
    return cur.rowcount


# --- The human lifecycle: resolve, dismiss, retry, fix-and-resolve ----------------------------------
#
# People act on exceptions from the console (plugins/) or the CLI. Every action locks the exception
# row, refuses a transition that makes no sense (resolving twice, retrying something Amazon did not
# reject), and writes who / when / what / why to ledger.audit_log in the same transaction.

#: SLA in days per type when owners.yaml has not been loaded (same values as include/reference/owners.yaml)
DEFAULT_SLA_DAYS = {
    "UNMAPPED_REASON_CODE": 2, "SKU_MISMATCH": 2, "INVALID_EVENT": 3, "OUT_OF_SEQUENCE": 3,
    "QUANTITY_MISMATCH": 5, "AMAZON_REJECTED": 2, "CREDIT_MISSING": 5, "DARK_RETURN": 3,
    "CREDIT_MISMATCH": 5, "SYNC_STALLED": 1, "EVENT_CONFLICT": 2, "INVALID_RETURN_ORDER": 2,
}

_EXC_COLUMNS = ("exception_id, type, owner, status, subject_key, return_id, line, sku, amazon_return_id, raw_id,"
                " detail, opened_at, opened_by_batch, resolved_at, resolved_by, resolution")


class ExceptionNotFound(LookupError):
    """No exception with that id."""


class ExceptionActionError(ValueError):
    """The requested action does not apply to the exception in its current state."""


@contextmanager
def _unit_of_work(dsn_or_conn) -> Iterator[psycopg.Connection]:
    """A transaction on the caller's connection (a savepoint if one is open), or on a new one from a DSN."""
    if isinstance(dsn_or_conn, psycopg.Connection):
        with dsn_or_conn.transaction():
            yield dsn_or_conn
        return
    from returnledger.store.db import connect

    with connect(dsn_or_conn) as conn:
        with conn.transaction():
            yield conn


def _require(value: str | None, what: str) -> str:
    if value is None or not str(value).strip():
        raise ExceptionActionError(f"{what} must not be empty")
    return str(value).strip()


def _lock_open(conn: psycopg.Connection, exception_id: int, *, types: set[str] | None = None,
               action: str) -> dict:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(f"SELECT {_EXC_COLUMNS} FROM ledger.exception WHERE exception_id = %s FOR UPDATE",
                          (exception_id,)).fetchone()
    if row is None:
        raise ExceptionNotFound(f"exception {exception_id} does not exist")
    if row["status"] != "open":
        raise ExceptionActionError(
            f"cannot {action} exception {exception_id}: it is already {row['status']}"
            f" (by {row['resolved_by']} at {row['resolved_at']:%Y-%m-%d %H:%M} UTC: {row['resolution']})")
    if types is not None and row["type"] not in types:
        raise ExceptionActionError(
            f"cannot {action} exception {exception_id}: it is {row['type']}, this action applies to "
            + " / ".join(sorted(types)))
    return row


def _close(conn: psycopg.Connection, exception_id: int, *, status: str, actor: str, resolution: str,
           at: datetime) -> dict:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "UPDATE ledger.exception SET status = %s, resolved_at = %s, resolved_by = %s, resolution = %s"
            f" WHERE exception_id = %s RETURNING {_EXC_COLUMNS}",
            (status, at, actor, resolution, exception_id)).fetchone()


def _audit(conn: psycopg.Connection, *, at: datetime, actor: str, action: str, subject: str, detail: dict) -> None:
    conn.execute("INSERT INTO ledger.audit_log (at, actor, action, subject, detail) VALUES (%s, %s, %s, %s, %s)",
                 (at, actor, action, subject, json.dumps(detail, default=str)))


def exception_subject(exception_id: int) -> str:
    """The audit_log subject of one exception."""
    return f"exception:{exception_id}"


def resolve_exception(dsn_or_conn, exception_id: int, *, actor: str, resolution: str, at: datetime) -> dict:
    """Record that a person fixed the cause. Holding exceptions release their events on the next sync run
    (the sync raises the exception again if the cause is in fact still there).

    INVALID_EVENT: the event is examined again by the next sync run (validated, then applied if it now
    passes). INVALID_RETURN_ORDER: the return's held events are examined again. EVENT_CONFLICT is resolved
    by choosing a body: the resolution must say which one ("keep raw <raw_id>"), see ``pick_event_body``.
    """
    actor, resolution = _require(actor, "actor"), _require(resolution, "resolution")
    with _unit_of_work(dsn_or_conn) as conn:
        row = _lock_open(conn, exception_id, action="resolve")
        if row["type"] == ExceptionType.EVENT_CONFLICT:
            return _pick_body(conn, row, _chosen_raw_id(conn, row, resolution), actor=actor, at=at,
                              why=resolution)
        out = _close(conn, exception_id, status="resolved", actor=actor, resolution=resolution, at=at)
        replayed = _replay_for(conn, row)
        _audit(conn, at=at, actor=actor, action="exception.resolve", subject=exception_subject(exception_id),
               detail={"type": row["type"], "subject_key": row["subject_key"], "why": resolution,
                       **({"replayed_events": replayed} if replayed else {})})
    if replayed:
        out["replayed_events"] = replayed
    return out


def dismiss_exception(dsn_or_conn, exception_id: int, *, actor: str, reason: str, at: datetime) -> dict:
    """Close an exception that needs no fix (a known test return, a duplicate report); the reason is kept.

    A dismissed INVALID_EVENT stays invalid for good. The held events of a dismissed INVALID_RETURN_ORDER
    are examined again (they wait again if the order still fails). An EVENT_CONFLICT cannot be dismissed:
    its line waits until one of the bodies is chosen.
    """
    actor, reason = _require(actor, "actor"), _require(reason, "reason")
    with _unit_of_work(dsn_or_conn) as conn:
        row = _lock_open(conn, exception_id, action="dismiss")
        if row["type"] == ExceptionType.EVENT_CONFLICT:
            raise ExceptionActionError(
                f"cannot dismiss exception {exception_id}: an EVENT_CONFLICT holds its line until one body is "
                f"chosen; {_versions_hint(conn, row)}")
        out = _close(conn, exception_id, status="dismissed", actor=actor, resolution=reason, at=at)
        replayed = _replay_for(conn, row) if row["type"] == ExceptionType.INVALID_RETURN_ORDER else 0
        _audit(conn, at=at, actor=actor, action="exception.dismiss", subject=exception_subject(exception_id),
               detail={"type": row["type"], "subject_key": row["subject_key"], "why": reason,
                       **({"replayed_events": replayed} if replayed else {})})
    if replayed:
        out["replayed_events"] = replayed
    return out


def _replay_for(conn: psycopg.Connection, row: dict) -> int:
    """Events a closed exception sent back through the sync (same path as a new delivery)."""
    if row["type"] == ExceptionType.INVALID_EVENT and row["raw_id"] is not None:
        return replay_events(conn, [row["raw_id"]])
    if row["type"] == ExceptionType.INVALID_RETURN_ORDER:
        ids = [r[0] for r in conn.execute(
            "SELECT raw_id FROM ledger.held_event WHERE reason = 'INVALID_RETURN_ORDER'"
            " AND (exception_id = %s OR (%s::text IS NOT NULL AND return_id = %s))",
            (row["exception_id"], row["return_id"], row["return_id"]))]
        return replay_events(conn, ids)
    return 0


# --- EVENT_CONFLICT: pick the body that is right ------------------------------------------------------

_VERSIONS_SQL = """
SELECT c.raw_id, c.chosen, COALESCE(o.status, 'NEW') AS status, r.body_problem
FROM ledger.event_conflict c JOIN ledger.raw_event r USING (raw_id)
LEFT JOIN ledger.event_outcome o USING (raw_id)
WHERE c.event_id = %s ORDER BY c.raw_id FOR UPDATE OF c
"""


def _conflict_event_id(row: dict) -> str:
    key = row["subject_key"]
    if not key.startswith("event:"):
        raise ExceptionActionError(f"exception {row['exception_id']} names no event id ({key!r})")
    return key[len("event:"):]


def _versions(conn: psycopg.Connection, row: dict) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(_VERSIONS_SQL, (_conflict_event_id(row),)).fetchall()


def _versions_hint(conn: psycopg.Connection, row: dict) -> str:
    open_ = [v for v in _versions(conn, row) if v["chosen"] is not False]
    listed = ", ".join(f"raw {v['raw_id']} ({v['status'].lower()})" for v in open_) or "none stored"
    return (f"pick one with `returnledger exceptions pick {row['exception_id']} <raw_id>` or resolve with "
            f"'keep raw <raw_id>' (bodies: {listed})")


def _chosen_raw_id(conn: psycopg.Connection, row: dict, text: str) -> int:
    """The raw id a resolution text chooses: 'keep raw 123', or the one raw id it names."""
    import re

    keep = re.search(r"\bkeep\s+raw\s*[:#]?\s*(\d+)", text, re.IGNORECASE)
    if keep:
        return int(keep.group(1))
    named = {int(m) for m in re.findall(r"\braw\s*[:#]?\s*(\d+)", text, re.IGNORECASE)}
    if len(named) == 1:
        return named.pop()
    raise ExceptionActionError(
        f"cannot resolve exception {row['exception_id']} without choosing a body: {_versions_hint(conn, row)}")


def pick_event_body(dsn_or_conn, exception_id: int, raw_id: int, *, actor: str, at: datetime,
                    why: str | None = None) -> dict:
    """Resolve an EVENT_CONFLICT by choosing the body that is right, atomically.

    The chosen body goes on: if it was held for the conflict it is examined again by the next sync run
    (validated, then applied), and the line's other held events follow through the usual release. Every
    other body of the event id is SUPERSEDED (kept, never applied; an open INVALID_EVENT of one is
    resolved). A body the ledger already applied before the conflict was seen cannot be taken back, so
    when one was applied only that one can be chosen.
    """
    actor = _require(actor, "actor")
    with _unit_of_work(dsn_or_conn) as conn:
        row = _lock_open(conn, exception_id, types={"EVENT_CONFLICT"}, action="pick a body for")
        return _pick_body(conn, row, int(raw_id), actor=actor, at=at, why=why)


def _pick_body(conn: psycopg.Connection, row: dict, raw_id: int, *, actor: str, at: datetime,
               why: str | None) -> dict:
    exception_id, event_id = row["exception_id"], _conflict_event_id(row)
    undecided = [v for v in _versions(conn, row) if v["chosen"] is not False]
    if raw_id not in {v["raw_id"] for v in undecided}:
        raise ExceptionActionError(f"cannot pick raw {raw_id} for exception {exception_id}: it is not an open "
                                   f"body of event {event_id!r}; {_versions_hint(conn, row)}")
    applied = [v["raw_id"] for v in undecided if v["raw_id"] != raw_id and v["status"] == "APPLIED"]
    if applied:
        raise ExceptionActionError(
            f"cannot pick raw {raw_id} for exception {exception_id}: raw {applied[0]} was applied to the line "
            f"before the conflict was seen and cannot be taken back; pick raw {applied[0]} and ask ReBound "
            f"to send a correcting event under a new id")
    chosen = next(v for v in undecided if v["raw_id"] == raw_id)
    losers = [v["raw_id"] for v in undecided if v["raw_id"] != raw_id]
    batch = f"manual:pick:{exception_id}"
    conn.execute("UPDATE ledger.event_conflict SET chosen = (raw_id = %s), decided_at = %s, decided_by = %s"
                 " WHERE event_id = %s AND chosen IS NOT FALSE", (raw_id, at, actor, event_id))
    if losers:
        detail = f"superseded: raw {raw_id} was chosen for event {event_id} (exception {exception_id})"
        conn.execute("DELETE FROM ledger.held_event WHERE raw_id = ANY(%s)", (losers,))
        conn.execute("""INSERT INTO ledger.event_outcome (raw_id, status, detail, batch_id, decided_at)
                        SELECT x, 'SUPERSEDED', %s, %s, %s FROM unnest(%s::bigint[]) AS x
                        ON CONFLICT (raw_id) DO UPDATE SET status = 'SUPERSEDED', detail = EXCLUDED.detail,
                               batch_id = EXCLUDED.batch_id, decided_at = EXCLUDED.decided_at""",
                     (detail, batch, at, losers))
        conn.execute("UPDATE ledger.exception SET status = 'resolved', resolved_at = %s, resolved_by = %s,"
                     " resolution = %s WHERE status = 'open' AND type = 'INVALID_EVENT' AND raw_id = ANY(%s)",
                     (at, actor, detail, losers))
    replayed = replay_events(conn, [raw_id]) if chosen["status"] in ("HELD", "NEW") else 0
    text = f"kept raw {raw_id}" + (f"; superseded raw {', '.join(map(str, losers))}" if losers else "")
    if why and why.strip():
        text += f": {why.strip()}"
    out = _close(conn, exception_id, status="resolved", actor=actor, resolution=text, at=at)
    _audit(conn, at=at, actor=actor, action="exception.pick_body", subject=exception_subject(exception_id),
           detail={"type": row["type"], "subject_key": row["subject_key"], "event_id": event_id,
                   "chosen_raw_id": raw_id, "superseded_raw_ids": losers, "why": why})
    out.update({"chosen_raw_id": raw_id, "superseded_raw_ids": losers, "replayed_events": replayed})
    return out


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
SELECT m.return_id, m.line, 'REJECTED', 'DISPOSITIONED', NULL, 'RETRY_SUBMISSION', %(batch)s, %(at)s, %(detail)s
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
    actor = _require(actor, "actor")
    with _unit_of_work(dsn_or_conn) as conn:
        row = _lock_open(conn, exception_id, types={"AMAZON_REJECTED"}, action="retry")
        if row["return_id"] is None or row["line"] is None:
            raise ExceptionActionError(f"cannot retry exception {exception_id}: it names no return line")
        with conn.cursor(row_factory=dict_row) as cur:
            reset = cur.execute(_RETRY_RESET_SQL, {"rid": row["return_id"], "line": row["line"]}).fetchall()
        if not reset:
            states = conn.execute(
                "SELECT kind || '=' || status FROM ledger.amazon_submission WHERE return_id = %s AND line = %s"
                " ORDER BY kind", (row["return_id"], row["line"])).fetchall()
            raise ExceptionActionError(
                f"cannot retry exception {exception_id}: line {row['subject_key']} has no FAILED submission"
                f" (submissions: {', '.join(s[0] for s in states) or 'none'})")
        lines = sorted({(r["return_id"], r["line"]) for r in reset})
        batch = f"manual:retry:{exception_id}"
        moved = conn.execute(_RETRY_LINES_SQL, {
            "rid": [x[0] for x in lines], "line": [x[1] for x in lines], "at": at, "batch": batch,
            "detail": json.dumps({"actor": actor, "exception_id": exception_id})}).fetchall()
        why = f"retry requested by {actor}: {len(reset)} submission(s) back to PENDING for the next sync run"
        out = _close(conn, exception_id, status="resolved", actor=actor, resolution=why, at=at)
        siblings = conn.execute(
            "UPDATE ledger.exception e SET status = 'resolved', resolved_at = %(at)s, resolved_by = %(actor)s,"
            " resolution = %(why)s"
            " FROM unnest(%(rid)s::text[], %(line)s::int[]) AS l(return_id, line)"
            " WHERE e.status = 'open' AND e.type = 'AMAZON_REJECTED' AND e.return_id = l.return_id"
            " AND e.line = l.line AND e.exception_id <> %(id)s RETURNING e.exception_id",
            {"at": at, "actor": actor, "why": f"{why} (with exception {exception_id})",
             "rid": [x[0] for x in lines], "line": [x[1] for x in lines], "id": exception_id}).fetchall()
        detail = {"type": row["type"], "subject_key": row["subject_key"],
                  "submissions": [{"idempotency_key": r["idempotency_key"], "kind": r["kind"],
                                   "document_id": r["document_id"], "attempts": r["attempts"],
                                   "last_error": r["last_error"]} for r in reset],
                  "lines_back_to_dispositioned": [line_subject(*m) for m in moved],
                  "also_resolved": [s[0] for s in siblings]}
        _audit(conn, at=at, actor=actor, action="exception.retry", subject=exception_subject(exception_id),
               detail=detail)
        for s in siblings:
            _audit(conn, at=at, actor=actor, action="exception.retry", subject=exception_subject(s[0]),
                   detail={"with_exception": exception_id, "why": why})
    out.update({"submissions_reset": [r["idempotency_key"] for r in reset],
                "lines_reset": [line_subject(*m) for m in moved],
                "also_resolved": [s[0] for s in siblings]})
    return out


def _line_reason(conn: psycopg.Connection, row: dict) -> str:
    if row["return_id"] is None or row["line"] is None:
        raise ExceptionActionError(f"exception {row['exception_id']} names no return line")
    found = conn.execute("SELECT reason FROM ledger.return_line WHERE return_id = %s AND line = %s",
                         (row["return_id"], row["line"])).fetchone()
    if found is None:  # the line may be known only from the return order's payload
        found = conn.execute(
            "SELECT l->>'reason' FROM ledger.return_order o, jsonb_array_elements(o.payload->'lines') l"
            " WHERE o.return_id = %s AND (l->>'line')::int = %s", (row["return_id"], row["line"])).fetchone()
    if found is None or not found[0]:
        raise ExceptionActionError(f"exception {row['exception_id']}: the ReBound reason of line "
                                   f"{row['subject_key']} is not in the ledger")
    return found[0]


def resolve_with_mapping(dsn, exception_id: int, amazon_reason: str, *, actor: str, at: datetime) -> dict:
    """Add the missing reason-code mapping and resolve the UNMAPPED_REASON_CODE exception, atomically.

    The held events of every line with that reason are released by the next sync run.
    """
    from returnledger.reference import catalog as reference

    actor, amazon_reason = _require(actor, "actor"), _require(amazon_reason, "amazon_reason")
    with _unit_of_work(dsn) as conn:
        row = _lock_open(conn, exception_id, types={"UNMAPPED_REASON_CODE"}, action="resolve with a mapping")
        rebound_reason = _line_reason(conn, row)
        reference.add_reason_mapping(conn, rebound_reason, amazon_reason, at=at, actor=actor,
                                     why=f"resolves exception {exception_id}")
        why = f"mapped ReBound reason {rebound_reason} to {amazon_reason}"
        out = _close(conn, exception_id, status="resolved", actor=actor, resolution=why, at=at)
        _audit(conn, at=at, actor=actor, action="exception.resolve_with_mapping",
               subject=exception_subject(exception_id),
               detail={"type": row["type"], "subject_key": row["subject_key"], "why": why,
                       "rebound_reason": rebound_reason, "amazon_reason": amazon_reason})
    out["mapping"] = {"rebound_reason": rebound_reason, "amazon_reason": amazon_reason}
    return out


def resolve_with_sku(dsn, exception_id: int, asin: str, unit_cost, available: int, *, actor: str,
                     at: datetime) -> dict:
    """Add the missing SKU to the catalog and resolve the SKU_MISMATCH exception, atomically."""
    from returnledger.reference import catalog as reference

    actor, asin = _require(actor, "actor"), _require(asin, "asin")
    with _unit_of_work(dsn) as conn:
        row = _lock_open(conn, exception_id, types={"SKU_MISMATCH"}, action="resolve with a SKU")
        sku = row["sku"]
        if not sku and row["return_id"] is not None:
            found = conn.execute("SELECT sku FROM ledger.return_line WHERE return_id = %s AND line = %s",
                                 (row["return_id"], row["line"])).fetchone()
            sku = found[0] if found else None
        if not sku:
            raise ExceptionActionError(f"exception {exception_id} names no SKU")
        reference.add_sku(conn, sku, asin, Decimal(str(unit_cost)), int(available), at=at, actor=actor)
        why = f"added SKU {sku} (ASIN {asin}, unit cost {unit_cost}, available {available}) to the catalog"
        out = _close(conn, exception_id, status="resolved", actor=actor, resolution=why, at=at)
        _audit(conn, at=at, actor=actor, action="exception.resolve_with_sku", subject=exception_subject(exception_id),
               detail={"type": row["type"], "subject_key": row["subject_key"], "why": why, "sku": sku,
                       "asin": asin, "unit_cost": str(unit_cost), "available": int(available)})
    out["sku_added"] = {"sku": sku, "asin": asin, "unit_cost": Decimal(str(unit_cost)), "available": int(available)}
    return out


# --- Reading the queue -----------------------------------------------------------------------------

_LIST_SQL = f"""
WITH sla AS (
    SELECT d.type, COALESCE(o.sla_days, d.sla_days) AS sla_days, o.what_to_do
    FROM unnest(%(dtype)s::text[], %(dsla)s::int[]) AS d(type, sla_days)
    LEFT JOIN ledger.owner_team o ON o.exception_type = d.type
)
SELECT {", ".join("e." + c.strip() for c in _EXC_COLUMNS.split(","))},
       sla.sla_days, sla.what_to_do,
       floor(extract(epoch FROM (COALESCE(e.resolved_at, %(as_of)s) - e.opened_at)) / 86400)::int AS age_days,
       e.opened_at + make_interval(days => sla.sla_days) AS sla_due_at,
       (COALESCE(e.resolved_at, %(as_of)s) > e.opened_at + make_interval(days => sla.sla_days)) AS sla_breached
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


def list_exceptions(conn: psycopg.Connection, *, owner: str | None = None, type: str | None = None,
                    status: str | None = None, min_age_days: int | None = None, as_of: datetime,
                    limit: int = 500) -> list[dict]:
    """The queue as people see it: open first, oldest first; age and SLA breach measured at ``as_of``.

    ``age_days`` of a closed exception is how long it stayed open. The SLA comes from ledger.owner_team
    (owners.yaml), falling back to DEFAULT_SLA_DAYS.
    """
    if status is not None and status not in {"open", "resolved", "dismissed"}:
        raise ValueError(f"unknown status {status!r}: use open, resolved or dismissed")
    if type is not None and type not in DEFAULT_SLA_DAYS:
        raise ValueError(f"unknown exception type {type!r}")
    params = {"dtype": list(DEFAULT_SLA_DAYS), "dsla": list(DEFAULT_SLA_DAYS.values()), "as_of": as_of,
              "owner": owner, "type": None if type is None else str(type), "status": status,
              "min_age": min_age_days, "limit": limit}
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(_LIST_SQL, params).fetchall()


def exception_detail(conn: psycopg.Connection, exception_id: int) -> dict:
    """Everything a person needs to act on one exception: the exception, the line and its returns notice,
    the line's history, the raw ReBound payloads, held events, Amazon submissions, the Amazon return
    record and the audit trail."""
    with conn.cursor(row_factory=dict_row) as cur:
        exc = cur.execute(
            f"SELECT {', '.join('e.' + c.strip() for c in _EXC_COLUMNS.split(','))}, o.sla_days, o.what_to_do"
            " FROM ledger.exception e LEFT JOIN ledger.owner_team o ON o.exception_type = e.type"
            " WHERE e.exception_id = %s", (exception_id,)).fetchone()
        if exc is None:
            raise ExceptionNotFound(f"exception {exception_id} does not exist")
        if exc["sla_days"] is None:
            exc["sla_days"] = DEFAULT_SLA_DAYS.get(exc["type"])
        rid, line = exc["return_id"], exc["line"]
        out: dict[str, Any] = {"exception": exc, "return_order": None, "line": None, "history": [],
                               "raw_events": [], "held_events": [], "submissions": [], "amazon_return": None,
                               "audit": []}
        if rid is not None:
            out["return_order"] = cur.execute(
                "SELECT return_id, order_reference, created_at, returns_notice, rma_id, vret, source,"
                " amazon_return_id FROM ledger.return_order WHERE return_id = %s", (rid,)).fetchone()
        if rid is not None and line is not None:
            out["line"] = cur.execute("SELECT * FROM ledger.return_line WHERE return_id = %s AND line = %s",
                                      (rid, line)).fetchone()
            out["history"] = cur.execute(
                "SELECT history_id, from_state, to_state, event_id, cause, batch_id, at, detail"
                " FROM ledger.line_history WHERE return_id = %s AND line = %s ORDER BY at, history_id",
                (rid, line)).fetchall()
            out["submissions"] = cur.execute(
                "SELECT submission_id, idempotency_key, kind, sku, asin, quantity, unit_amount, currency,"
                " document_id, status, transaction_id, attempts, last_error, created_at, submitted_at,"
                " resolved_at FROM ledger.amazon_submission WHERE return_id = %s AND line = %s"
                " ORDER BY kind", (rid, line)).fetchall()
            if exc["type"] in ("AMAZON_REJECTED", "CREDIT_MISSING", "CREDIT_MISMATCH"):
                # the send log: every HTTP attempt of the line's submissions, what Amazon answered
                out["send_log"] = cur.execute(
                    "SELECT a.attempt_id, a.kind, a.document_id, a.attempt, a.http_status, a.outcome,"
                    " a.transaction_id, a.errors, a.request_sha256, a.claimed_by, a.batch_id, a.at, a.sent_at"
                    " FROM ledger.submission_attempt a WHERE a.submission_ids && ARRAY(SELECT submission_id"
                    " FROM ledger.amazon_submission WHERE return_id = %s AND line = %s)::bigint[]"
                    " ORDER BY a.attempt_id", (rid, line)).fetchall()
                out["credit_note"] = cur.execute(
                    "SELECT n.* FROM ledger.credit_note n WHERE n.credit_note_id IN (SELECT document_id"
                    " FROM ledger.amazon_submission WHERE return_id = %s AND line = %s)", (rid, line)).fetchall()
        out["held_events"] = cur.execute(
            "SELECT raw_id, return_id, line, reason, exception_id, held_at FROM ledger.held_event"
            " WHERE exception_id = %(id)s OR (return_id = %(rid)s AND (%(line)s::int IS NULL"
            " OR line IS NULL OR line = %(line)s)) ORDER BY held_at, raw_id",
            {"id": exception_id, "rid": rid, "line": line}).fetchall()
        # raw payloads: the exception's own event, held events, and every event of the line (or return)
        # raw payloads: the exception's own event, held events, and every event of the line (or return);
        # for an EVENT_CONFLICT every body of the event id. Bytes the payload column could not hold as
        # received are shown as stored (bytea, escape format) with the reason.
        conflict_of = (exc["subject_key"][len("event:"):] if exc["type"] == "EVENT_CONFLICT"
                       and exc["subject_key"].startswith("event:") else None)
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
            {"raw": exc["raw_id"], "id": exception_id, "rid": rid, "line": line, "eid": conflict_of}).fetchall()
        if exc["type"] == "INVALID_RETURN_ORDER":
            out["rejected_return_orders"] = cur.execute(
                "SELECT rejected_id, return_id, problems, payload, encode(body, 'escape') AS body_as_received,"
                " first_seen_at, last_seen_at, batch_id, cleared_at FROM ledger.return_order_rejected"
                " WHERE return_id = %(rid)s OR (%(rid)s::text IS NULL AND %(key)s LIKE 'order:?%%'"
                "      AND 'order:?' || body_md5 = %(key)s)"
                " ORDER BY last_seen_at DESC, rejected_id", {"rid": rid, "key": exc["subject_key"]}).fetchall()
        if exc["amazon_return_id"] is not None:
            out["amazon_return"] = cur.execute("SELECT * FROM ledger.amazon_return WHERE amazon_return_id = %s",
                                               (exc["amazon_return_id"],)).fetchone()
        out["audit"] = cur.execute(
            "SELECT audit_id, at, actor, action, subject, detail FROM ledger.audit_log WHERE subject = %s"
            " ORDER BY at, audit_id", (exception_subject(exception_id),)).fetchall()
    return out


def resolve_over_receipt(dsn_or_conn, exception_id: int, quantity: int, *, actor: str, at: datetime,
                         note: str = "") -> dict:
    """The warehouse resolves an over-receipt (received above announced) by choosing the units to credit.

    The credit was held (recon ON_HOLD) since the receipt; the chosen quantity, between 0 and the units
    received, is stored on the line and the next sync run sends exactly one credit note for it. 0 closes
    the line with nothing owed. The choice is audited.
    """
    actor = _require(actor, "actor")
    try:
        quantity = int(quantity)
    except (TypeError, ValueError):
        raise ExceptionActionError(f"the quantity to credit must be a whole number, got {quantity!r}") from None
    with _unit_of_work(dsn_or_conn) as conn:
        row = _lock_open(conn, exception_id, types={"QUANTITY_MISMATCH"}, action="choose the credit quantity for")
        if row["return_id"] is None or row["line"] is None:
            raise ExceptionActionError(f"exception {exception_id} names no return line")
        line = conn.execute("""SELECT quantity_announced, quantity_received, state, credit_quantity
                                 FROM ledger.return_line WHERE return_id = %s AND line = %s FOR UPDATE""",
                            (row["return_id"], row["line"])).fetchone()
        announced, received, state, chosen = line
        if received is None or received <= announced:
            raise ExceptionActionError(
                f"line {row['subject_key']} received {received} of {announced} announced: only a receipt above "
                "the announced quantity holds the credit; resolve this exception instead")
        if chosen is not None:
            raise ExceptionActionError(f"line {row['subject_key']} already has {chosen} unit(s) chosen to credit")
        if not 0 <= quantity <= received:
            raise ExceptionActionError(f"the quantity to credit must be between 0 and the {received} unit(s) received")
        conn.execute("UPDATE ledger.return_line SET credit_quantity = %s, updated_at = %s"
                     " WHERE return_id = %s AND line = %s", (quantity, at, row["return_id"], row["line"]))
        if quantity == 0 and state == "DISPOSITIONED":
            conn.execute("UPDATE ledger.return_line SET state = 'CLOSED' WHERE return_id = %s AND line = %s",
                         (row["return_id"], row["line"]))
            conn.execute("""INSERT INTO ledger.line_history (return_id, line, from_state, to_state, cause, batch_id, at)
                            VALUES (%s, %s, 'DISPOSITIONED', 'CLOSED', 'NO_CREDIT_CHOSEN', %s, %s)""",
                         (row["return_id"], row["line"], f"manual:over_receipt:{exception_id}", at))
        why = (f"{actor} chose to credit {quantity} of {received} unit(s) received ({announced} announced)"
               + (f": {note}" if note else ""))
        out = _close(conn, exception_id, status="resolved", actor=actor, resolution=why, at=at)
        _audit(conn, at=at, actor=actor, action="exception.credit_quantity", subject=exception_subject(exception_id),
               detail={"type": row["type"], "subject_key": row["subject_key"], "credit_quantity": quantity,
                       "received": received, "announced": announced, "note": note})
    out["credit_quantity"] = quantity
    return out


# --- CLI -------------------------------------------------------------------------------------------

def _cli_now() -> datetime:
    # An operator action happens now: the CLI is the one edge where wall-clock time is the right time.
    from datetime import timezone

    return datetime.now(timezone.utc)


def _cli_actor(args) -> str:
    import getpass

    return args.actor or getpass.getuser()


def _cli_list(args) -> int:
    from returnledger.store.db import connect, resolve_dsn

    with connect(resolve_dsn(getattr(args, "dsn", None))) as conn:
        rows = list_exceptions(conn, owner=args.owner, type=args.type, status=args.status,
                               min_age_days=args.min_age, as_of=_cli_now(), limit=args.limit)
    print(f"{'id':>6}  {'type':<22} {'owner':<12} {'status':<9} {'age':>4} {'sla':<4} subject / detail")
    for r in rows:
        print(f"{r['exception_id']:>6}  {r['type']:<22} {r['owner']:<12} {r['status']:<9} {r['age_days']:>4}"
              f" {'LATE' if r['sla_breached'] and r['status'] == 'open' else '':<4} {r['subject_key']}: {r['detail']}")
    print(f"{len(rows)} exception(s)")
    return 0


def _cli_action(args) -> int:
    from returnledger.store.db import resolve_dsn

    dsn, actor, at = resolve_dsn(getattr(args, "dsn", None)), _cli_actor(args), _cli_now()
    try:
        if args.action == "resolve":
            out = resolve_exception(dsn, args.id, actor=actor, resolution=args.why, at=at)
        elif args.action == "dismiss":
            out = dismiss_exception(dsn, args.id, actor=actor, reason=args.why, at=at)
        elif args.action == "retry":
            out = retry_submission(dsn, args.id, actor=actor, at=at)
        elif args.action == "map":
            out = resolve_with_mapping(dsn, args.id, args.amazon_reason, actor=actor, at=at)
        elif args.action == "sku":
            out = resolve_with_sku(dsn, args.id, args.asin, args.unit_cost, args.available, actor=actor, at=at)
        elif args.action == "pick":
            out = pick_event_body(dsn, args.id, args.raw_id, actor=actor, at=at, why=args.why)
        else:  # pragma: no cover - argparse restricts the choices
            raise SystemExit(f"unknown action {args.action}")
    except (ExceptionNotFound, ExceptionActionError) as exc:
        print(f"refused: {exc}")
        return 2
    print(f"exception {out['exception_id']} {out['status']} by {out['resolved_by']}: {out['resolution']}")
    return 0


def _cli_show(args) -> int:
    from returnledger.store.db import connect, resolve_dsn

    with connect(resolve_dsn(getattr(args, "dsn", None))) as conn:
        try:
            d = exception_detail(conn, args.id)
        except ExceptionNotFound as exc:
            print(str(exc))
            return 2
    print(json.dumps(d, default=str, indent=2))
    return 0


def register_cli(subparsers) -> None:
    """``returnledger exceptions list|show|resolve|dismiss|retry|map|sku|pick``."""
    p = subparsers.add_parser("exceptions", help="work the exception queue")
    sub = p.add_subparsers(dest="exceptions_command", required=True)

    def common(sp):
        sp.add_argument("--dsn", default=None, help="ledger DSN (default: RETURNLEDGER_DSN or embedded)")
        sp.add_argument("--actor", default=None, help="who acts (default: the login name)")

    ls = sub.add_parser("list", help="list exceptions, open and oldest first")
    common(ls)
    ls.add_argument("--owner")
    ls.add_argument("--type", choices=sorted(DEFAULT_SLA_DAYS))
    ls.add_argument("--status", choices=["open", "resolved", "dismissed"])
    ls.add_argument("--min-age", type=int, default=None, help="only exceptions at least this many days old")
    ls.add_argument("--limit", type=int, default=500)
    ls.set_defaults(func=_cli_list)

    show = sub.add_parser("show", help="one exception with its line, history and raw payloads (JSON)")
    common(show)
    show.add_argument("id", type=int)
    show.set_defaults(func=_cli_show)

    for name, help_ in (("resolve", "mark resolved: you fixed the cause"),
                        ("dismiss", "dismiss: nothing to fix")):
        sp = sub.add_parser(name, help=help_)
        common(sp)
        sp.add_argument("id", type=int)
        sp.add_argument("--why", required=True, help="what was done, or why nothing is needed")
        sp.set_defaults(func=_cli_action, action=name)

    rt = sub.add_parser("retry", help="AMAZON_REJECTED: resubmit the same credit note on the next sync run")
    common(rt)
    rt.add_argument("id", type=int)
    rt.set_defaults(func=_cli_action, action="retry")

    mp = sub.add_parser("map", help="UNMAPPED_REASON_CODE: add the reason mapping and resolve")
    common(mp)
    mp.add_argument("id", type=int)
    mp.add_argument("amazon_reason", help="Amazon reason code, e.g. CR-UNWANTED_ITEM")
    mp.set_defaults(func=_cli_action, action="map")

    sk = sub.add_parser("sku", help="SKU_MISMATCH: add the SKU to the catalog and resolve")
    common(sk)
    sk.add_argument("id", type=int)
    sk.add_argument("asin")
    sk.add_argument("unit_cost")
    sk.add_argument("available", type=int)
    sk.set_defaults(func=_cli_action, action="sku")

    pk = sub.add_parser("pick", help="EVENT_CONFLICT: keep one stored body of the event id, supersede the others")
    common(pk)
    pk.add_argument("id", type=int)
    pk.add_argument("raw_id", type=int, help="raw id of the body that is right (see `exceptions show`)")
    pk.add_argument("--why", default=None, help="how you know (e.g. the ReBound ticket)")
    pk.set_defaults(func=_cli_action, action="pick")
