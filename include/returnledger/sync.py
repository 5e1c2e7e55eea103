"""The returns sync: ReBound events in, ledger updated, Amazon told only what is confirmed.

Each step is a function over a DSN and a client, idempotent, and works in
sets (COPY into a staging table, UNNEST updates). The DAG ``returns_sync``
calls them in order; the benchmark and the tests call them directly.

extract -> validate -> quarantine / apply -> push_inventory, push_credits -> confirm
"""
from __future__ import annotations

import gc
import json
import logging
import re
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from hashlib import md5
from pathlib import Path
from typing import Any

import msgspec
import psycopg

from returnledger.clients.rebound import ReboundError
from returnledger.exception_queue.queue import (
    NewException,
    event_subject,
    line_subject,
    order_subject,
    raise_exceptions,
    resolve_open,
)
from returnledger.ledger import lifecycle
from returnledger.models import (
    RETURN_ID_PATTERN,
    ActionKind,
    Disposition,
    EventType,
    ExceptionType,
    Grade,
    LineState,
)
from returnledger.store.db import connect, copy_into, copy_rows, raw_json

log = logging.getLogger(__name__)

CURSOR_NAME = "rebound_events"
SYSTEM_ACTOR = "returns_sync"
RETURN_FETCH_BATCH = 200
_ID_RE = re.compile(RETURN_ID_PATTERN)
LINE_EVENTS = {EventType.RECEIVED.value, EventType.GRADED.value, EventType.DISPOSITIONED.value}
RETURN_EVENTS = {EventType.RETURN_CREATED.value, EventType.IN_TRANSIT.value}
_EVENT_TYPES = {t.value: t for t in EventType}   # a dict lookup: the enum's own call costs a microsecond a row
_LINE_STATES = {s.value: s for s in LineState}


@contextmanager
def _no_cyclic_gc():
    """Bulk steps allocate millions of small, long-lived objects (rows, events, line views) and no cycles;
    the cyclic collector would rescan them over and over (about 2.5 s of CPU in an apply of 586k events)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class SyncError(RuntimeError):
    """A step finished its work but some items could not be processed; the task should fail and retry."""


def batch_id_for(window_end: datetime) -> str:
    return f"returns_sync:{window_end.astimezone(timezone.utc):%Y-%m-%dT%H:%M}Z"


def _parse_time(v: Any) -> datetime | None:
    """An ISO-8601 instant (no zone = UTC), else None; a feed repeats its timestamps, so they are cached."""
    return _parse_text_time(v) if isinstance(v, str) else None


@lru_cache(maxsize=1 << 16)
def _parse_text_time(v: str) -> datetime | None:
    try:
        t = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        return None
    t = t if t.tzinfo else t.replace(tzinfo=timezone.utc)
    try:
        t.astimezone(timezone.utc)   # an offset that pushes the instant beyond year 1..9999 is no time
    except OverflowError:
        return None
    return t


def _text(v: Any) -> str | None:
    """The validation rule for text fields: a non-empty JSON string, else null. Characters PostgreSQL text
    cannot hold are kept visible as their escapes: NUL as ``\\u0000``, a lone surrogate as ``\\ud800``."""
    if not isinstance(v, str) or not v:
        return None
    if "\x00" in v:
        v = v.replace("\x00", "\\u0000")
    if not v.isascii():
        try:
            v.encode()
        except UnicodeEncodeError:
            v = "".join(f"\\u{ord(c):04x}" if "\ud800" <= c <= "\udfff" else c for c in v)
    return v


# a JSON \u0000 escape (one not itself escaped): PostgreSQL's jsonb cannot hold U+0000
_NUL_ESCAPE = re.compile(rb"(?<!\\)((?:\\\\)*)\\u0000")
# JSON escapes read left to right, so an escaped backslash followed by "u0000" is never taken for an escape
_ESCAPE = re.compile(rb"\\(?:u([0-9a-fA-F]{4})|.)", re.DOTALL)


def _storable(body: bytes) -> bytes:
    """The payload as received, except that a \\u0000 escape becomes the literal text ``\\u0000``:
    jsonb refuses U+0000, and one such event must not stop the whole feed."""
    return _NUL_ESCAPE.sub(rb"\1\\\\u0000", body) if b"\\u0000" in body else body


def _screen(body: bytes) -> tuple[bytes | None, bytes | None, str | None]:
    """How one delivery is stored: (what the jsonb payload column gets, the exact bytes to keep beside it,
    why the delivery cannot be read as an event).

    Nearly every event takes the first line: valid UTF-8 without escapes jsonb refuses is stored as it is.
    Bytes that are not UTF-8 are kept as bytes only (no payload). A \\u0000 escape or a lone surrogate
    escape (``\\ud800``, no character at all) becomes visible literal text in the payload, and the exact
    bytes are kept too; a lone surrogate also makes the event unreadable (INVALID_EVENT).
    """
    if not body.isascii():
        try:
            body.decode()
        except UnicodeDecodeError as exc:
            return None, body, f"not valid UTF-8 (byte 0x{body[exc.start]:02x} at offset {exc.start})"
    if b"\\u" not in body:
        return body, None, None
    spans: list[tuple[int, int]] = []
    lone: list[str] = []
    high = None
    for m in _ESCAPE.finditer(body):
        code = m.group(1)
        cp = int(code, 16) if code is not None else -1
        if high is not None:
            if 0xDC00 <= cp <= 0xDFFF and m.start() == high.end():
                high = None
                continue  # a surrogate pair: one character
            spans.append(high.span())
            lone.append(high.group(1).decode())
            high = None
        if 0xD800 <= cp <= 0xDBFF:
            high = m
        elif 0xDC00 <= cp <= 0xDFFF:
            spans.append(m.span())
            lone.append(code.decode())
        elif cp == 0:
            spans.append(m.span())
    if high is not None:
        spans.append(high.span())
        lone.append(high.group(1).decode())
    if not spans:
        return body, None, None
    out, last = bytearray(), 0
    for start, end in sorted(spans):
        out += body[last:start] + b"\\" + body[start:end]   # "\\ud800": the escape as literal text
        last = end
    out += body[last:]
    problem = None
    if lone:
        shown = ", ".join(dict.fromkeys(f"\\u{c.lower()}" for c in lone))
        problem = f"lone surrogate escape {shown} (not a character; no database text can hold it)"
    return bytes(out), body, problem


def _whole(v: Any) -> int | None:
    """The validation rule for counts: a JSON number with no fraction (not a boolean), else null."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v if abs(v) < 10**15 else None
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return int(v)
    return None


INT4_MAX = 2**31 - 1


def _int4(v: Any) -> int | None:
    """A whole number an int4 column holds as it is, else null: binary COPY would wrap a larger one
    (line 4294967297 would land as line 1)."""
    w = _whole(v)
    return w if w is not None and -INT4_MAX - 1 <= w <= INT4_MAX else None


# --------------------------------------------------------------------------- extract

class _EventHead(msgspec.Struct):
    """The fields the ledger indexes; everything else stays in the stored payload."""
    event_id: Any = None
    type: Any = None
    return_id: Any = None
    line: Any = None
    occurred_at: Any = None
    delivered_at: Any = None


_HEAD = msgspec.json.Decoder(_EventHead)
_NO_HEAD = _EventHead()
_UNREADABLE = object()
_HEAD_ERRORS = (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError)


def _lenient(body: bytes) -> Any:
    """The JSON value of bytes msgspec refuses (lone surrogates, numbers beyond float, invalid UTF-8 inside
    strings), read by Python's json with undecodable bytes as surrogate escapes; else ``_UNREADABLE``."""
    try:
        return json.loads(body.decode("utf-8", "surrogateescape"))
    except (ValueError, RecursionError):
        return _UNREADABLE


def _head_of(value: Any) -> _EventHead:
    if not isinstance(value, dict):
        return _NO_HEAD
    return _EventHead(**{k: value.get(k) for k in _EventHead.__struct_fields__})


def event_key(payload: Any) -> str:
    """Dedupe key: the event id, or a hash of the body for an event that has none (still stored)."""
    if isinstance(payload, dict) and isinstance(payload.get("event_id"), str) and payload["event_id"]:
        return payload["event_id"]
    body = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return "noid:" + md5(body.encode()).hexdigest()


def _noid_key(body: bytes) -> str:
    try:
        return event_key(msgspec.json.decode(body))
    except _HEAD_ERRORS:
        pass
    value = _lenient(body)
    if value is not _UNREADABLE:
        try:
            return event_key(value)
        except (ValueError, TypeError, RecursionError):
            pass
    return "noid:" + md5(body).hexdigest()


def _comparable(body: bytes) -> Any:
    """What two deliveries of one event id must share to be the same event: the decoded body without
    ``delivered_at`` (a redelivery differs only there), or the bytes themselves when they cannot be read."""
    try:
        value = msgspec.json.decode(body)
    except _HEAD_ERRORS:
        value = _lenient(body)
        if value is _UNREADABLE:
            return body
    if isinstance(value, dict):
        value.pop("delivered_at", None)
    return value


