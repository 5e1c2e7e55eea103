"""Property: whatever ReBound sends, the sync stores it, decides it once, and moves no line on it.

Hypothesis builds a hostile feed for a few well-formed returns: events with wrong types, numbers no
column holds (line 2^32+1 would wrap to line 1), NUL, lone surrogate escapes, bytes that are not UTF-8,
JSON that is no object or no JSON at all, a known event id with another body, identical redeliveries,
lines and returns ReBound does not have; and return orders that fail their own checks. The pages go
through extract -> validate -> quarantine -> apply on real PostgreSQL (two runs, the feed split between
them), then every EVENT_CONFLICT is settled and every INVALID_EVENT resolved the way a person would in the
console, and a third run replays what that released. After each run:

- no step raised;
- every delivered byte is stored: the exact bytes (``raw_event.body``) or the same JSON value (``payload``),
  and the deliveries counted add up to what was delivered;
- every stored event has exactly one outcome, and each one that waits or failed has its exception;
- no line moved on a bad event: every line transition names a good event, and no second body of an event
  id was applied.

The feed is served by a stand-in client (``hostile_feed.FakeRebound``): the subject is the sync's handling
of bytes, not HTTP. Each example runs in a database of its own, cloned from a migrated template.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
from datetime import UTC, datetime
from decimal import Decimal

import psycopg
import pytest
from hostile_feed import FakeRebound, event, order, raw, run_pass, seed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from returnledger.exception_queue import actions as ex
from returnledger.exception_queue.queue import ExceptionActionError
from returnledger.store import db, migrate
from returnledger_dev import scratch_db

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MAX_EXAMPLES = int(os.environ.get("RETURNLEDGER_HOSTILE_EXAMPLES", "40"))
AT = datetime(2026, 10, 25, tzinfo=UTC)
_counter = itertools.count()
RAN = {"examples": 0, "events": 0, "bad_events": 0}


@pytest.fixture(scope="module")
def template(pg_server):
    """A migrated database with reference data, cloned for every example."""
    dsn = scratch_db.create_scratch_database(pg_server, "rl_hostile_tpl")
    migrate.migrate(dsn)
    seed(dsn)
    yield dsn
    scratch_db.drop_database(pg_server, dsn)
    print(
        f"\nhostile-input property: {RAN['examples']} examples, {RAN['events']} events delivered, "
        f"{RAN['bad_events']} of them hostile"
    )


def _clone(server: str, template_dsn: str) -> str:
    name = f"rl_hostile_{next(_counter)}_{os.getpid()}"
    tpl = psycopg.conninfo.conninfo_to_dict(template_dsn)["dbname"]
    with psycopg.connect(server, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}"')
        c.execute(f'CREATE DATABASE "{name}" TEMPLATE "{tpl}"')
    return scratch_db.with_database(server, name)


# --------------------------------------------------------------------------- the hostile feed

JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=4),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.integers(-3, 3), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
)
HUGE = st.sampled_from([2**31, 2**32 + 1, 2**32, -(2**32) + 1, 10**20, 1e300, 2.5, 0, -1])
# byte fragments spliced into an event body ("note" field): what no database text column can hold
FRAGMENTS = st.sampled_from(
    [
        b'"\\ud800"',
        b'"a\\udfff"',
        b'"\\ud83d x"',
        b'"caf\xe9"',
        b'"\xff\xfe"',
        b'"\xed\xa0\x80"',
        b"1e999999",
        b"NaN",
        b"-Infinity",
        b'"\\u0000\\ud800"',
    ]
)
NON_OBJECTS = st.sampled_from(
    [
        b'[1, 2, "{p}"]',
        b'"{p}"',
        b"null",
        b'{"event_id": "{p}-trunc"',
        b"\xfe\xff{p}",
        b'{"event_id": "{p}-nested", "x": ' + b"[" * 200 + b"]" * 200 + b"}",
        b'{"event_id": {"id": "{p}"}, "type": "RECEIVED"}',
    ]
)
BAD_ORDERS = st.sampled_from(
    [
        "quantity_zero",
        "quantity_huge",
        "missing_sku",
        "duplicate_line",
        "line_text",
        "lines_not_list",
        "not_object",
        "refs_wrong",
        "sku_nul",
        "reason_surrogate",
        "created_bad",
    ]
)


def _bad_order(kind: str, rid: str):
    o = order(rid, [(1, 1), (2, 1)])
    ln = o["lines"][0]
    if kind == "quantity_zero":
        ln["quantity"] = 0
    elif kind == "quantity_huge":
        ln["quantity"] = 2**32 + 1
    elif kind == "missing_sku":
        del ln["sku"]
    elif kind == "duplicate_line":
        o["lines"][1]["line"] = 1
    elif kind == "line_text":
        ln["line"] = "1"
    elif kind == "lines_not_list":
        o["lines"] = {"1": ln}
    elif kind == "not_object":
        return [rid, "not an order"]
    elif kind == "refs_wrong":
        o["amazon_refs"] = ["RN"]
    elif kind == "sku_nul":
        ln["sku"] = "SKU\x00"
    elif kind == "reason_surrogate":
        ln["reason"] = "FAULTY\ud800"
    elif kind == "created_bad":
        o["created_at"] = 20261001
    return o


@st.composite
def feeds(draw):
    p = f"H{next(_counter)}"
    good_rids = [f"{p}-R{i}" for i in range(draw(st.integers(1, 3)))]
    orders = {rid: order(rid, [(1, 1), (2, 2)]) for rid in good_rids}
    good: list[bytes] = []  # well-formed events of known lines, in lifecycle order
    good_ids: set[str] = set()
    originals: list[dict] = []
    for rid in good_rids:
        for ln in (1, 2):
            steps = [
                ("RECEIVED", {"quantity": ln}),
                ("GRADED", {"grade": "B"}),
                ("DISPOSITIONED", {"disposition": "QUARANTINED"}),
            ][: draw(st.integers(0, 3))]
            for i, (t, extra) in enumerate(steps):
                e = event(f"{p}-{rid[-2:]}-{ln}-{t[:2]}", t, rid, ln, minute=10 * i + ln, **extra)
                originals.append(e)
                good.append(raw(e))
                good_ids.add(e["event_id"])
    bad: list[bytes] = []
    late: list[bytes] = []  # second bodies and redeliveries: after their first delivery
    conflicts = 0
    for i in range(draw(st.integers(1, 8))):
        eid, rid = f"{p}-X{i}", draw(st.sampled_from(good_rids))
        kind = draw(
            st.sampled_from(
                [
                    "junk_field",
                    "huge_line",
                    "huge_quantity",
                    "fragment",
                    "nul_return",
                    "non_object",
                    "unknown_line",
                    "unknown_return",
                    "conflict",
                    "redelivery",
                    "no_id",
                ]
            )
        )
        base = event(eid, "RECEIVED", rid, 1, minute=50 + i, quantity=1)
        if kind == "junk_field":
            field = draw(st.sampled_from(["line", "quantity", "type", "occurred_at", "return_id"]))
            value = draw(JUNK)
            if (
                field in ("line", "quantity")
                and isinstance(value, (int, float))
                and not isinstance(value, bool)
            ):
                value = [value]  # a number could be valid: wrap it so the event is certainly bad
            if field == "type" and value in (
                "RECEIVED",
                "GRADED",
                "DISPOSITIONED",
                "RETURN_CREATED",
                "IN_TRANSIT",
            ):
                value = [value]
            if field == "return_id" and isinstance(value, str):
                value = [value]
            bad.append(raw({**base, field: value}))
        elif kind == "huge_line":
            bad.append(raw({**base, "line": draw(HUGE.filter(lambda v: v not in (1, 2)))}))
        elif kind == "huge_quantity":
            bad.append(
                raw({**base, "quantity": draw(st.sampled_from([2**31, 2**32 + 1, 10**20, -1, 1.5, 1e300]))})
            )
        elif kind == "fragment":
            frag = draw(FRAGMENTS)
            # the fragment alone would be harmless in a note (NUL is kept as text): pair it with a bad field
            bad.append(raw({**base, "quantity": "one"})[:-1] + b',"note":' + frag + b"}")
        elif kind == "nul_return":
            bad.append(raw({**base, "return_id": rid + "\x00"}))
        elif kind == "non_object":
            bad.append(draw(NON_OBJECTS).replace(b"{p}", f"{p}-{i}".encode()))
        elif kind == "unknown_line":
            bad.append(raw({**base, "line": 99}))
        elif kind == "unknown_return":
            bad.append(raw({**base, "return_id": f"{p}-NOPE"}))
        elif kind == "no_id":
            bad.append(raw({k: v for k, v in base.items() if k != "event_id"} | {"note": eid}))
        elif kind == "conflict" and originals:
            first = draw(st.sampled_from(originals))
            change = draw(
                st.sampled_from(
                    [
                        {"note": "second body"},
                        {"occurred_at": "2026-10-09T00:00:00Z"},
                        {"grade": "C"},
                        {"quantity": 7},
                        {"line": 2 if first.get("line") == 1 else 1},
                    ]
                )
            )
            late.append(raw({**first, **change}))
            conflicts += 1
        elif kind == "redelivery" and originals:
            first = draw(st.sampled_from(originals))
            late.append(raw({**first, "delivered_at": "2026-10-09T12:00:00Z"}))
        else:
            bad.append(raw({**base, "line": [1]}))
    hostile_rids = []
    for i in range(draw(st.integers(0, 2))):
        rid = f"{p}-B{i}"
        orders[rid] = _bad_order(draw(BAD_ORDERS), rid)
        hostile_rids.append(rid)
        bad.append(raw(event(f"{p}-B{i}-rc", "RETURN_CREATED", rid)))
        bad.append(raw(event(f"{p}-B{i}-recv", "RECEIVED", rid, 1, minute=5, quantity=1)))
    # the hostile events land among the good ones; second bodies and redeliveries come after all of them
    feed = list(good)
    for b in bad:
        feed.insert(draw(st.integers(0, len(feed))), b)
    feed += late
    cut = draw(st.integers(0, len(feed)))
    runs = [feed[:cut], feed[cut:]]
    pages = [[run[i : i + 3] for i in range(0, len(run), 3)] for run in runs]
    return {
        "orders": orders,
        "pages": pages,
        "good_ids": good_ids,
        "n_bad": len(bad) + conflicts,
        "delivered": feed,
        "hostile_rids": hostile_rids,
    }


# --------------------------------------------------------------------------- the properties


def _canon(v):
    """A JSON value in a form that compares equal however its numbers were spelled (1e300, 1000...0)."""
    if isinstance(v, dict):
        return ("{", tuple(sorted((k, _canon(x)) for k, x in v.items() if k != "delivered_at")))
    if isinstance(v, list):
        return ("[", tuple(_canon(x) for x in v))
    if isinstance(v, Decimal):
        return ("n", str(v.normalize()))
    return v


_UNREADABLE = ("unreadable",)


def _comparable(body: bytes):
    """The JSON value of a delivery without delivered_at (a redelivery differs only there)."""
    try:
        return _canon(json.loads(body.decode("utf-8"), parse_float=Decimal, parse_int=Decimal))
    except (ValueError, RecursionError, ArithmeticError):
        return _UNREADABLE


def _check(dsn: str, feed: dict, delivered: list[bytes]) -> None:
    with db.connect(dsn) as conn:
        stored = conn.execute(
            "SELECT raw_id, event_key, payload::text, body, deliveries FROM ledger.raw_event"
        ).fetchall()
        bodies = {bytes(b) for _, _, _, b, _ in stored if b is not None}
        values = set()
        for _, _, payload, body, _ in stored:
            if body is None:
                values.add(_comparable(payload.encode()))
        # every delivered byte is stored: as bytes, or as the same JSON value (a redelivery: the same event)
        for b in delivered:
            assert b in bodies or (_comparable(b) is not _UNREADABLE and _comparable(b) in values), b[:200]
        assert sum(r[4] for r in stored) == len(delivered), "every delivery counted once"
        # every stored event has exactly one outcome, and what waits or failed is in the queue
        assert (
            conn.execute(
                "SELECT count(*) FROM ledger.raw_event r WHERE NOT EXISTS"
                " (SELECT 1 FROM ledger.event_outcome o WHERE o.raw_id = r.raw_id)"
            ).fetchone()[0]
            == 0
        )
        assert (
            conn.execute(
                "SELECT count(*) FROM ledger.event_outcome o WHERE NOT EXISTS"
                " (SELECT 1 FROM ledger.raw_event r WHERE r.raw_id = o.raw_id)"
            ).fetchone()[0]
            == 0
        )
        assert (
            conn.execute("""SELECT count(*) FROM ledger.event_outcome o
                            WHERE o.status = 'HELD' AND NOT EXISTS (
                                 SELECT 1 FROM ledger.held_event h
                                 JOIN ledger.exception e USING (exception_id)
                                 WHERE h.raw_id = o.raw_id AND e.status = 'open')""").fetchone()[0]
            == 0
        )
        assert (
            conn.execute("""SELECT count(*) FROM ledger.event_outcome o
                            WHERE o.status = 'INVALID' AND NOT EXISTS (
                                 SELECT 1 FROM ledger.exception e
                                 WHERE e.raw_id = o.raw_id)""").fetchone()[0]
            == 0
        )
        # no line moved on a bad event; no second body of an event id was applied
        moved = {r[0] for r in conn.execute("SELECT DISTINCT event_id FROM ledger.line_history")}
        assert moved <= feed["good_ids"], moved - feed["good_ids"]
        assert (
            conn.execute("""SELECT count(*) FROM ledger.raw_event r
                               JOIN ledger.event_conflict c USING (raw_id)
                               JOIN ledger.event_outcome o USING (raw_id)
                               WHERE o.status = 'APPLIED' AND c.chosen IS NOT TRUE
                               AND r.event_key LIKE '%#%'""").fetchone()[0]
            == 0
        )
        assert (
            conn.execute(
                "SELECT count(*) FROM ledger.return_line WHERE return_id = ANY(%s)", (feed["hostile_rids"],)
            ).fetchone()[0]
            == 0
        )
        assert conn.execute("SELECT * FROM ledger.audit_orphans()").fetchall() == []


def _settle(dsn: str) -> None:
    """What a person does in the console: keep one body of each conflict (the applied one when there is
    one), resolve every INVALID_EVENT (its event is examined again)."""
    with db.connect(dsn) as conn:
        conflicts = conn.execute(
            "SELECT exception_id FROM ledger.exception WHERE status = 'open'"
            " AND type = 'EVENT_CONFLICT' ORDER BY 1"
        ).fetchall()
        invalid = conn.execute(
            "SELECT exception_id FROM ledger.exception WHERE status = 'open'"
            " AND type = 'INVALID_EVENT' ORDER BY 1"
        ).fetchall()
    for (exc_id,) in conflicts:
        with db.connect(dsn) as conn:
            versions = conn.execute(
                """
                SELECT c.raw_id, COALESCE(o.status, 'NEW') FROM ledger.exception e
                JOIN ledger.event_conflict c ON 'event:' || c.event_id = e.subject_key
                LEFT JOIN ledger.event_outcome o ON o.raw_id = c.raw_id
                WHERE e.exception_id = %s AND c.chosen IS NOT FALSE ORDER BY c.raw_id""",
                (exc_id,),
            ).fetchall()
        keep = next((r for r, s in versions if s == "APPLIED"), versions[-1][0])
        ex.pick_event_body(dsn, exc_id, keep, actor="property", at=AT, why="hypothesis")
    for (exc_id,) in invalid:
        # closed meanwhile (a superseded body's INVALID_EVENT)
        with contextlib.suppress(ExceptionActionError):
            ex.resolve_exception(dsn, exc_id, actor="property", resolution="asked ReBound", at=AT)


@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(feed=feeds())
def test_hostile_feed_is_stored_decided_once_and_moves_no_line(pg_server, template, feed):
    dsn = _clone(pg_server, template)
    try:
        client = FakeRebound(feed["orders"])
        delivered: list[bytes] = []
        for day, run in ((3, feed["pages"][0]), (4, feed["pages"][1])):
            client.serve(*run)
            delivered += [e for page in run for e in page]
            run_pass(dsn, client, day=day)
            _check(dsn, feed, delivered)
        _settle(dsn)
        run_pass(dsn, client, day=5)
        _check(dsn, feed, delivered)
        with db.connect(dsn) as conn:
            assert (
                conn.execute(
                    "SELECT count(*) FROM ledger.exception WHERE status = 'open' AND type = 'EVENT_CONFLICT'"
                ).fetchone()[0]
                == 0
            )
        RAN["examples"] += 1
        RAN["events"] += len(delivered)
        RAN["bad_events"] += feed["n_bad"]
    finally:
        scratch_db.drop_database(pg_server, dsn)
