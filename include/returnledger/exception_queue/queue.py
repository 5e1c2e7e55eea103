"""The exception queue: raise once, with the owner team from configuration.

Owners come from ``ledger.owner_team`` (loaded from include/reference/owners.yaml, which also supplies
them until it is loaded). The partial unique index ``exception_open_once`` guarantees one open
exception per type and subject, so raising is idempotent: a rerun or a second detector adds nothing.

People then work the queue (console page, ``returnledger exceptions ...``) through
``exception_queue.actions``; this module holds what the detectors and the actions share: the subjects,
raising and system resolution, sending events back through the sync, and locking and closing one row.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg.rows import dict_row

from returnledger.models import ExceptionType
from returnledger.reference.owners import default_owners
from returnledger.store.audit import record_one
from returnledger.store.raw_floor import lower_floor

#: the columns of ledger.exception every reader shows
EXCEPTION_COLUMNS = (
    "exception_id",
    "type",
    "owner",
    "status",
    "subject_key",
    "return_id",
    "line",
    "sku",
    "amazon_return_id",
    "raw_id",
    "detail",
    "opened_at",
    "opened_by_batch",
    "resolved_at",
    "resolved_by",
    "resolution",
)


def exception_columns(alias: str | None = None) -> str:
    """EXCEPTION_COLUMNS as a select list, each prefixed with ``alias.`` when given."""
    return ", ".join(f"{alias}.{c}" if alias else c for c in EXCEPTION_COLUMNS)


@dataclass(frozen=True)
class NewException:
    type: ExceptionType
    subject_key: str  # 'RID|LINE', an amazon_return_id, or 'raw:<raw_id>'
    detail: str
    return_id: str | None = None
    line: int | None = None
    sku: str | None = None
    amazon_return_id: str | None = None
    raw_id: int | None = None


class ExceptionNotFound(LookupError):
    """No exception with that id."""


class ExceptionActionError(ValueError):
    """The requested action does not apply to the exception in its current state."""


def required(value: str | None, what: str) -> str:
    """An operator's input as stripped text; empty is refused as an ExceptionActionError."""
    if value is None or not str(value).strip():
        raise ExceptionActionError(f"{what} must not be empty")
    return str(value).strip()


# --- subjects: what an exception is about ------------------------------------------------------------


def line_subject(return_id: str, line: int) -> str:
    return f"{return_id}|{line}"


def event_subject(event_id: str) -> str:
    """Subject of a conflict of bodies: the event id that arrived with more than one body."""
    return f"event:{event_id}"


def order_subject(return_id: str) -> str:
    """Subject of a failing return order: the return whose order failed its own checks."""
    return f"order:{return_id}"


#: subjects of the SYNC_STALLED raised for a return order ReBound could not be read
ORDER_FETCH_PREFIX = "order-fetch:"


def order_fetch_subject(return_id: str) -> str:
    """Subject of the SYNC_STALLED of a return order the sync could not read (outage, malformed answer)."""
    return f"{ORDER_FETCH_PREFIX}{return_id}"


def exception_subject(exception_id: int) -> str:
    """The audit_log subject of one exception."""
    return f"exception:{exception_id}"


# --- raising and system resolution --------------------------------------------------------------------

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


def raise_exceptions(
    conn: psycopg.Connection, items: list[NewException], *, at: datetime, batch_id: str
) -> int:
    """Open the exceptions that are not already open; returns how many were opened."""
    if not items:
        return 0
    owners = default_owners()
    cols = {
        "type": [str(i.type) for i in items],
        "default_owner": [owners[str(i.type)].owner for i in items],
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


def resolve_open(
    conn: psycopg.Connection,
    type_: str,  # a registry code (ExceptionType, or a type added to KINDS at run time)
    subject_keys: list[str],
    *,
    at: datetime,
    actor: str,
    resolution: str,
) -> int:
    """Mark open exceptions of one type and subjects resolved (system resolutions, e.g. a hold released)."""
    if not subject_keys:
        return 0
    cur = conn.execute(
        "UPDATE ledger.exception SET status = 'resolved', resolved_at = %s, resolved_by = %s, resolution = %s"
        " WHERE status = 'open' AND type = %s AND subject_key IN (SELECT unnest(%s::text[]))",
        (at, actor, resolution, str(type_), subject_keys),
    )
    return cur.rowcount


# --- sending events back through the sync --------------------------------------------------------------

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
    lower_floor(conn, list(raw_ids))  # the sync's readers start at the raw floor: below these again
    (count,) = conn.execute(_REPLAY_SQL, {"ids": list(raw_ids)}).fetchone() or (0,)
    return count


# --- one row under a person's action ---------------------------------------------------------------------


def lock_open(
    conn: psycopg.Connection, exception_id: int, *, types: Collection[str] | None = None, action: str
) -> dict:
    """Lock the exception row for an action; refuses one that is closed or of a type the action does
    not apply to (the message says who closed it, or which types it applies to)."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            f"SELECT {exception_columns()} FROM ledger.exception WHERE exception_id = %s FOR UPDATE",
            (exception_id,),
        ).fetchone()
    if row is None:
        raise ExceptionNotFound(f"exception {exception_id} does not exist")
    if row["status"] != "open":
        raise ExceptionActionError(
            f"cannot {action} exception {exception_id}: it is already {row['status']}"
            f" (by {row['resolved_by']} at {row['resolved_at']:%Y-%m-%d %H:%M} UTC: {row['resolution']})"
        )
    if types is not None and row["type"] not in types:
        raise ExceptionActionError(
            f"cannot {action} exception {exception_id}: it is {row['type']}, this action applies to "
            + " / ".join(sorted(types))
        )
    return row


def close(
    conn: psycopg.Connection, exception_id: int, *, status: str, actor: str, resolution: str, at: datetime
) -> dict:
    """Mark the exception resolved or dismissed; returns the closed row."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "UPDATE ledger.exception SET status = %s, resolved_at = %s, resolved_by = %s, resolution = %s"
            f" WHERE exception_id = %s RETURNING {exception_columns()}",
            (status, at, actor, resolution, exception_id),
        ).fetchone()
    if row is None:
        raise ExceptionNotFound(f"exception {exception_id} does not exist")
    return row


def audit_exception(
    conn: psycopg.Connection, row: dict, action: str, *, actor: str, at: datetime, detail: dict
) -> None:
    """Write who / when / what / why of an action on the exception ``row`` to the audit log.

    The entry is ``exception.<action>``; its detail always carries the exception's type and subject key,
    followed by ``detail``.
    """
    record_one(
        conn,
        at=at,
        actor=actor,
        action=f"exception.{action}",
        subject=exception_subject(row["exception_id"]),
        detail={"type": row["type"], "subject_key": row["subject_key"], **detail},
    )


def close_audited(
    conn: psycopg.Connection,
    row: dict,
    action: str,
    resolution: str,
    *,
    actor: str,
    at: datetime,
    detail: dict,
    status: str = "resolved",
) -> dict:
    """Close the locked exception ``row`` with ``resolution`` and audit ``action`` (see
    ``audit_exception``); returns the closed row."""
    out = close(conn, row["exception_id"], status=status, actor=actor, resolution=resolution, at=at)
    audit_exception(conn, row, action, actor=actor, at=at, detail=detail)
    return out