def _stored_comparable(payload: Any, body: bytes | None) -> Any:
    if body is not None:
        return _comparable(body)
    if isinstance(payload, dict):
        payload.pop("delivered_at", None)
    return payload


def _fingerprint(value: Any) -> str:
    """A short hash of a comparable body: the key suffix of a second body under a known event id."""
    if isinstance(value, bytes):
        data = value
    else:
        try:
            data = msgspec.json.encode(value, order="sorted")
        except (TypeError, ValueError, UnicodeEncodeError, OverflowError):
            data = json.dumps(value, sort_keys=True, default=str).encode()
    return md5(data).hexdigest()[:16]


class _Landing(dict):
    """Raw rows of one chunk by event key (``RAW_COLUMNS`` up to the batch columns), plus what landing
    needs beside them: each row's bytes as delivered, and the event id of each further body (a version)."""

    def __init__(self):
        super().__init__()
        self.original: dict[str, bytes] = {}
        self.version_of: dict[str, str] = {}


def _raw_rows(events: list[Any]) -> _Landing:
    """One row per distinct event key (first delivery wins), with the number of deliveries in this chunk.

    Events are ``msgspec.Raw`` or bytes (what ReBound sent, stored as they are, whatever they hold) or
    already-decoded values. Typed columns follow the validation rules: a field of the wrong JSON type is
    null, a line outside int4 is null. A delivery of a known event id with another body (not just a later
    ``delivered_at``) is kept as a version of its own, keyed ``event_id#<hash>``.
    """
    rows = _Landing()
    for e in events:
        if isinstance(e, (msgspec.Raw, bytes, bytearray, memoryview)):
            body = bytes(e)
            try:
                h = _HEAD.decode(body)
            except _HEAD_ERRORS:  # valid JSON that is not an object, or bytes msgspec refuses
                h = _head_of(_lenient(body))
        else:
            try:
                body = msgspec.json.encode(e)
            except (TypeError, ValueError, UnicodeEncodeError, OverflowError):  # e.g. a lone surrogate
                body = json.dumps(e, default=str).encode()
            h = _head_of(e)
        eid = _text(h.event_id)
        key = eid if eid is not None else _noid_key(body)
        row = rows.get(key)
        if row is not None:
            first = rows.original[key]
            if body == first or _comparable(body) == _comparable(first):
                row[3] += 1
                continue
            key = f"{key}#{_fingerprint(_comparable(body))}"
            row = rows.get(key)
            if row is not None:
                row[3] += 1
                continue
            rows.version_of[key] = eid
        payload, exact, problem = _screen(body)
        occurred = _parse_time(h.occurred_at)
        rows[key] = [key, eid, None if payload is None else raw_json(payload), 1,
                     _parse_time(h.delivered_at) or occurred, _text(h.type), _text(h.return_id), _int4(h.line),
                     occurred, exact, problem]
        rows.original[key] = body
    return rows


def _encode(payload: Any) -> str:
    """JSON text of a decoded value (msgspec: several times faster than json.dumps)."""
    return msgspec.json.encode(payload).decode()


RAW_COLUMNS = (("event_key", "text"), ("event_id", "text"), ("payload", "jsonb"), ("deliveries", "int4"),
               ("delivered_at", "timestamptz"), ("event_type", "text"), ("return_id", "text"), ("line", "int4"),
               ("occurred_at", "timestamptz"), ("body", "bytea"), ("body_problem", "text"),
               ("received_at", "timestamptz"), ("batch_id", "text"))


def land_raw(conn: psycopg.Connection, events: list[Any], *, window_end: datetime,
             batch_id: str) -> tuple[int, int, int]:
    """COPY payloads as received into the append-only raw table; returns (new rows, repeats, rows without id).

    Keys already stored only count another delivery. New rows go straight in with COPY: the
    unique event key still guards against a concurrent writer (the chunk then fails and is retried).
    """
    return _land_rows(conn, _raw_rows(events), len(events), window_end=window_end, batch_id=batch_id)


def _decoded(text: str | None) -> Any:
    """A stored payload (jsonb as text) as a value; text Python cannot read as JSON stays text."""
    if text is None:
        return None
    try:
        return msgspec.json.decode(text)
    except _HEAD_ERRORS:
        try:
            return json.loads(text)
        except (ValueError, RecursionError):
            return text


def _land_rows(conn, rows: dict[str, list], delivered: int, *, window_end: datetime,
               batch_id: str) -> tuple[int, int, int]:
    if not isinstance(rows, _Landing):  # rows built elsewhere: no versions, no bytes to compare
        landing = _Landing()
        landing.update(rows)
        rows = landing
    original, version_of = rows.original, rows.version_of
    # what is stored under the keys this chunk delivers again (a few rows per chunk outside a re-read): the
    # same event only counts a delivery; another body under a known event id becomes a version of its own
    stored = {k: (_decoded(p), b) for k, p, b in conn.execute(
        "SELECT event_key, payload::text, body FROM ledger.raw_event WHERE event_key = ANY(%b::text[])",
        (list(rows),)).fetchall()}
    more: dict[str, int] = defaultdict(int)        # stored key -> deliveries to add
    fresh: dict[str, list] = {}
    bodies: dict[str, bytes | None] = {}
    recheck: list[str] = []
    for key, row in rows.items():
        body, eid = original.get(key), version_of.get(key)
        if key in stored:
            if eid is not None or row[1] is None or key != row[1] or body is None:
                more[key] += row[3]                 # a stored version, or a row keyed by its own body
                continue
            if _comparable(body) == _stored_comparable(*stored[key]):
                more[key] += row[3]                 # the same event again (at-least-once delivery)
                continue
            eid, key = key, f"{key}#{_fingerprint(_comparable(body))}"
            row = [key, *row[1:]]
            recheck.append(key)
        elif eid is not None and eid in stored and body is not None \
                and _comparable(body) == _stored_comparable(*stored[eid]):
            more[eid] += row[3]                     # this chunk's second body is the one stored before
            continue
        if key in fresh:
            fresh[key][3] += row[3]
            continue
        fresh[key], bodies[key] = row, body
        if eid is not None:
            version_of[key] = eid
    if recheck:  # a version stored before (the other body delivered again) only counts a delivery
        for (k,) in conn.execute("SELECT event_key FROM ledger.raw_event WHERE event_key = ANY(%s::text[])",
                                 (recheck,)).fetchall():
            more[k] += fresh.pop(k)[3]
    if more:
        conn.execute("""UPDATE ledger.raw_event r SET deliveries = r.deliveries + x.n
                        FROM unnest(%b::text[], %b::int[]) AS x(k, n) WHERE r.event_key = x.k""",
                     (list(more), list(more.values())))
    new = _copy_raw(conn, [(row, bodies[key]) for key, row in fresh.items()], window_end, batch_id)
    versions = [k for k in fresh if k in version_of]
    if versions:
        # every body of those ids is listed, undecided: their lines wait until a person picks one
        conflicted = sorted({version_of[k] for k in versions})
        conn.execute("""
            INSERT INTO ledger.event_conflict (raw_id, event_id, detected_at, batch_id)
            SELECT raw_id, event_id, %s, %s FROM ledger.raw_event
            WHERE event_key = ANY(%s::text[]) AND event_id IS NOT NULL
            ON CONFLICT (raw_id) DO NOTHING""", (window_end, batch_id, conflicted + versions))
        conn.execute("""UPDATE ledger.event_conflict SET chosen = NULL, decided_at = NULL, decided_by = NULL
                        WHERE event_id = ANY(%s::text[]) AND chosen""", (conflicted,))
    return new, delivered - new, sum(1 for k in rows if k.startswith("noid:"))


# what PostgreSQL refuses in a row it is sent (a number numeric cannot hold, JSON nested too deep, ...)
_REFUSED = (psycopg.errors.DataError, psycopg.errors.ProgramLimitExceeded)


def _copy_raw(conn, rows: list[tuple[list, bytes | None]], window_end: datetime, batch_id: str) -> int:
    """COPY new raw rows in one go. Should PostgreSQL refuse one, the chunk is halved under savepoints
    until the row is found, and that row is stored as its bytes with the reason: the rest goes on."""
    if not rows:
        return 0
    try:
        with conn.transaction():
            return copy_rows(conn, "ledger.raw_event", RAW_COLUMNS,
                             ((*row, window_end, batch_id) for row, _ in rows))
    except _REFUSED as exc:
        if len(rows) > 1:
            mid = len(rows) // 2
            return _copy_raw(conn, rows[:mid], window_end, batch_id) + \
                _copy_raw(conn, rows[mid:], window_end, batch_id)
        row, body = rows[0]
        why = (exc.diag.message_primary or str(exc)).strip()
        kept = [*row[:2], None, *row[3:9], body if body is not None else b"",
                f"PostgreSQL cannot store it as JSON: {why}"]
        with conn.transaction():
            return copy_rows(conn, "ledger.raw_event", RAW_COLUMNS, [(*kept, window_end, batch_id)])


