"""Raw ReBound events as received: screening the bytes, the event key, landing rows with COPY.

Every delivery is kept (``ledger.raw_event`` is append-only): bytes jsonb cannot hold are kept beside a
visible payload, a redelivery only counts, and another body under a known event id becomes a version of
its own (a conflict of bodies a person decides).
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime
from hashlib import md5
from typing import Any

import msgspec
import psycopg

from returnledger.fields import INT4_MAX, INT4_MIN, as_int4, as_text, parse_time
from returnledger.intake.raw_body import screen_body
from returnledger.store.db import copy_rows, raw_json, unit_of_work


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
        self.version_of: dict[str, str | None] = {}


def raw_rows(events: list[Any]) -> _Landing:
    """One row per distinct event key (first delivery wins), with the number of deliveries in this chunk.

    Events are ``msgspec.Raw`` or bytes (what ReBound sent, stored as they are, whatever they hold) or
    already-decoded values. Typed columns follow the validation rules: a field of the wrong JSON type is
    null, a line outside int4 is null. A delivery of a known event id with another body (not just a later
    ``delivered_at``) is kept as a version of its own, keyed ``event_id#<hash>``.
    """
    rows = _Landing()
    original, version_of, get = rows.original, rows.version_of, rows.get
    raw_types = (msgspec.Raw, bytes, bytearray, memoryview)
    decode_head = _HEAD.decode
    for e in events:
        if isinstance(e, raw_types):
            body = bytes(e)
            try:
                h = decode_head(body)
            except _HEAD_ERRORS:  # valid JSON that is not an object, or bytes msgspec refuses
                h = _head_of(_lenient(body))
        else:
            try:
                body = msgspec.json.encode(e)
            except (TypeError, ValueError, UnicodeEncodeError, OverflowError):  # e.g. a lone surrogate
                body = json.dumps(e, default=str).encode()
            h = _head_of(e)
        eid = as_text(h.event_id)
        key = eid if eid is not None else _noid_key(body)
        row = get(key)
        if row is not None:
            first = original[key]
            if body == first or _comparable(body) == _comparable(first):
                row[3] += 1
                continue
            key = f"{key}#{_fingerprint(_comparable(body))}"
            row = get(key)
            if row is not None:
                row[3] += 1
                continue
            version_of[key] = eid
        payload, exact, problem = screen_body(body)
        occurred = parse_time(h.occurred_at)
        line = h.line
        rows[key] = [
            key,
            eid,
            None if payload is None else raw_json(payload),
            1,
            parse_time(h.delivered_at) or occurred,
            as_text(h.type),
            as_text(h.return_id),
            line if type(line) is int and INT4_MIN <= line <= INT4_MAX else as_int4(line),
            occurred,
            exact,
            problem,
        ]
        original[key] = body
    return rows


RAW_COLUMNS = (
    ("event_key", "text"),
    ("event_id", "text"),
    ("payload", "jsonb"),
    ("deliveries", "int4"),
    ("delivered_at", "timestamptz"),
    ("event_type", "text"),
    ("return_id", "text"),
    ("line", "int4"),
    ("occurred_at", "timestamptz"),
    ("body", "bytea"),
    ("body_problem", "text"),
    ("received_at", "timestamptz"),
    ("batch_id", "text"),
)


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


def land_rows(
    conn, rows: dict[str, list], delivered: int, *, window_end: datetime, batch_id: str
) -> tuple[int, int, int]:
    """COPY a chunk's raw rows (``raw_rows``) into the append-only raw table; returns (new rows, repeats,
    rows without id). Keys already stored only count another delivery. New rows go straight in with COPY:
    the unique event key still guards against a concurrent writer (the chunk then fails and is retried).
    """
    if not isinstance(rows, _Landing):  # rows built elsewhere: no versions, no bytes to compare
        landing = _Landing()
        landing.update(rows)
        rows = landing
    original, version_of = rows.original, rows.version_of
    without_id = sum(1 for k in rows if k.startswith("noid:"))
    if conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS:
        # Nearly every chunk holds only keys never stored (a redelivery comes within its chunk, which
        # raw_rows counts): COPY it whole, under a savepoint, without first looking its keys up. A key stored
        # before stops that COPY (the unique key) and nothing of it stays; the chunk then takes the lookup
        # below, which counts the delivery or keeps another body as a version. Outside a transaction the
        # lookup runs first, as a caller that commits on its own expects.
        try:
            with conn.transaction():
                new = _copy_raw(
                    conn, [(row, original.get(k)) for k, row in rows.items()], window_end, batch_id
                )
                _note_versions(conn, [k for k in rows if k in version_of], version_of, window_end, batch_id)
            return new, delivered - new, without_id
        except psycopg.errors.UniqueViolation:
            pass
    # what is stored under the keys this chunk delivers again (a few rows per chunk outside a re-read): the
    # same event only counts a delivery; another body under a known event id becomes a version of its own
    stored = {
        k: (_decoded(p), b)
        for k, p, b in conn.execute(
            "SELECT event_key, payload::text, body FROM ledger.raw_event WHERE event_key = ANY(%b::text[])",
            (list(rows),),
        ).fetchall()
    }
    more: dict[str, int] = defaultdict(int)  # stored key -> deliveries to add
    fresh: dict[str, list] = {}
    bodies: dict[str, bytes | None] = {}
    recheck: list[str] = []
    for key, row in rows.items():
        body, eid = original.get(key), version_of.get(key)
        if key in stored:
            if eid is not None or row[1] is None or key != row[1] or body is None:
                more[key] += row[3]  # a stored version, or a row keyed by its own body
                continue
            if _comparable(body) == _stored_comparable(*stored[key]):
                more[key] += row[3]  # the same event again (at-least-once delivery)
                continue
            eid, key = key, f"{key}#{_fingerprint(_comparable(body))}"
            row = [key, *row[1:]]
            recheck.append(key)
        elif (
            eid is not None
            and eid in stored
            and body is not None
            and _comparable(body) == _stored_comparable(*stored[eid])
        ):
            more[eid] += row[3]  # this chunk's second body is the one stored before
            continue
        if key in fresh:
            fresh[key][3] += row[3]
            continue
        fresh[key], bodies[key] = row, body
        if eid is not None:
            version_of[key] = eid
    if recheck:  # a version stored before (the other body delivered again) only counts a delivery
        for (k,) in conn.execute(
            "SELECT event_key FROM ledger.raw_event WHERE event_key = ANY(%s::text[])", (recheck,)
        ).fetchall():
            more[k] += fresh.pop(k)[3]
    if more:
        conn.execute(
            """UPDATE ledger.raw_event r SET deliveries = r.deliveries + x.n
                        FROM unnest(%b::text[], %b::int[]) AS x(k, n) WHERE r.event_key = x.k""",
            (list(more), list(more.values())),
        )
    new = _copy_raw(conn, [(row, bodies[key]) for key, row in fresh.items()], window_end, batch_id)
    _note_versions(conn, [k for k in fresh if k in version_of], version_of, window_end, batch_id)
    return new, delivered - new, without_id


def _note_versions(conn, versions: list[str], version_of: dict, window_end: datetime, batch_id: str) -> None:
    """Every body of the event ids these new versions belong to is listed, undecided: their lines wait
    until a person picks one."""
    if not versions:
        return
    conflicted = sorted({version_of[k] for k in versions}, key=str)
    conn.execute(
        """
        INSERT INTO ledger.event_conflict (raw_id, event_id, detected_at, batch_id)
        SELECT raw_id, event_id, %s, %s FROM ledger.raw_event
        WHERE event_key = ANY(%s::text[]) AND event_id IS NOT NULL
        ON CONFLICT (raw_id) DO NOTHING""",
        (window_end, batch_id, conflicted + versions),
    )
    conn.execute(
        """UPDATE ledger.event_conflict SET chosen = NULL, decided_at = NULL, decided_by = NULL
                    WHERE event_id = ANY(%s::text[]) AND chosen""",
        (conflicted,),
    )


# what PostgreSQL refuses in a row it is sent (a number numeric cannot hold, JSON nested too deep, ...)
REFUSED = (psycopg.errors.DataError, psycopg.errors.ProgramLimitExceeded)


def _copy_raw(conn, rows: list[tuple[list, bytes | None]], window_end: datetime, batch_id: str) -> int:
    """COPY new raw rows in one go. Should PostgreSQL refuse one, the chunk is halved under savepoints
    until the row is found, and that row is stored as its bytes with the reason: the rest goes on."""
    if not rows:
        return 0
    try:
        with unit_of_work(conn):
            return copy_rows(
                conn, "ledger.raw_event", RAW_COLUMNS, ((*row, window_end, batch_id) for row, _ in rows)
            )
    except REFUSED as exc:
        if len(rows) > 1:
            mid = len(rows) // 2
            return _copy_raw(conn, rows[:mid], window_end, batch_id) + _copy_raw(
                conn, rows[mid:], window_end, batch_id
            )
        row, body = rows[0]
        why = (exc.diag.message_primary or str(exc)).strip()
        kept = [
            *row[:2],
            None,
            *row[3:9],
            body if body is not None else b"",
            f"PostgreSQL cannot store it as JSON: {why}",
        ]
        with unit_of_work(conn):
            return copy_rows(conn, "ledger.raw_event", RAW_COLUMNS, [(*kept, window_end, batch_id)])
