"""ReBound return orders: fetched for the events that name them, checked, stored or rejected.

An order that fails its own checks is kept as returned in ``ledger.return_order_rejected`` and raises the
exception the registry releases when an order passes (``Release.ORDER_PASSES``: only that return's events
wait); one that passes later releases what it held, and
INVALID_EVENTs whose return or line ReBound has since added are examined again.

An order the sync cannot read (ReBound down through the retries, an answer without its ``returns`` list)
is a feed failure, not a failed run: SYNC_STALLED (subject ``order-fetch:RID``) names it, the events that
need it wait (held by screening), it is asked for again on every run, and the first answer releases them.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from hashlib import md5
from typing import Any

import msgspec
import psycopg

from returnledger.exception_queue.queue import (
    ORDER_FETCH_PREFIX,
    NewException,
    order_subject,
    raise_exceptions,
    replay_events,
)
from returnledger.exception_types import Release, released_by, sql_in
from returnledger.fields import INT4_MAX, as_int4, as_whole, is_db_text, parse_time
from returnledger.intake.order_lookup import ask_rebound, release_orders, report_unread
from returnledger.intake.raw import REFUSED
from returnledger.intake.raw_body import screen_body, storable
from returnledger.ledger.runs import SYSTEM_ACTOR
from returnledger.models import LINE_EVENTS_SQL, RETURN_ID_PATTERN, ExceptionType
from returnledger.screening.suite import FIXABLE_CHECKS
from returnledger.store.db import copy_rows, raw_json, unit_of_work
from returnledger.store.raw_floor import FLOOR_MARK, at_floor, current_floor

_ID_RE = re.compile(RETURN_ID_PATTERN)


def rejected_order_type() -> ExceptionType:
    """The exception a failing return order raises: the registry's type released when the order passes."""
    (code,) = released_by(Release.ORDER_PASSES)
    return ExceptionType(code)


#: the checks whose failures ReBound may fix later, as an SQL list (matched by check name, not detail text)
_FIXABLE_SQL = "(" + ", ".join(f"'{c}'" for c in FIXABLE_CHECKS) + ")"

_REFRESH_SQL = f"""
SELECT DISTINCT return_id FROM (
    -- new events that name a return the ledger does not hold, a line its order does not have (ReBound may
    -- have added it since), or a return whose order failed its own checks (it may be corrected by now)
    SELECT e.return_id FROM ledger.raw_event e
    LEFT JOIN ledger.return_order o ON o.return_id = e.return_id
    LEFT JOIN ledger.return_line l ON l.return_id = e.return_id AND l.line = e.line
    WHERE e.return_id IS NOT NULL AND e.raw_id >= {FLOOR_MARK}  -- below the floor every event was examined
      AND NOT EXISTS (SELECT 1 FROM ledger.event_outcome x WHERE x.raw_id = e.raw_id
                                                               AND x.raw_id >= {FLOOR_MARK})
      AND (o.return_id IS NULL
           OR (l.return_id IS NULL AND e.line IS NOT NULL AND e.event_type IN {LINE_EVENTS_SQL})
           OR e.return_id IN (SELECT j.return_id FROM ledger.return_order_rejected j
                              WHERE j.cleared_at IS NULL))
    UNION ALL
    -- events reported invalid because the return or line was unknown: asked again while the exception is open
    SELECT x.return_id FROM ledger.exception x JOIN ledger.validation_failure f ON f.raw_id = x.raw_id
    WHERE x.status = 'open' AND x.type = 'INVALID_EVENT' AND x.return_id IS NOT NULL
      AND f.check_name IN {_FIXABLE_SQL}
    UNION ALL
    SELECT return_id FROM ledger.exception
    WHERE status = 'open' AND type IN {sql_in(released_by(Release.ORDER_PASSES))} AND return_id IS NOT NULL
    UNION ALL
    -- orders an earlier run could not read: their events are held until ReBound answers
    SELECT return_id FROM ledger.exception
    WHERE status = 'open' AND type = 'SYNC_STALLED' AND subject_key LIKE '{ORDER_FETCH_PREFIX}%'
      AND return_id IS NOT NULL
) ids
"""


