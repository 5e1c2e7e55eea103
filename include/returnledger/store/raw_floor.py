"""The raw floor (migration 0026): every raw event below it has been examined, so the sync's readers of
unprocessed events read from it up, not the whole raw table (issue 26, target 2).

An event is examined once it has an outcome (``ledger.event_outcome``: applied, held, ignored, or invalid
once quarantined); every reader's own conditions then apply from the floor up. ``validate`` moves the
floor up before it reads its frame; sending events back through the sync (``replay_events``)
moves it down to them before their outcomes go, in the same transaction. Both lock the floor's one row,
so a replay that commits while the floor moves up is seen by the statement that computes the new floor.
"""

from __future__ import annotations

import psycopg

#: where the readers' SQL takes the floor: the number itself, written in (not a subquery or a parameter),
#: so the planner sees a short range of raw_event's primary key and probes the joined tables by index
#: (with an unknown value it assumes a third of the table and hash-joins whole tables)
FLOOR_MARK = "{raw_floor}"


def at_floor(sql: str, floor: int) -> str:
    """``sql`` with the floor written in where it says ``FLOOR_MARK``."""
    return sql.replace(FLOOR_MARK, str(int(floor)))


def _value(conn: psycopg.Connection, sql: str, params=None):
    row = conn.execute(sql, params).fetchone()
    return row[0] if row else None


def current_floor(conn: psycopg.Connection) -> int:
    return _value(conn, "SELECT raw_id FROM ledger.raw_floor") or 0


_UNEXAMINED_FROM_SQL = """
SELECT min(r.raw_id) FROM ledger.raw_event r
 WHERE r.raw_id >= %(floor)s
   AND NOT EXISTS (SELECT 1 FROM ledger.event_outcome o WHERE o.raw_id = r.raw_id AND o.raw_id >= %(floor)s)
"""


def raise_floor(conn: psycopg.Connection) -> int:
    """Move the floor up to the lowest raw event not examined yet (past the newest if every one is);
    returns the floor. Call it with no transaction open: it commits, so the floor's row is held only while
    it moves."""
    with conn.transaction():
        floor = _value(conn, "SELECT raw_id FROM ledger.raw_floor FOR UPDATE") or 0
        # a fresh statement after the lock: a replay that committed meanwhile is seen
        low = _value(conn, _UNEXAMINED_FROM_SQL, {"floor": floor})
        if low is None:
            top = _value(conn, "SELECT max(raw_id) FROM ledger.raw_event WHERE raw_id >= %s", (floor,))
            low = floor if top is None else top + 1
        if low != floor:
            conn.execute("UPDATE ledger.raw_floor SET raw_id = %s", (low,))
    return low


def lower_floor(conn: psycopg.Connection, raw_ids: list[int]) -> None:
    """Below ``raw_ids`` again (they go back through the sync); in the caller's transaction."""
    if raw_ids:
        conn.execute("UPDATE ledger.raw_floor SET raw_id = LEAST(raw_id, %s)", (min(raw_ids),))
