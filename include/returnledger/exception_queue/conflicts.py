"""A conflict of bodies: one ReBound event id delivered with more than one body (the registry's
``Release.PICK`` type), and a person choosing the body that is right.

The chosen body goes on through the sync; every other body of the event id is SUPERSEDED (kept, never
applied). A body the ledger applied before the conflict was seen cannot be taken back, so when one was
applied only that one can be chosen.
"""

from __future__ import annotations

import re
from datetime import datetime

import psycopg
from psycopg.rows import dict_row

from returnledger.exception_queue.queue import (
    ExceptionActionError,
    close_audited,
    replay_events,
)

_VERSIONS_SQL = """
SELECT c.raw_id, c.chosen, COALESCE(o.status, 'NEW') AS status, r.body_problem
FROM ledger.event_conflict c JOIN ledger.raw_event r USING (raw_id)
LEFT JOIN ledger.event_outcome o USING (raw_id)
WHERE c.event_id = %s ORDER BY c.raw_id FOR UPDATE OF c
"""


def conflict_event_id(row: dict) -> str:
    """The event id a conflict of bodies is about (from its subject ``event:<id>``)."""
    key = row["subject_key"]
    if not key.startswith("event:"):
        raise ExceptionActionError(f"exception {row['exception_id']} names no event id ({key!r})")
    return key[len("event:") :]


def _versions(conn: psycopg.Connection, row: dict) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(_VERSIONS_SQL, (conflict_event_id(row),)).fetchall()


def versions_hint(conn: psycopg.Connection, row: dict) -> str:
    """How to choose, with the bodies still open: the text of a refusal."""
    open_ = [v for v in _versions(conn, row) if v["chosen"] is not False]
    listed = ", ".join(f"raw {v['raw_id']} ({v['status'].lower()})" for v in open_) or "none stored"
    return (
        f"pick one with `returnledger exceptions pick {row['exception_id']} <raw_id>` or resolve with "
        f"'keep raw <raw_id>' (bodies: {listed})"
    )


def chosen_raw_id(conn: psycopg.Connection, row: dict, text: str) -> int:
    """The raw id a resolution text chooses: 'keep raw 123', or the one raw id it names."""
    keep = re.search(r"\bkeep\s+raw\s*[:#]?\s*(\d+)", text, re.IGNORECASE)
    if keep:
        return int(keep.group(1))
    named = {int(m) for m in re.findall(r"\braw\s*[:#]?\s*(\d+)", text, re.IGNORECASE)}
    if len(named) == 1:
        return named.pop()
    raise ExceptionActionError(
        f"cannot resolve exception {row['exception_id']} without choosing a body: {versions_hint(conn, row)}"
    )


def pick_body(
    conn: psycopg.Connection, row: dict, raw_id: int, *, actor: str, at: datetime, why: str | None
) -> dict:
    """Choose ``raw_id`` for the locked conflict-of-bodies ``row``, supersede the other bodies, close it."""
    exception_id, event_id = row["exception_id"], conflict_event_id(row)
    undecided = [v for v in _versions(conn, row) if v["chosen"] is not False]
    if raw_id not in {v["raw_id"] for v in undecided}:
        raise ExceptionActionError(
            f"cannot pick raw {raw_id} for exception {exception_id}: it is not an open "
            f"body of event {event_id!r}; {versions_hint(conn, row)}"
        )
    applied = [v["raw_id"] for v in undecided if v["raw_id"] != raw_id and v["status"] == "APPLIED"]
    if applied:
        raise ExceptionActionError(
            f"cannot pick raw {raw_id} for exception {exception_id}: raw {applied[0]} was applied to "
            f"the line before the conflict was seen and cannot be taken back; pick raw {applied[0]} and ask "
            f"ReBound to send a correcting event under a new id"
        )
    chosen = next(v for v in undecided if v["raw_id"] == raw_id)
    losers = [v["raw_id"] for v in undecided if v["raw_id"] != raw_id]
    batch = f"manual:pick:{exception_id}"
    conn.execute(
        "UPDATE ledger.event_conflict SET chosen = (raw_id = %s), decided_at = %s, decided_by = %s"
        " WHERE event_id = %s AND chosen IS NOT FALSE",
        (raw_id, at, actor, event_id),
    )
    if losers:
        detail = f"superseded: raw {raw_id} was chosen for event {event_id} (exception {exception_id})"
        conn.execute("DELETE FROM ledger.held_event WHERE raw_id = ANY(%s)", (losers,))
        conn.execute(
            """INSERT INTO ledger.event_outcome (raw_id, status, detail, batch_id, decided_at)
                        SELECT x, 'SUPERSEDED', %s, %s, %s FROM unnest(%s::bigint[]) AS x
                        ON CONFLICT (raw_id) DO UPDATE SET status = 'SUPERSEDED', detail = EXCLUDED.detail,
                               batch_id = EXCLUDED.batch_id, decided_at = EXCLUDED.decided_at""",
            (detail, batch, at, losers),
        )
        conn.execute(
            "UPDATE ledger.exception SET status = 'resolved', resolved_at = %s, resolved_by = %s,"
            " resolution = %s WHERE status = 'open' AND type = 'INVALID_EVENT' AND raw_id = ANY(%s)",
            (at, actor, detail, losers),
        )
    replayed = replay_events(conn, [raw_id]) if chosen["status"] in ("HELD", "NEW") else 0
    text = f"kept raw {raw_id}" + (f"; superseded raw {', '.join(map(str, losers))}" if losers else "")
    if why and why.strip():
        text += f": {why.strip()}"
    out = close_audited(
        conn,
        row,
        "pick_body",
        text,
        actor=actor,
        at=at,
        detail={
            "event_id": event_id,
            "chosen_raw_id": raw_id,
            "superseded_raw_ids": losers,
            "why": why,
        },
    )
    out.update({"chosen_raw_id": raw_id, "superseded_raw_ids": losers, "replayed_events": replayed})
    return out