def fetch_return_orders(
    conn: psycopg.Connection, client, *, at: datetime, batch_id: str
) -> tuple[int, int, int]:
    """Fetch from ReBound the return orders that events name and the ledger cannot place: returns it does
    not hold, lines their order lacks, orders that failed their checks, and the returns of open
    INVALID_EVENTs that named an unknown return or line. Returns (orders stored, ids ReBound does not
    know, orders that failed their own checks).

    Each order is checked before anything is stored: one that fails (a quantity of 0 or beyond int4, a
    missing SKU, a line number given twice, wrong types, text no column can hold) is kept as returned in
    ``return_order_rejected`` and raises the failing-order exception; only that return's events wait. An order
    that passes clears its earlier rejection and releases the events it held; INVALID_EVENTs whose return
    or line now exists are resolved and their events examined again (the same path as a new delivery).
    """
    ids = [r[0] for r in conn.execute(at_floor(_REFRESH_SQL, current_floor(conn)))]
    ids = [i for i in ids if _ID_RE.match(i)]
    if not ids:
        return 0, 0, 0
    found, missing, unread, problem = ask_rebound(client, ids)
    good: dict[str, dict] = {}
    bad: list[tuple[str | None, bytes, str, str]] = []
    for o in list(found or []):
        problems = _order_problems(o)
        rid = o.get("return_id") if isinstance(o, dict) else None
        rid = rid if isinstance(rid, str) and _ID_RE.match(rid) else None
        if problems:
            body = _order_bytes(o)
            bad.append((rid, body, md5(body).hexdigest(), "; ".join(problems)))
        elif rid is not None and rid not in good:  # no problems: the id is a ReBound id
            good[rid] = o
    if good:
        known = {
            r[0]
            for r in conn.execute(
                "SELECT return_id FROM ledger.return_order WHERE return_id = ANY(%s)", (list(good),)
            )
        }
        store_return_orders(conn, [o for r, o in good.items() if r not in known], new=True)
        store_return_orders(conn, [o for r, o in good.items() if r in known])
        # orders that pass now clear their rejection and release what they held
        cleared = sorted(
            {
                r[0]
                for r in conn.execute(
                    "UPDATE ledger.return_order_rejected SET cleared_at = %s WHERE cleared_at IS NULL"
                    " AND return_id = ANY(%s) RETURNING return_id",
                    (at, list(good)),
                )
            }
        )
        release_orders(
            conn,
            rejected_order_type(),
            cleared,
            [order_subject(r) for r in cleared],
            at=at,
            resolution="released: ReBound's return order now passes its checks",
        )
    if bad:
        _reject_orders(conn, bad, at=at, batch_id=batch_id)
    report_unread(conn, ids, unread, problem, at=at, batch_id=batch_id)
    _release_fixed_events(conn, at=at)
    conn.commit()
    return len(good), len(missing or []), len(bad)


def _order_bytes(o: Any) -> bytes:
    try:
        return msgspec.json.encode(o)
    except (TypeError, ValueError, UnicodeEncodeError, OverflowError):
        return json.dumps(o, default=repr).encode()  # lone surrogates become \\ud800 escapes


def _reject_orders(
    conn, bad: list[tuple[str | None, bytes, str, str]], *, at: datetime, batch_id: str
) -> None:
    """Keep failing orders as returned (each distinct version once) and raise the failing-order exception."""
    sql = """
        INSERT INTO ledger.return_order_rejected (return_id, body, payload, body_md5, problems, first_seen_at,
                                                  last_seen_at, batch_id)
        SELECT x.rid, x.body, x.payload::jsonb, x.md5, x.problems, %(at)s, %(at)s, %(batch)s
        FROM unnest(%(rid)s::text[], %(body)s::bytea[], %(payload)s::text[], %(md5)s::text[],
                    %(problems)s::text[]) AS x(rid, body, payload, md5, problems)
        ON CONFLICT (return_id, body_md5) DO UPDATE SET last_seen_at = EXCLUDED.last_seen_at,
               problems = EXCLUDED.problems, batch_id = EXCLUDED.batch_id, cleared_at = NULL"""
    distinct = list(
        {(rid, digest): (rid, body, digest, problems) for rid, body, digest, problems in bad}.values()
    )
    params = {
        "at": at,
        "batch": batch_id,
        "rid": [b[0] for b in distinct],
        "body": [b[1] for b in distinct],
        "md5": [b[2] for b in distinct],
        "problems": [b[3] for b in distinct],
    }
    payloads = []
    for b in distinct:
        payload, _exact, problem = screen_body(b[1])
        payloads.append(payload.decode() if payload is not None and problem is None else None)
    try:
        with unit_of_work(conn):
            conn.execute(sql, {**params, "payload": payloads})
    except REFUSED:  # some payload jsonb cannot hold: the bytes alone are the record
        with unit_of_work(conn):
            conn.execute(sql, {**params, "payload": [None] * len(distinct)})
    raise_exceptions(
        conn,
        [
            NewException(
                rejected_order_type(),
                order_subject(rid) if rid else f"order:?{digest}",
                f"ReBound return order {rid or '(no usable return id)'} fails its own checks: {problems}. "
                "It is kept as returned; its events wait until ReBound corrects it",
                return_id=rid,
            )
            for rid, _body, digest, problems in distinct
        ],
        at=at,
        batch_id=batch_id,
    )