class _ChunkWriter:
    """Lands parsed chunks (raw rows, then the cursor, one transaction each) on a thread of its own, so
    PostgreSQL stores chunk k while this process reads and parses chunk k+1. Chunks land in order;
    the first failure stops the reader at its next hand-over and is raised from ``close``."""

    def __init__(self, conn, *, cursor: str | None, window_end: datetime, batch_id: str, stats: dict):
        import queue
        import threading

        self.conn, self.cursor, self.window_end, self.batch_id, self.stats = conn, cursor, window_end, batch_id, stats
        self.queue: queue.Queue = queue.Queue(maxsize=1)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="extract-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is not None:
                continue  # drain: the reader stops at its next put
            rows, delivered, position = item
            try:
                with self.conn.transaction():
                    if rows:
                        new, repeats, without_id = _land_rows(self.conn, rows, delivered,
                                                              window_end=self.window_end, batch_id=self.batch_id)
                        self.stats["new"] += new
                        self.stats["repeats"] += repeats
                        self.stats["without_id"] += without_id
                    if position is not None and position != self.cursor:
                        _set_cursor(self.conn, position, at=self.window_end, batch_id=self.batch_id)
            except BaseException as exc:  # noqa: BLE001 - handed to the reader thread
                self.error = exc

    def put(self, rows: dict, delivered: int, position: str | None) -> None:
        if self.error is not None:
            self.close()
        self.queue.put((rows, delivered, position))

    def close(self) -> None:
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()
        if self.error is not None:
            raise self.error


def _set_cursor(conn, position: str, *, at: datetime, batch_id: str) -> None:
    conn.execute("""INSERT INTO ledger.sync_cursor (name, position, updated_at, batch_id) VALUES (%s, %s, %s, %s)
                    ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position,
                    updated_at = EXCLUDED.updated_at, batch_id = EXCLUDED.batch_id""",
                 (CURSOR_NAME, position, at, batch_id))


def extract(dsn: str, client, *, window_end: datetime, batch_id: str, chunk: int = 20_000) -> dict:
    """Read the feed from the stored cursor up to the window end; land raw rows, then move the cursor.

    Raw rows and the cursor move commit together per chunk, so a crash re-reads
    at most one chunk, and the event-key dedupe absorbs the re-read.
    """
    stats = {"delivered": 0, "new": 0, "repeats": 0, "without_id": 0, "return_orders": 0, "unknown_returns": 0,
             "invalid_return_orders": 0}
    with _no_cyclic_gc(), connect(dsn) as conn:
        _start_run(conn, batch_id, window_end)
        row = conn.execute("SELECT position FROM ledger.sync_cursor WHERE name = %s", (CURSOR_NAME,)).fetchone()
        conn.commit()  # each chunk below is its own transaction: raw rows and the cursor commit together
        cursor = row[0] if row else None
        buffer: list[Any] = []
        position = cursor
        writer = _ChunkWriter(conn, cursor=cursor, window_end=window_end, batch_id=batch_id, stats=stats)
        problem = None
        try:
            try:
                for page in client.iter_event_pages(cursor, until=window_end, raw=True):
                    buffer.extend(page.events)
                    stats["delivered"] += len(page.events)
                    position = page.next_cursor
                    if len(buffer) >= chunk:
                        writer.put(_raw_rows(buffer), len(buffer), position)
                        buffer = []
            except ReboundError as e:
                # a feed that does not advance, a malformed page, or ReBound down through the retries: keep
                # every page read so far (the cursor stops after the last good one), report it, and let the
                # run go on with what the ledger holds, so one bad page never stops credits already owed
                problem = e
            writer.put(_raw_rows(buffer) if buffer else {}, len(buffer), position)
        finally:
            writer.close()
        _report_feed(conn, problem, position, at=window_end, batch_id=batch_id, stats=stats)
        stats["return_orders"], stats["unknown_returns"], stats["invalid_return_orders"] = fetch_return_orders(
            conn, client, at=window_end, batch_id=batch_id)
    log.info("extract %s: %s", batch_id, stats)
    return stats


FEED_SUBJECT = "feed:rebound"


def _report_feed(conn, problem: Exception | None, position: str | None, *, at: datetime, batch_id: str,
                 stats: dict) -> None:
    """SYNC_STALLED for a feed the sync could not read to its end; resolved by the next complete read."""
    with conn.transaction():
        if problem is None:
            resolve_open(conn, ExceptionType.SYNC_STALLED, [FEED_SUBJECT], at=at, actor=SYSTEM_ACTOR,
                         resolution="the ReBound feed was read to the window end again")
            return
        stats["feed_problem"] = f"{type(problem).__name__}: {problem}"[:500]
        log.error("extract %s: ReBound feed stopped at cursor %s: %s", batch_id, position, problem)
        raise_exceptions(conn, [NewException(
            ExceptionType.SYNC_STALLED, FEED_SUBJECT,
            f"the ReBound feed could not be read past cursor {position!r} ({type(problem).__name__}: "
            f"{str(problem)[:300]}); events up to there are in, the rest is read on the next run")],
            at=at, batch_id=batch_id)


_REFRESH_SQL = """
SELECT DISTINCT return_id FROM (
    -- new events that name a return the ledger does not hold, a line its order does not have (ReBound may
    -- have added it since), or a return whose order failed its own checks (it may be corrected by now)
    SELECT e.return_id FROM ledger.raw_event e
    LEFT JOIN ledger.return_order o ON o.return_id = e.return_id
    LEFT JOIN ledger.return_line l ON l.return_id = e.return_id AND l.line = e.line
    WHERE e.return_id IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM ledger.event_outcome x WHERE x.raw_id = e.raw_id)
      AND (o.return_id IS NULL
           OR (l.return_id IS NULL AND e.line IS NOT NULL AND e.event_type IN ('RECEIVED', 'GRADED', 'DISPOSITIONED'))
           OR e.return_id IN (SELECT j.return_id FROM ledger.return_order_rejected j WHERE j.cleared_at IS NULL))
    UNION ALL
    -- events reported invalid because the return or line was unknown: asked again while the exception is open
    SELECT x.return_id FROM ledger.exception x JOIN ledger.validation_failure f ON f.raw_id = x.raw_id
    WHERE x.status = 'open' AND x.type = 'INVALID_EVENT' AND x.return_id IS NOT NULL
      AND (f.detail LIKE 'return_known:%' OR f.detail LIKE 'line_known:%')
    UNION ALL
    SELECT return_id FROM ledger.exception
    WHERE status = 'open' AND type = 'INVALID_RETURN_ORDER' AND return_id IS NOT NULL
) ids
"""


def fetch_return_orders(conn: psycopg.Connection, client, *, at: datetime | None = None,
                        batch_id: str = SYSTEM_ACTOR) -> tuple[int, int, int]:
    """Fetch from ReBound the return orders that events name and the ledger cannot place: returns it does
    not hold, lines their order lacks, orders that failed their checks, and the returns of open
    INVALID_EVENTs that named an unknown return or line. Returns (orders stored, ids ReBound does not
    know, orders that failed their own checks).

    Each order is checked before anything is stored: one that fails (a quantity of 0 or beyond int4, a
    missing SKU, a line number given twice, wrong types, text no column can hold) is kept as returned in
    ``return_order_rejected`` and raises INVALID_RETURN_ORDER; only that return's events wait. An order
    that passes clears its earlier rejection and releases the events it held; INVALID_EVENTs whose return
    or line now exists are resolved and their events examined again (the same path as a new delivery).
    """
    from returnledger.exception_queue.queue import order_subject, replay_events

    at = at or datetime.now(timezone.utc)
    ids = [r[0] for r in conn.execute(_REFRESH_SQL)]
    ids = [i for i in ids if _ID_RE.match(i)]
    if not ids:
        return 0, 0, 0
    found, missing = client.get_returns(ids)
    good: dict[str, dict] = {}
    bad: list[tuple[str | None, bytes, str, str]] = []
    for o in list(found or []):
        problems = _order_problems(o)
        rid = o.get("return_id") if isinstance(o, dict) else None
        rid = rid if isinstance(rid, str) and _ID_RE.match(rid) else None
        if problems:
            body = _order_bytes(o)
            bad.append((rid, body, md5(body).hexdigest(), "; ".join(problems)))
        elif rid not in good:
            good[rid] = o
    if good:
        known = {r[0] for r in conn.execute("SELECT return_id FROM ledger.return_order WHERE return_id = ANY(%s)",
                                            (list(good),))}
        store_return_orders(conn, [o for r, o in good.items() if r not in known], new=True)
        store_return_orders(conn, [o for r, o in good.items() if r in known])
        # orders that pass now clear their rejection and release what they held
        cleared = sorted({r[0] for r in conn.execute(
            "UPDATE ledger.return_order_rejected SET cleared_at = %s WHERE cleared_at IS NULL"
            " AND return_id = ANY(%s) RETURNING return_id", (at, list(good)))})
        if cleared:
            resolve_open(conn, ExceptionType.INVALID_RETURN_ORDER, [order_subject(r) for r in cleared], at=at,
                         actor=SYSTEM_ACTOR, resolution="released: ReBound's return order now passes its checks")
            replay_events(conn, [r[0] for r in conn.execute(
                "SELECT raw_id FROM ledger.held_event WHERE reason = 'INVALID_RETURN_ORDER' AND return_id = ANY(%s)",
                (cleared,))])
    if bad:
        _reject_orders(conn, bad, at=at, batch_id=batch_id)
    _release_fixed_events(conn, at=at)
    conn.commit()
    return len(good), len(missing or []), len(bad)


