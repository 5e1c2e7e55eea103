"""Held events and what became of every raw event: holds, outcomes, releases.

An event waits (HELD) while an open exception covers its line, its return or its event id; every event
gets one outcome row (APPLIED, IGNORED, INVALID, HELD), updated when a held event moves on.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import psycopg

from returnledger.exception_queue.queue import line_subject, resolve_open
from returnledger.exception_types import (
    KINDS,
    Holds,
    Release,
    blocking_types,
    kind,
    released_by,
    sql_in,
)
from returnledger.ledger.runs import SYSTEM_ACTOR
from returnledger.store.db import copy_rows


def hold_subject(etype: str, rid: str | None, ln: int | None, event_id: str | None) -> str:
    """The subject of the exception a held event waits on (its type's ``hold_key`` in the registry: the
    line, the return, the event id)."""
    key = kind(etype).hold_key
    if key is None:
        raise ValueError(f"{etype} holds nothing (returnledger.exception_types)")
    return key.format(return_id=rid, line=ln, event_id=event_id)


def record_outcomes(
    conn: psycopg.Connection,
    status: str,
    raw_ids: Sequence[int | None],
    details: list[str | None] | None,
    *,
    batch_id: str,
    at: datetime,
    decided: set[int] | None = None,
) -> None:
    """What became of raw events (raw rows themselves are never rewritten); a held event may move on later.

    ``decided``: the ids among ``raw_ids`` that may already have an outcome, when the caller knows them
    (apply does: only held events); otherwise the table is asked."""
    if not raw_ids:
        return
    details = details if details is not None else [None] * len(raw_ids)
    if decided is None:
        decided = {
            r[0]
            for r in conn.execute(
                "SELECT raw_id FROM ledger.event_outcome WHERE raw_id = ANY(%b::bigint[])", (raw_ids,)
            )
        }
    else:
        decided = decided.intersection(raw_ids)
    if decided:  # a held event moving on: its outcome row is updated
        again = [(i, d) for i, d in zip(raw_ids, details) if i in decided]
        conn.execute(
            """
            UPDATE ledger.event_outcome o SET status = %b, detail = x.d, batch_id = %b, decided_at = %b
            FROM unnest(%b::bigint[], %b::text[]) AS x(id, d) WHERE o.raw_id = x.id""",
            (status, batch_id, at, [a[0] for a in again], [a[1] for a in again]),
        )
    # first outcomes (nearly all of them) are appended with COPY
    copy_rows(
        conn,
        "ledger.event_outcome",
        (
            ("raw_id", "int8"),
            ("status", "text"),
            ("detail", "text"),
            ("batch_id", "text"),
            ("decided_at", "timestamptz"),
        ),
        ((i, status, d, batch_id, at) for i, d in zip(raw_ids, details) if i not in decided),
    )


def hold(conn: psycopg.Connection, items: list[tuple], *, at: datetime, batch_id: str) -> None:
    """Record held events against the open exception they wait on. Items are (raw_id, return_id, line,
    exception type) for a line's own exception, or with a fifth element: the exception's subject key."""
    if not items:
        return
    conn.execute(
        """
        INSERT INTO ledger.held_event (raw_id, return_id, line, reason, exception_id, held_at)
        SELECT x.raw_id, x.rid, x.ln, x.reason, e.exception_id, %s
        FROM unnest(%b::bigint[], %b::text[], %b::int[], %b::text[], %b::text[])
             AS x(raw_id, rid, ln, reason, subject)
        LEFT JOIN ledger.exception e ON e.status = 'open' AND e.type = x.reason AND e.subject_key = x.subject
        ON CONFLICT (raw_id) DO UPDATE SET reason = EXCLUDED.reason, exception_id = EXCLUDED.exception_id""",
        (
            at,
            [i[0] for i in items],
            [i[1] for i in items],
            [i[2] for i in items],
            [str(i[3]) for i in items],
            [i[4] if len(i) > 4 else line_subject(i[1], i[2]) for i in items],
        ),
    )
    record_outcomes(conn, "HELD", [i[0] for i in items], [str(i[3]) for i in items], batch_id=batch_id, at=at)


def release_reference_holds(conn: psycopg.Connection, *, at: datetime) -> int:
    """Resolve the open exceptions whose reference data now covers their line (the registry's
    ``released_when_sql`` of each ``Release.REFERENCE_DATA`` type: a reason mapping, a SKU)."""
    types = sorted(released_by(Release.REFERENCE_DATA))
    if not types:
        return 0
    covered = " OR ".join(f"(e.type = '{t}' AND {KINDS[t].released_when_sql})" for t in types)
    fixed = conn.execute(f"""
        SELECT e.type, e.subject_key FROM ledger.exception e
        JOIN ledger.return_line l ON l.return_id = e.return_id AND l.line = e.line
        WHERE e.status = 'open' AND ({covered})""").fetchall()
    n = 0
    for etype in types:
        keys = [k for t, k in fixed if t == etype]
        n += resolve_open(
            conn,
            etype,
            keys,
            at=at,
            actor=SYSTEM_ACTOR,
            resolution="released: the reference data now covers the line",
        )
    return n


def blocked_sql() -> str:
    """Lines (or whole returns: line null) whose held events wait, as (return_id, line, type, subject):
    the open exceptions of the types that block their line or return while open, and the lines of an
    event id whose bodies are still undecided (``Release.PICK``). Read from the registry when called."""
    picks: list[str | None] = [*sorted(released_by(Release.PICK))]
    (pick,) = picks or [None]
    conflicts = (
        f"""
    UNION ALL
    SELECT r.return_id, r.line, '{pick}', 'event:' || c.event_id
    FROM ledger.event_conflict c JOIN ledger.raw_event r USING (raw_id)
    WHERE c.chosen IS NULL AND r.return_id IS NOT NULL"""
        if pick
        else ""
    )
    return f"""
    SELECT return_id, line, type, subject_key FROM ledger.exception
    WHERE status = 'open' AND type IN {sql_in(blocking_types(Holds.LINE))}{conflicts}
    UNION ALL
    SELECT return_id, NULL, type, subject_key FROM ledger.exception
    WHERE status = 'open' AND type IN {sql_in(blocking_types(Holds.RETURN))} AND return_id IS NOT NULL"""