_FIXED_INVALID_SQL = f"""
WITH fixed AS (
    SELECT x.exception_id, x.raw_id FROM ledger.exception x
    JOIN ledger.validation_failure f ON f.raw_id = x.raw_id
    JOIN ledger.raw_event r ON r.raw_id = x.raw_id
    JOIN ledger.return_order o ON o.return_id = r.return_id
    WHERE x.status = 'open' AND x.type = 'INVALID_EVENT'
      AND f.check_name IN {_FIXABLE_SQL}
      AND (r.event_type NOT IN {LINE_EVENTS_SQL}
           OR EXISTS (SELECT 1 FROM ledger.return_line l WHERE l.return_id = r.return_id AND l.line = r.line))
)
UPDATE ledger.exception e SET status = 'resolved', resolved_at = %s, resolved_by = %s, resolution = %s
FROM fixed WHERE e.exception_id = fixed.exception_id
RETURNING fixed.raw_id
"""
_FIXED_INVALID_RESOLUTION = (
    "released: ReBound's return order now has the return and line; the event is examined again"
)


def _release_fixed_events(conn, *, at: datetime) -> int:
    """INVALID_EVENTs that named a return or line ReBound has since added: resolved, events replayed."""
    ids = [r[0] for r in conn.execute(_FIXED_INVALID_SQL, (at, SYSTEM_ACTOR, _FIXED_INVALID_RESOLUTION))]
    return replay_events(conn, ids)


def _order_problems(o: Any) -> list[str]:
    """What makes a ReBound return order unusable for the ledger (nothing: it can be stored as it is)."""
    if not isinstance(o, dict):
        return [f"the order is not a JSON object but {type(o).__name__}"]
    problems = []
    rid = o.get("return_id")
    if not isinstance(rid, str) or not _ID_RE.match(rid):
        problems.append(f"return_id {rid!r} is not a ReBound id")
    ref = o.get("order_reference")
    if ref is not None and not is_db_text(ref, empty=True):
        problems.append(f"order_reference {ref!r} is not text")
    created = o.get("created_at")
    if created is not None and parse_time(created) is None:
        problems.append(f"created_at {created!r} is not an ISO-8601 timestamp")
    refs = o.get("amazon_refs")
    if not isinstance(refs, dict):
        problems.append(f"amazon_refs {refs!r} is not an object")
    else:
        if not is_db_text(refs.get("returns_notice")):
            problems.append(
                f"amazon_refs.returns_notice {refs.get('returns_notice')!r} is missing or not text"
            )
        for name in ("rma_id", "vret"):
            v = refs.get(name)
            if v is not None and not is_db_text(v, empty=True):
                problems.append(f"amazon_refs.{name} {v!r} is not text")
    lines = o.get("lines")
    if not isinstance(lines, list):
        problems.append(f"lines {lines!r} is not a list")
        lines = []
    seen: set[int] = set()
    for i, ln in enumerate(lines):
        if not isinstance(ln, dict):
            problems.append(f"lines[{i}] is not an object")
            continue
        n = as_whole(ln.get("line"))
        if n is None or not 1 <= n <= INT4_MAX:
            problems.append(f"lines[{i}].line {ln.get('line')!r} is not a line number (1..{INT4_MAX})")
        elif n in seen:
            problems.append(f"line {n} is listed more than once")
        else:
            seen.add(n)
        name = f"line {n}" if n is not None else f"lines[{i}]"
        if not is_db_text(ln.get("sku")):
            problems.append(f"{name}: sku {ln.get('sku')!r} is missing or not text")
        q = as_whole(ln.get("quantity"))
        if q is None or not 1 <= q <= INT4_MAX:
            problems.append(
                f"{name}: quantity {ln.get('quantity')!r} is not a whole number from 1 to {INT4_MAX}"
            )
        reason = ln.get("reason")
        if reason is not None and not is_db_text(reason, empty=True):
            problems.append(f"{name}: reason {reason!r} is not text")
    if not problems:
        try:
            msgspec.json.encode(o)
        except (TypeError, ValueError, UnicodeEncodeError, OverflowError) as exc:
            problems.append(f"it holds a value no database can store ({type(exc).__name__})")
    return problems