def _order_bytes(o: Any) -> bytes:
    try:
        return msgspec.json.encode(o)
    except (TypeError, ValueError, UnicodeEncodeError, OverflowError):
        return json.dumps(o, default=repr).encode()   # lone surrogates become \\ud800 escapes


def _reject_orders(conn, bad: list[tuple[str | None, bytes, str, str]], *, at: datetime, batch_id: str) -> None:
    """Keep failing orders as returned (each distinct version once) and raise INVALID_RETURN_ORDER."""
    from returnledger.exception_queue.queue import order_subject

    sql = """
        INSERT INTO ledger.return_order_rejected (return_id, body, payload, body_md5, problems, first_seen_at,
                                                  last_seen_at, batch_id)
        SELECT x.rid, x.body, x.payload::jsonb, x.md5, x.problems, %(at)s, %(at)s, %(batch)s
        FROM unnest(%(rid)s::text[], %(body)s::bytea[], %(payload)s::text[], %(md5)s::text[], %(problems)s::text[])
             AS x(rid, body, payload, md5, problems)
        ON CONFLICT (return_id, body_md5) DO UPDATE SET last_seen_at = EXCLUDED.last_seen_at,
               problems = EXCLUDED.problems, batch_id = EXCLUDED.batch_id, cleared_at = NULL"""
    distinct = list({(rid, digest): (rid, body, digest, problems) for rid, body, digest, problems in bad}.values())
    params = {"at": at, "batch": batch_id, "rid": [b[0] for b in distinct], "body": [b[1] for b in distinct],
              "md5": [b[2] for b in distinct], "problems": [b[3] for b in distinct]}
    payloads = []
    for b in distinct:
        payload, _exact, problem = _screen(b[1])
        payloads.append(payload.decode() if payload is not None and problem is None else None)
    try:
        with conn.transaction():
            conn.execute(sql, {**params, "payload": payloads})
    except _REFUSED:  # some payload jsonb cannot hold: the bytes alone are the record
        with conn.transaction():
            conn.execute(sql, {**params, "payload": [None] * len(distinct)})
    raise_exceptions(conn, [
        NewException(ExceptionType.INVALID_RETURN_ORDER, order_subject(rid) if rid else f"order:?{digest}",
                     f"ReBound return order {rid or '(no usable return id)'} fails its own checks: {problems}. "
                     "It is kept as returned; its events wait until ReBound corrects it", return_id=rid)
        for rid, _body, digest, problems in distinct], at=at, batch_id=batch_id)


_FIXED_INVALID_SQL = """
WITH fixed AS (
    SELECT x.exception_id, x.raw_id FROM ledger.exception x
    JOIN ledger.validation_failure f ON f.raw_id = x.raw_id
    JOIN ledger.raw_event r ON r.raw_id = x.raw_id
    JOIN ledger.return_order o ON o.return_id = r.return_id
    WHERE x.status = 'open' AND x.type = 'INVALID_EVENT'
      AND (f.detail LIKE 'return_known:%%' OR f.detail LIKE 'line_known:%%')
      AND (r.event_type NOT IN ('RECEIVED', 'GRADED', 'DISPOSITIONED')
           OR EXISTS (SELECT 1 FROM ledger.return_line l WHERE l.return_id = r.return_id AND l.line = r.line))
)
UPDATE ledger.exception e SET status = 'resolved', resolved_at = %s, resolved_by = %s,
       resolution = 'released: ReBound''s return order now has the return and line; the event is examined again'
FROM fixed WHERE e.exception_id = fixed.exception_id
RETURNING fixed.raw_id
"""


def _release_fixed_events(conn, *, at: datetime) -> int:
    """INVALID_EVENTs that named a return or line ReBound has since added: resolved, events replayed."""
    from returnledger.exception_queue.queue import replay_events

    ids = [r[0] for r in conn.execute(_FIXED_INVALID_SQL, (at, SYSTEM_ACTOR))]
    return replay_events(conn, ids)


def _db_text(v: Any, *, empty: bool = False) -> bool:
    """A string PostgreSQL text holds as it is (no NUL, no lone surrogate)."""
    if not isinstance(v, str) or (not v and not empty) or "\x00" in v:
        return False
    if not v.isascii():
        try:
            v.encode()
        except UnicodeEncodeError:
            return False
    return True


def _order_problems(o: Any) -> list[str]:
    """What makes a ReBound return order unusable for the ledger (nothing: it can be stored as it is)."""
    if not isinstance(o, dict):
        return [f"the order is not a JSON object but {type(o).__name__}"]
    problems = []
    rid = o.get("return_id")
    if not isinstance(rid, str) or not _ID_RE.match(rid):
        problems.append(f"return_id {rid!r} is not a ReBound id")
    ref = o.get("order_reference")
    if ref is not None and not _db_text(ref, empty=True):
        problems.append(f"order_reference {ref!r} is not text")
    created = o.get("created_at")
    if created is not None and _parse_time(created) is None:
        problems.append(f"created_at {created!r} is not an ISO-8601 timestamp")
    refs = o.get("amazon_refs")
    if not isinstance(refs, dict):
        problems.append(f"amazon_refs {refs!r} is not an object")
    else:
        if not _db_text(refs.get("returns_notice")):
            problems.append(f"amazon_refs.returns_notice {refs.get('returns_notice')!r} is missing or not text")
        for name in ("rma_id", "vret"):
            v = refs.get(name)
            if v is not None and not _db_text(v, empty=True):
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
        n = _whole(ln.get("line"))
        if n is None or not 1 <= n <= INT4_MAX:
            problems.append(f"lines[{i}].line {ln.get('line')!r} is not a line number (1..{INT4_MAX})")
        elif n in seen:
            problems.append(f"line {n} is listed more than once")
        else:
            seen.add(n)
        name = f"line {n}" if n is not None else f"lines[{i}]"
        if not _db_text(ln.get("sku")):
            problems.append(f"{name}: sku {ln.get('sku')!r} is missing or not text")
        q = _whole(ln.get("quantity"))
        if q is None or not 1 <= q <= INT4_MAX:
            problems.append(f"{name}: quantity {ln.get('quantity')!r} is not a whole number from 1 to {INT4_MAX}")
        reason = ln.get("reason")
        if reason is not None and not _db_text(reason, empty=True):
            problems.append(f"{name}: reason {reason!r} is not text")
    if not problems:
        try:
            msgspec.json.encode(o)
        except (TypeError, ValueError, UnicodeEncodeError, OverflowError) as exc:
            problems.append(f"it holds a value no database can store ({type(exc).__name__})")
    return problems


_ORDER_COLUMNS = (("return_id", "text"), ("order_reference", "text"), ("created_at", "timestamptz"),
                  ("returns_notice", "text"), ("rma_id", "text"), ("vret", "text"), ("payload", "jsonb"))
_LINE_COLUMNS = (("return_id", "text"), ("line", "int4"), ("sku", "text"), ("reason", "text"), ("quantity", "int4"))


def _order_row(o: dict) -> tuple:
    refs = o.get("amazon_refs") or {}
    return (o["return_id"], o.get("order_reference"), _parse_time(o.get("created_at")), refs.get("returns_notice"),
            refs.get("rma_id"), refs.get("vret") or None, raw_json(_storable(msgspec.json.encode(o))))


def _count(v: Any, what: str) -> int:
    """A whole number for an int4 column; anything else is refused (binary COPY would wrap it)."""
    n = _int4(v)
    if n is None:
        raise ValueError(f"{what} {v!r} is not a whole number an int4 column holds")
    return n


def _line_rows(orders: list[dict]) -> list[tuple]:
    """A return order's lines (a line number given twice keeps its first entry)."""
    rows = {}
    for o in orders:
        for ln in o.get("lines") or []:
            n = _count(ln["line"], "line")
            rows.setdefault((o["return_id"], n),
                            (o["return_id"], n, ln["sku"], ln.get("reason") or "", _count(ln["quantity"], "quantity")))
    return list(rows.values())