_ORDER_COLUMNS = (
    ("return_id", "text"),
    ("order_reference", "text"),
    ("created_at", "timestamptz"),
    ("returns_notice", "text"),
    ("rma_id", "text"),
    ("vret", "text"),
    ("payload", "jsonb"),
)
_LINE_COLUMNS = (
    ("return_id", "text"),
    ("line", "int4"),
    ("sku", "text"),
    ("reason", "text"),
    ("quantity", "int4"),
)


def _order_row(o: dict) -> tuple:
    refs = o.get("amazon_refs") or {}
    return (
        o["return_id"],
        o.get("order_reference"),
        parse_time(o.get("created_at")),
        refs.get("returns_notice"),
        refs.get("rma_id"),
        refs.get("vret") or None,
        raw_json(storable(msgspec.json.encode(o))),
    )


def _count(v: Any, what: str) -> int:
    """A whole number for an int4 column; anything else is refused (binary COPY would wrap it)."""
    n = as_int4(v)
    if n is None:
        raise ValueError(f"{what} {v!r} is not a whole number an int4 column holds")
    return n


def _line_rows(orders: list[dict]) -> list[tuple]:
    """A return order's lines (a line number given twice keeps its first entry)."""
    rows: dict[tuple[str, int], tuple] = {}
    for o in orders:
        for ln in o.get("lines") or []:
            n = _count(ln["line"], "line")
            rows.setdefault(
                (o["return_id"], n),
                (o["return_id"], n, ln["sku"], ln.get("reason") or "", _count(ln["quantity"], "quantity")),
            )
    return list(rows.values())


def store_return_orders(
    conn: psycopg.Connection,
    orders: list[dict],
    source: str = "REBOUND",
    amazon_return_id: str | None = None,
    *,
    new: bool = False,
) -> None:
    """Upsert return orders and insert their lines as ANNOUNCED (existing lines keep their state).

    Staged with COPY: return orders carry JSON payloads, which array parameters would have to escape.
    ``new=True`` (orders the ledger was just seen not to hold) COPYs straight into the tables; the
    primary keys still stop a concurrent writer, whose transaction then fails and is retried.
    """
    if not orders:
        return
    if new:
        copy_rows(
            conn,
            "ledger.return_order",
            (*_ORDER_COLUMNS, ("source", "text"), ("amazon_return_id", "text")),
            ((*_order_row(o), source, amazon_return_id) for o in orders),
        )
        copy_rows(
            conn,
            "ledger.return_line",
            (*_LINE_COLUMNS[:4], ("quantity_announced", "int4")),
            _line_rows(orders),
        )
        return
    conn.execute("""CREATE TEMP TABLE IF NOT EXISTS order_stage (return_id text, order_reference text,
        created_at timestamptz, returns_notice text, rma_id text, vret text, payload jsonb)
        ON COMMIT DELETE ROWS""")
    conn.execute("""CREATE TEMP TABLE IF NOT EXISTS line_stage (return_id text, line int, sku text,
        reason text, quantity int) ON COMMIT DELETE ROWS""")
    conn.execute("TRUNCATE order_stage, line_stage")
    copy_rows(conn, "order_stage", _ORDER_COLUMNS, (_order_row(o) for o in orders))
    copy_rows(conn, "line_stage", _LINE_COLUMNS, _line_rows(orders))
    conn.execute(
        """
        INSERT INTO ledger.return_order (return_id, order_reference, created_at, returns_notice, rma_id, vret,
                                         payload, source, amazon_return_id)
        SELECT return_id, order_reference, created_at, returns_notice, rma_id, vret, payload, %s, %s
        FROM order_stage
        ON CONFLICT (return_id) DO UPDATE SET payload = EXCLUDED.payload""",
        (source, amazon_return_id),
    )
    conn.execute("""
        INSERT INTO ledger.return_line (return_id, line, sku, reason, quantity_announced)
        SELECT return_id, line, sku, reason, quantity FROM line_stage
        ON CONFLICT (return_id, line) DO NOTHING""")