def store_return_orders(conn: psycopg.Connection, orders: list[dict], source: str = "REBOUND",
                        amazon_return_id: str | None = None, *, new: bool = False) -> None:
    """Upsert return orders and insert their lines as ANNOUNCED (existing lines keep their state).

    Staged with COPY: return orders carry JSON payloads, which array parameters would have to escape.
    ``new=True`` (orders the ledger was just seen not to hold) COPYs straight into the tables; the
    primary keys still stop a concurrent writer, whose transaction then fails and is retried.
    """
    if not orders:
        return
    if new:
        copy_rows(conn, "ledger.return_order", (*_ORDER_COLUMNS, ("source", "text"), ("amazon_return_id", "text")),
                  ((*_order_row(o), source, amazon_return_id) for o in orders))
        copy_rows(conn, "ledger.return_line", (*_LINE_COLUMNS[:4], ("quantity_announced", "int4")),
                  _line_rows(orders))
        return
    conn.execute("""CREATE TEMP TABLE IF NOT EXISTS order_stage (return_id text, order_reference text,
        created_at timestamptz, returns_notice text, rma_id text, vret text, payload jsonb) ON COMMIT DELETE ROWS""")
    conn.execute("""CREATE TEMP TABLE IF NOT EXISTS line_stage (return_id text, line int, sku text, reason text,
        quantity int) ON COMMIT DELETE ROWS""")
    conn.execute("TRUNCATE order_stage, line_stage")
    copy_rows(conn, "order_stage", _ORDER_COLUMNS, (_order_row(o) for o in orders))
    copy_rows(conn, "line_stage", _LINE_COLUMNS, _line_rows(orders))
    conn.execute("""
        INSERT INTO ledger.return_order (return_id, order_reference, created_at, returns_notice, rma_id, vret,
                                         payload, source, amazon_return_id)
        SELECT return_id, order_reference, created_at, returns_notice, rma_id, vret, payload, %s, %s
        FROM order_stage
        ON CONFLICT (return_id) DO UPDATE SET payload = EXCLUDED.payload""", (source, amazon_return_id))
    conn.execute("""
        INSERT INTO ledger.return_line (return_id, line, sku, reason, quantity_announced)
        SELECT return_id, line, sku, reason, quantity FROM line_stage
        ON CONFLICT (return_id, line) DO NOTHING""")


# --------------------------------------------------------------------------- validate

def _whole_sql(col: str) -> str:
    """SQL for the count rule of ``_whole``, read from the stored payload."""
    v = f"(r.payload->'{col}')"
    return f"CASE WHEN jsonb_typeof({v}) = 'number' AND {v}::numeric = trunc({v}::numeric) " \
           f"AND abs({v}::numeric) < 1e15 THEN {v}::numeric::bigint END"


def _number_sql(col: str) -> str:
    """A whole number of any size from the stored payload, clamped into bigint (range checks still fail
    on a clamped value; the detail quotes the number as sent)."""
    v = f"(r.payload->'{col}')"
    return f"CASE WHEN jsonb_typeof({v}) = 'number' AND {v}::numeric = trunc({v}::numeric) " \
           f"THEN least(greatest({v}::numeric, -9e18), 9e18)::bigint END"


def _int4_sql(col: str, low: int = 0) -> str:
    """A whole number from ``low`` to 2^31-1 from the stored payload as int, else null (never an error)."""
    v = f"(r.payload->'{col}')"
    return f"CASE WHEN jsonb_typeof({v}) = 'number' AND {v}::numeric = trunc({v}::numeric) " \
           f"AND {v}::numeric BETWEEN {low} AND {INT4_MAX} THEN {v}::numeric::int END"


def _given_sql(col: str) -> str:
    """The value as sent (JSON text, cut short) for a failure's detail."""
    return f"COALESCE(left((r.payload->'{col}')::text, 40), 'missing')"


def _text_sql(col: str) -> str:
    """SQL for the text rule of ``_text``, read from the stored payload."""
    return f"CASE WHEN jsonb_typeof(r.payload->'{col}') = 'string' AND r.payload->>'{col}' <> '' " \
           f"THEN r.payload->>'{col}' END"


_LINE_TYPES_SQL = "('RECEIVED', 'GRADED', 'DISPOSITIONED')"

# The frame the events suite runs on, built in PostgreSQL from the unprocessed raw rows. The typed columns
# of raw_event were filled at extract by the same rules (wrong JSON type -> null, which fails its check);
# the fields only some event types carry are read from the payload for those types alone. Conflicting
# bodies of one event id and rejected return orders come from their own (small) tables.
VALIDATION_FRAME_SQL = f"""
    SELECT r.raw_id, r.event_id, r.event_type AS type, r.return_id, r.line,
           date_part('epoch', r.occurred_at) AS occurred_at,
           CASE WHEN r.event_type = 'RECEIVED' THEN {_whole_sql('quantity')} END AS quantity,
           CASE WHEN r.event_type = 'GRADED' THEN {_text_sql('grade')} END AS grade,
           CASE WHEN r.event_type = 'DISPOSITIONED' THEN {_text_sql('disposition')} END AS disposition,
           (o.return_id IS NOT NULL OR NULL)::int AS known_return, l.sku, l.reason, m.amazon_reason, s.asin,
           (l.return_id IS NOT NULL)::int AS line_found,
           CASE WHEN r.event_type IN {_LINE_TYPES_SQL} THEN {_number_sql('line')} END AS line_number,
           CASE WHEN r.event_type IN {_LINE_TYPES_SQL} THEN {_given_sql('line')} END AS line_given,
           CASE WHEN r.event_type = 'RECEIVED' THEN {_given_sql('quantity')} END AS quantity_given,
           r.body_problem AS payload_problem, c.versions AS conflict, j.problems AS order_problem
    FROM ledger.raw_event r
    LEFT JOIN ledger.return_order o ON o.return_id = r.return_id
    LEFT JOIN ledger.return_line l ON l.return_id = r.return_id AND l.line = r.line
    LEFT JOIN ledger.reason_mapping m ON m.rebound_reason = l.reason AND m.active
    LEFT JOIN ledger.sku s ON s.sku = l.sku AND s.asin <> ''
    LEFT JOIN (SELECT c1.raw_id, string_agg('raw ' || c2.raw_id, ', ' ORDER BY c2.raw_id) AS versions
               FROM ledger.event_conflict c1
               JOIN ledger.event_conflict c2 ON c2.event_id = c1.event_id AND c2.chosen IS NOT FALSE
               WHERE c1.chosen IS NULL GROUP BY c1.raw_id) c ON c.raw_id = r.raw_id
    LEFT JOIN (SELECT return_id, string_agg(problems, '; ' ORDER BY rejected_id) AS problems
               FROM ledger.return_order_rejected WHERE cleared_at IS NULL AND return_id IS NOT NULL
               GROUP BY return_id) j ON j.return_id = r.return_id
    WHERE NOT EXISTS (SELECT 1 FROM ledger.event_outcome x WHERE x.raw_id = r.raw_id)
      AND NOT EXISTS (SELECT 1 FROM ledger.validation_failure f WHERE f.raw_id = r.raw_id)"""



def read_validation_frame(conn: psycopg.Connection):
    """The unprocessed events as a DataFrame: COPY ... TO STDOUT as CSV into pandas' C reader."""
    from returnledger.screening.suite import frame_from_csv

    buf = bytearray()
    with conn.cursor().copy(f"COPY ({VALIDATION_FRAME_SQL}) TO STDOUT WITH (FORMAT csv, HEADER)") as copy:
        for block in copy:
            buf += block
    return frame_from_csv(bytes(buf))


def _import_gx() -> None:
    import os

    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations  # noqa: F401


def validate(dsn: str, *, batch_id: str, result_dir: Path | None = None) -> dict:
    """Run the GX events suite over every landed, unprocessed event; record per-row failures."""
    import threading

    # GX takes seconds to import: do it while PostgreSQL builds the frame (the import lock makes the
    # validation below wait for it if it is not done yet)
    warm = threading.Thread(target=_import_gx, name="import-gx", daemon=True)
    warm.start()
    from returnledger.screening.suite import validate_frame, write_result

    with connect(dsn) as conn:
        frame = read_validation_frame(conn)
        warm.join()
        outcome = validate_frame(frame)
        if outcome.failed:
            f = outcome.failed
            conn.execute("""
                INSERT INTO ledger.validation_failure (raw_id, batch_id, exception_type, detail, return_id, line, sku)
                SELECT r, %b, t, d, rid, ln, s FROM unnest(%b::bigint[], %b::text[], %b::text[], %b::text[],
                                                           %b::int[], %b::text[]) AS x(r, t, d, rid, ln, s)
                ON CONFLICT (raw_id) DO NOTHING""",
                         (batch_id, [v.raw_id for v in f], [str(v.exception_type) for v in f],
                          [v.detail for v in f], [v.return_id for v in f], [v.line for v in f],
                          [v.sku for v in f]))
        conn.commit()
        pending = conn.execute("SELECT count(*) FROM ledger.validation_failure f JOIN ledger.raw_event r"
                               " USING (raw_id) WHERE NOT EXISTS (SELECT 1 FROM ledger.event_outcome o WHERE o.raw_id = r.raw_id)").fetchone()[0]
        held = conn.execute("SELECT count(*) FROM ledger.held_event").fetchone()[0]
    if result_dir is not None:
        write_result(outcome, result_dir, batch_id)
    stats = {"rows": outcome.rows, "passed": len(outcome.passed), "failed": pending, "held": held}
    log.info("validate %s: %s", batch_id, stats)
    return stats


def choose_branches(stats: dict) -> list[str]:
    """Task ids to follow after validation: quarantine for failures, apply for passes or held events."""
    out = []
    if stats.get("failed"):
        out.append("quarantine")
    if stats.get("passed") or stats.get("held") or not out:
        out.append("apply")
    return out


# --------------------------------------------------------------------------- quarantine

def _hold_subject(etype: ExceptionType, rid: str | None, ln: int | None, event_id: str | None) -> str:
    """The exception a held event waits on: its event id (EVENT_CONFLICT), its return (INVALID_RETURN_ORDER),
    else its line."""
    if etype == ExceptionType.EVENT_CONFLICT:
        return event_subject(event_id)
    if etype == ExceptionType.INVALID_RETURN_ORDER:
        return order_subject(rid)
    return line_subject(rid, ln)


def quarantine(dsn: str, *, batch_id: str, at: datetime) -> dict:
    """One exception per failing row (per line for reference failures, per event id for conflicting bodies,
    per return for a failing return order); hold the events that wait on it."""
    with connect(dsn) as conn, conn.transaction():
        rows = conn.execute("""
            SELECT f.raw_id, f.exception_type, f.detail, f.return_id, f.line, f.sku, r.event_id
            FROM ledger.validation_failure f JOIN ledger.raw_event r USING (raw_id)
            WHERE NOT EXISTS (SELECT 1 FROM ledger.event_outcome o WHERE o.raw_id = r.raw_id) ORDER BY f.raw_id""").fetchall()
        invalid, held = [], []
        for raw_id, etype, detail, rid, ln, sku, event_id in rows:
            if etype == ExceptionType.INVALID_EVENT:
                invalid.append(NewException(ExceptionType.INVALID_EVENT, f"raw:{raw_id}", detail, return_id=rid,
                                            line=ln, sku=sku, raw_id=raw_id))
            else:
                etype = ExceptionType(etype)
                held.append((raw_id, etype, detail, rid, ln, sku, _hold_subject(etype, rid, ln, event_id)))
        raise_exceptions(conn, invalid, at=at, batch_id=batch_id)
        line_ex = {}
        for raw_id, etype, detail, rid, ln, sku, subject in held:
            line_ex.setdefault((etype, subject), NewException(
                etype, subject, detail, return_id=rid, line=None if etype == ExceptionType.INVALID_RETURN_ORDER else ln,
                sku=sku, raw_id=raw_id if etype == ExceptionType.EVENT_CONFLICT else None))
        raise_exceptions(conn, list(line_ex.values()), at=at, batch_id=batch_id)
        _hold(conn, [(raw_id, rid, ln, etype, subject) for raw_id, etype, _, rid, ln, _, subject in held],
              at=at, batch_id=batch_id)
        if invalid:
            record_outcomes(conn, "INVALID", [e.raw_id for e in invalid], [e.detail for e in invalid],
                            batch_id=batch_id, at=at)
    stats = {"invalid": len(invalid), "held": len(held), "lines_held": len(line_ex)}
    log.info("quarantine %s: %s", batch_id, stats)
    return stats


def record_outcomes(conn, status: str, raw_ids: list[int], details: list[str | None] | None, *, batch_id: str,
                    at: datetime, decided: set[int] | None = None) -> None:
    """What became of raw events (raw rows themselves are never rewritten); a held event may move on later.

    ``decided``: the ids among ``raw_ids`` that may already have an outcome, when the caller knows them
    (apply does: only held events); otherwise the table is asked."""
    if not raw_ids:
        return
    details = details if details is not None else [None] * len(raw_ids)
    if decided is None:
        decided = {r[0] for r in conn.execute(
            "SELECT raw_id FROM ledger.event_outcome WHERE raw_id = ANY(%b::bigint[])", (raw_ids,))}
    else:
        decided = decided.intersection(raw_ids)
    if decided:  # a held event moving on: its outcome row is updated
        again = [(i, d) for i, d in zip(raw_ids, details) if i in decided]
        conn.execute("""
            UPDATE ledger.event_outcome o SET status = %b, detail = x.d, batch_id = %b, decided_at = %b
            FROM unnest(%b::bigint[], %b::text[]) AS x(id, d) WHERE o.raw_id = x.id""",
                     (status, batch_id, at, [a[0] for a in again], [a[1] for a in again]))
    # first outcomes (nearly all of them) are appended with COPY
    copy_rows(conn, "ledger.event_outcome", (("raw_id", "int8"), ("status", "text"), ("detail", "text"),
                                              ("batch_id", "text"), ("decided_at", "timestamptz")),
              ((i, status, d, batch_id, at) for i, d in zip(raw_ids, details) if i not in decided))


def _hold(conn, items: list[tuple], *, at: datetime, batch_id: str) -> None:
    """Record held events against the open exception they wait on. Items are (raw_id, return_id, line,
    exception type) for a line's own exception, or with a fifth element: the exception's subject key."""
    if not items:
        return
    conn.execute("""
        INSERT INTO ledger.held_event (raw_id, return_id, line, reason, exception_id, held_at)
        SELECT x.raw_id, x.rid, x.ln, x.reason, e.exception_id, %s
        FROM unnest(%b::bigint[], %b::text[], %b::int[], %b::text[], %b::text[]) AS x(raw_id, rid, ln, reason, subject)
        LEFT JOIN ledger.exception e ON e.status = 'open' AND e.type = x.reason AND e.subject_key = x.subject
        ON CONFLICT (raw_id) DO UPDATE SET reason = EXCLUDED.reason, exception_id = EXCLUDED.exception_id""",
                 (at, [i[0] for i in items], [i[1] for i in items], [i[2] for i in items],
                  [str(i[3]) for i in items],
                  [i[4] if len(i) > 4 else line_subject(i[1], i[2]) for i in items]))
    record_outcomes(conn, "HELD", [i[0] for i in items], [str(i[3]) for i in items], batch_id=batch_id, at=at)


# --------------------------------------------------------------------------- apply

@dataclass
class _Ev:
    raw_id: int
    return_id: str
    line: int | None
    event: Any  # lifecycle.LineEvent


def line_event(p: dict) -> lifecycle.LineEvent:
    """A validated payload as the lifecycle's event."""
    return lifecycle.LineEvent(event_id=p["event_id"], type=EventType(p["type"]),
                               occurred_at=_parse_time(p["occurred_at"]), quantity=p.get("quantity"),
                               grade=p.get("grade"), disposition=p.get("disposition"))


def release_reference_holds(conn: psycopg.Connection, *, at: datetime) -> int:
    """Resolve UNMAPPED_REASON_CODE / SKU_MISMATCH exceptions whose mapping or SKU now exists."""
    fixed = conn.execute("""
        SELECT e.type, e.subject_key FROM ledger.exception e
        JOIN ledger.return_line l ON l.return_id = e.return_id AND l.line = e.line
        WHERE e.status = 'open' AND (
              (e.type = 'UNMAPPED_REASON_CODE'
               AND EXISTS (SELECT 1 FROM ledger.reason_mapping m WHERE m.rebound_reason = l.reason AND m.active))
           OR (e.type = 'SKU_MISMATCH'
               AND EXISTS (SELECT 1 FROM ledger.sku s WHERE s.sku = l.sku AND s.asin <> '')))""").fetchall()
    n = 0
    for etype in (ExceptionType.UNMAPPED_REASON_CODE, ExceptionType.SKU_MISMATCH):
        keys = [k for t, k in fixed if t == etype]
        n += resolve_open(conn, etype, keys, at=at, actor=SYSTEM_ACTOR,
                          resolution="released: the reference data now covers the line")
    return n


# lines (or whole returns: line null) whose events wait: reference holds, undecided EVENT_CONFLICT bodies,
# and returns whose order failed its checks
_BLOCKED_SQL = """
    SELECT return_id, line, type, subject_key FROM ledger.exception
    WHERE status = 'open' AND type IN ('UNMAPPED_REASON_CODE', 'SKU_MISMATCH')
    UNION ALL
    SELECT r.return_id, r.line, 'EVENT_CONFLICT', 'event:' || c.event_id
    FROM ledger.event_conflict c JOIN ledger.raw_event r USING (raw_id)
    WHERE c.chosen IS NULL AND r.return_id IS NOT NULL
    UNION ALL
    SELECT return_id, NULL, type, subject_key FROM ledger.exception
    WHERE status = 'open' AND type = 'INVALID_RETURN_ORDER' AND return_id IS NOT NULL"""
_GRADES = frozenset(g.value for g in Grade)
_DISPOSITIONS = frozenset(d.value for d in Disposition)


def _unfit_detail(etype, ln, occurred_at, quantity, grade, disposition) -> str:
    if etype not in _EVENT_TYPES:
        why = f"unknown event type {etype!r}"
    elif occurred_at is None:
        why = "no occurred_at"
    elif ln is None:
        why = "no valid line number"
    elif etype == EventType.RECEIVED.value:
        why = "no whole-number quantity from 0 to 2147483647"
    elif etype == EventType.GRADED.value:
        why = f"grade {grade!r} is not one of A, B, C, D"
    else:
        why = f"disposition {disposition!r} is unknown"
    return f"apply_guard: the event reached the lifecycle rules without passing validation: {why}"


def _refuse_unfit(conn, unfit: list[tuple], held_ids: set[int], *, batch_id: str, at: datetime) -> int:
    """Events apply cannot use (they bypassed validation): INVALID_EVENT, outcome INVALID, no line touched."""
    ids = [u[0] for u in unfit]
    conn.execute("DELETE FROM ledger.held_event WHERE raw_id = ANY(%b::bigint[])", (ids,))
    raise_exceptions(conn, [NewException(ExceptionType.INVALID_EVENT, f"raw:{i}", d, return_id=rid, line=ln,
                                         raw_id=i) for i, rid, ln, d in unfit], at=at, batch_id=batch_id)
    record_outcomes(conn, "INVALID", ids, [u[3] for u in unfit], batch_id=batch_id, at=at, decided=held_ids)
    return len(ids)


def apply(dsn: str, *, batch_id: str, at: datetime, currency: str = "GBP") -> dict:
    """Lifecycle rules over passing events plus every held event that may now go on."""
    stats = defaultdict(int)
    with _no_cyclic_gc(), connect(dsn) as conn, conn.transaction():
        policy = _load_policy(conn)
        stats["released_exceptions"] = release_reference_holds(conn, at=at)
        # events to (re)apply: new passing events, and held events no longer blocked. Fields only some event
        # types carry are read for those types alone and never cast blindly: a poison value is null here.
        rows = conn.execute(f"""
            WITH blocked AS ({_BLOCKED_SQL})
            SELECT r.raw_id, r.event_id, r.event_type, r.return_id, r.line, r.occurred_at,
                   CASE WHEN r.event_type = 'RECEIVED' THEN {_int4_sql('quantity')} END,
                   CASE WHEN r.event_type = 'GRADED' THEN r.payload->>'grade' END,
                   CASE WHEN r.event_type = 'DISPOSITIONED' THEN r.payload->>'disposition' END,
                   (h.raw_id IS NOT NULL) AS was_held
            FROM ledger.raw_event r LEFT JOIN ledger.held_event h USING (raw_id)
            LEFT JOIN ledger.event_outcome o USING (raw_id)
            LEFT JOIN (SELECT DISTINCT return_id, line FROM blocked WHERE line IS NOT NULL) bl
                   ON bl.return_id = r.return_id AND bl.line = r.line
            LEFT JOIN (SELECT DISTINCT return_id FROM blocked WHERE line IS NULL) br ON br.return_id = r.return_id
            WHERE (o.raw_id IS NULL AND NOT EXISTS (SELECT 1 FROM ledger.validation_failure f
                                                    WHERE f.raw_id = r.raw_id))
               OR (o.status = 'HELD' AND bl.return_id IS NULL AND br.return_id IS NULL
                   AND NOT EXISTS (SELECT 1 FROM ledger.validation_failure f WHERE f.raw_id = r.raw_id
                                     AND f.exception_type IN ('EVENT_CONFLICT', 'INVALID_RETURN_ORDER')))
            ORDER BY r.raw_id""").fetchall()
        blocked_lines: dict[tuple[str, int], tuple[str, str]] = {}
        blocked_returns: dict[str, tuple[str, str]] = {}
        for rid, ln, etype, subject in conn.execute(_BLOCKED_SQL):
            if ln is None:
                blocked_returns.setdefault(rid, (etype, subject))
            else:
                blocked_lines.setdefault((rid, ln), (etype, subject))
        line_events: dict[tuple[str, int], list[_Ev]] = defaultdict(list)
        return_events: dict[str, list[_Ev]] = defaultdict(list)
        to_hold: list[tuple] = []
        unfit: list[tuple[int, str | None, int | None, str]] = []
        held_ids = {r[0] for r in rows if r[-1]}
        for raw_id, event_id, etype, rid, ln, occurred_at, quantity, grade, disposition, _ in rows:
            t = _EVENT_TYPES.get(etype)
            if t is None or occurred_at is None or (etype in LINE_EVENTS and (
                    ln is None or (t is EventType.RECEIVED and quantity is None)
                    or (t is EventType.GRADED and grade not in _GRADES)
                    or (t is EventType.DISPOSITIONED and disposition not in _DISPOSITIONS))):
                unfit.append((raw_id, rid, ln, _unfit_detail(etype, ln, occurred_at, quantity, grade, disposition)))
                continue
            ev = _Ev(raw_id, rid, ln, lifecycle.LineEvent(event_id=event_id, type=t, occurred_at=occurred_at,
                                                         quantity=quantity, grade=grade, disposition=disposition))
            block = blocked_returns.get(rid)
            if block is None and etype not in RETURN_EVENTS:
                block = blocked_lines.get((rid, ln))
            if block is not None:  # rows of a line (or return) with an open holding exception are held
                to_hold.append((raw_id, rid, ln, ExceptionType(block[0]), block[1]))
            elif etype in RETURN_EVENTS:
                return_events[ev.return_id].append(ev)
            else:
                line_events[(ev.return_id, ev.line)].append(ev)
        if unfit:  # a poison record never stops the batch: it is reported and changes nothing
            stats["invalid"] = _refuse_unfit(conn, unfit, held_ids, batch_id=batch_id, at=at)
        lines, line_info = _load_lines(conn, {k[0] for k in line_events} | set(return_events))
        # history rows stream into a COPY while the rules run, so PostgreSQL stores them alongside
        with copy_into(conn, "ledger.line_history", _HISTORY_COLUMNS) as sink:
            changes = _Changes(lambda row: sink.write_row((*row, batch_id, at)))
            # return-level milestones first: they never earn anything (held only with their whole return)
            lines_of: dict[str, list[int]] = defaultdict(list)
            for lrid, ln in lines:
                lines_of[lrid].append(ln)
            for rid, evs in return_events.items():
                evs.sort(key=lambda e: e.event.occurred_at)
                for ln in lines_of.get(rid, []):
                    view = lines[(rid, ln)]
                    for ev in evs:
                        out = lifecycle.apply_event(view, ev.event, policy)
                        changes.record(rid, ln, ev, out)
                        view = out.line
                    lines[(rid, ln)] = view
                changes.done.extend(e.raw_id for e in evs)
            for (rid, ln), evs in line_events.items():
                view = lines.get((rid, ln))
                if view is None:  # cannot happen for validated events; keep them visible instead of guessing
                    to_hold.extend((e.raw_id, rid, ln, ExceptionType.OUT_OF_SEQUENCE) for e in evs)
                    continue
                final, results = lifecycle.replay(view, [e.event for e in evs], policy)
                by_event = {id(e.event): e for e in evs}
                for event, out in results:
                    ev = by_event[id(event)]
                    if out.hold is not None:
                        to_hold.append((ev.raw_id, rid, ln, out.hold))
                        continue
                    changes.record(rid, ln, ev, out)
                    changes.done.append(ev.raw_id)
                lines[(rid, ln)] = final
        stats.update(_write_apply(conn, lines, line_info, changes, to_hold, held_ids, policy, batch_id=batch_id, at=at,
                                  currency=currency))
    log.info("apply %s: %s", batch_id, dict(stats))
    return dict(stats)


_HISTORY_COLUMNS = (("return_id", "text"), ("line", "int4"), ("from_state", "text"), ("to_state", "text"),
                    ("event_id", "text"), ("cause", "text"), ("batch_id", "text"), ("at", "timestamptz"))


class _Changes:
    """What applying a batch changed; history rows go to ``write_history`` as they arise."""

    def __init__(self, write_history):
        self.write_history = write_history
        self.actions: list[tuple[str, int, ActionKind]] = []
        self.raised: list[NewException] = []
        self.ignored: dict[int, str] = {}
        self.done: list[int] = []
        self.touched: set[tuple[str, int]] = set()
        self.received_at: dict[tuple[str, int], datetime] = {}
        self.dispositioned_at: dict[tuple[str, int], datetime] = {}
        self.last_event: dict[tuple[str, int], str] = {}

    def record(self, rid: str, ln: int, ev: _Ev, out) -> None:
        if out.transitions:
            key = (rid, ln)
            event = ev.event
            cause = event.type.value
            for frm, to in out.transitions:
                self.write_history((rid, ln, frm.value, to.value, event.event_id, cause))
            self.touched.add(key)
            self.last_event[key] = event.event_id
            if event.type is EventType.RECEIVED:
                self.received_at[key] = event.occurred_at
            elif event.type is EventType.DISPOSITIONED:
                self.dispositioned_at[key] = event.occurred_at
        elif out.ignored:
            self.ignored[ev.raw_id] = out.ignored
        for kind in out.actions:
            self.actions.append((rid, ln, kind))
        for etype, detail in out.raised:
            self.raised.append(NewException(etype, line_subject(rid, ln), detail, return_id=rid, line=ln))


def _load_policy(conn) -> "lifecycle.Policy":
    from returnledger.reference.catalog import load_policy

    return load_policy(conn)


def _load_lines(conn, return_ids: set[str]) -> tuple[dict[tuple[str, int], Any], dict[tuple[str, int], tuple]]:
    """The lines of these returns as the lifecycle sees them, and what an Amazon action needs of each
    (sku, asin, unit cost, returns notice), read in one pass."""
    rows = conn.execute("""SELECT l.return_id, l.line, l.state, l.quantity_announced, l.quantity_received, l.grade,
                                  l.disposition, l.sku, s.asin, s.unit_cost, o.returns_notice
                           FROM ledger.return_line l JOIN ledger.return_order o USING (return_id)
                           LEFT JOIN ledger.sku s ON s.sku = l.sku
                           WHERE l.return_id = ANY(%b::text[])""", (sorted(return_ids),)).fetchall()
    lines, info = {}, {}
    for r in rows:
        key = (r[0], r[1])
        lines[key] = lifecycle.LineView(_LINE_STATES[r[2]], r[3], r[4], r[5], r[6])
        info[key] = r[7:]
    return lines, info


_LINE_CHANGE_COLUMNS = (("rid", "text"), ("ln", "int4"), ("state", "text"), ("qr", "int4"), ("grade", "text"),
                        ("disp", "text"), ("rat", "timestamptz"), ("dat", "timestamptz"), ("ev", "text"))


def _write_apply(conn, lines, line_info, ch: _Changes, to_hold, held_ids, policy, *, batch_id, at, currency) -> dict:
    keys = sorted(ch.touched)
    if keys:
        # the new line states go in by binary COPY (formatted in C) and update the lines in one join
        conn.execute("""CREATE TEMP TABLE IF NOT EXISTS line_change (rid text, ln int, state text, qr int,
            grade text, disp text, rat timestamptz, dat timestamptz, ev text) ON COMMIT DELETE ROWS""")
        copy_rows(conn, "line_change", _LINE_CHANGE_COLUMNS,
                  ((k[0], k[1], lines[k].state.value, lines[k].quantity_received, lines[k].grade,
                    lines[k].disposition, ch.received_at.get(k), ch.dispositioned_at.get(k), ch.last_event.get(k))
                   for k in keys))
        conn.execute("ANALYZE line_change")
        conn.execute("""
            UPDATE ledger.return_line l SET state = x.state, quantity_received = x.qr, grade = x.grade,
                   disposition = x.disp, received_at = COALESCE(x.rat, l.received_at),
                   dispositioned_at = COALESCE(x.dat, l.dispositioned_at), updated_at = %s, last_event_id = x.ev
            FROM line_change x WHERE l.return_id = x.rid AND l.line = x.ln""", (at,))
    # history rows were COPYed while the rules ran: each event is applied once (only events without an
    # outcome get here, in this one transaction); the unique (line, event, state) key stops a double write
    outbox = write_outbox(conn, lines, line_info, ch.actions, policy, batch_id=batch_id, at=at,
                           currency=currency)
    # holds: OUT_OF_SEQUENCE exceptions for lines that now wait; resolve those whose wait is over
    oos = {}
    for item in to_hold:
        rid, ln, etype = item[1], item[2], item[3]
        if etype == ExceptionType.OUT_OF_SEQUENCE:
            oos.setdefault((rid, ln), NewException(
                ExceptionType.OUT_OF_SEQUENCE, line_subject(rid, ln),
                "an event arrived before the event it follows (e.g. a disposition before the receipt); "
                "held until the missing event arrives", return_id=rid, line=ln))
    raise_exceptions(conn, list(oos.values()) + ch.raised, at=at, batch_id=batch_id)
    _hold(conn, to_hold, at=at, batch_id=batch_id)
    done = ch.done
    if done:
        released = [i for i in done if i in held_ids]   # only held events have a hold row or an outcome yet
        if released:
            conn.execute("DELETE FROM ledger.held_event WHERE raw_id = ANY(%b::bigint[])", (released,))
        applied = [i for i in done if i not in ch.ignored]
        record_outcomes(conn, "APPLIED", applied, None, batch_id=batch_id, at=at, decided=held_ids)
        record_outcomes(conn, "IGNORED", list(ch.ignored), list(ch.ignored.values()), batch_id=batch_id, at=at,
                        decided=held_ids)
    waiting = {(r[0], r[1]) for r in conn.execute(
        "SELECT DISTINCT return_id, line FROM ledger.held_event WHERE reason = 'OUT_OF_SEQUENCE'")}
    cleared = [line_subject(rid, ln) for rid, ln in ch.touched if (rid, ln) not in waiting]
    resolved = resolve_open(conn, ExceptionType.OUT_OF_SEQUENCE, cleared, at=at, actor=SYSTEM_ACTOR,
                            resolution="released: the missing event arrived and the line went on in order")
    return {"applied": len(done) - len(ch.ignored), "ignored": len(ch.ignored), "held": len(to_hold),
            "released_from_hold": len(held_ids & set(done)), "lines_changed": len(keys),
            "out_of_sequence_resolved": resolved, **outbox}


# --------------------------------------------------------------------------- Amazon (returnledger.amazon.push)
# the outbox, pushes and confirm live in amazon_push; re-exported here for the DAG and existing callers
from returnledger.amazon.push import (  # noqa: E402, F401
    PushError,
    build_credit_note,
    confirm,
    push_credits,
    push_inventory,
    write_outbox,
)


def finish_run(dsn: str, *, batch_id: str, window_end: datetime, stats: dict, at: datetime,
               window_start: datetime | None = None) -> None:
    """Book the run: the period it covered, [window_start, window_end), and its counts."""
    with connect(dsn) as conn:
        _start_run(conn, batch_id, window_end)
        conn.execute("""UPDATE ledger.sync_run SET finished_at = %s, stats = %s::jsonb,
                               window_start = COALESCE(%s, window_start) WHERE batch_id = %s""",
                     (at, json.dumps(stats, default=str), window_start, batch_id))
        conn.commit()


def _start_run(conn, batch_id: str, window_end: datetime) -> None:
    conn.execute("""INSERT INTO ledger.sync_run (batch_id, window_end, started_at) VALUES (%s, %s, %s)
                    ON CONFLICT (batch_id) DO NOTHING""", (batch_id, window_end, window_end))
    conn.commit()


def run_window(dsn: str, rebound, amazon, *, window_end: datetime, vendor: dict,
               result_dir: Path | None = None, window_start: datetime | None = None) -> dict:
    """Every step of one sync run in the DAG's order, outside the scheduler (tests, benchmarks)."""
    batch_id = batch_id_for(window_end)
    stats: dict[str, Any] = {"extract": extract(dsn, rebound, window_end=window_end, batch_id=batch_id)}
    stats["validate"] = validate(dsn, batch_id=batch_id, result_dir=result_dir)
    branches = choose_branches(stats["validate"])
    if "quarantine" in branches:
        stats["quarantine"] = quarantine(dsn, batch_id=batch_id, at=window_end)
    if "apply" in branches:
        stats["apply"] = apply(dsn, batch_id=batch_id, at=window_end, currency=vendor.get("currency", "GBP"))
    stats["push_inventory"] = push_inventory(dsn, amazon, warehouse_id=vendor["warehouse_id"],
                                             party_id=vendor["party_id"], at=window_end, batch_id=batch_id)
    stats["push_credits"] = push_credits(dsn, amazon, party_id=vendor["party_id"], at=window_end,
                                         batch_id=batch_id)
    stats["confirm"] = confirm(dsn, amazon, at=window_end, batch_id=batch_id)
    finish_run(dsn, batch_id=batch_id, window_end=window_end, stats=stats, at=window_end,
               window_start=window_start)
    return stats
