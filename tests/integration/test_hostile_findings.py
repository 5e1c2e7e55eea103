"""One regression test per finding of issue 12 (hostile input), each against real PostgreSQL.

Each test fails on the code before the fix: line numbers wrapped by binary COPY, a second body of an
event id dropped, INVALID final and return orders fetched once, and poison records (a text quantity on
GRADED, malformed return orders, bytes that are not UTF-8, lone surrogate escapes) stopping a whole task.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hostile_feed import FakeRebound, event, one, order, raw, rows, run_pass, seed

from returnledger.exception_queue import actions as ex
from returnledger.exception_queue.queue import ExceptionActionError
from returnledger.intake.feed import extract
from returnledger.ledger.runs import SYSTEM_ACTOR
from returnledger.moment import RunMoment

pytestmark = pytest.mark.integration

AT = datetime(2026, 10, 20, tzinfo=UTC)


@pytest.fixture
def dsn(fresh_db):
    seed(fresh_db)
    return fresh_db


def _state(dsn, rid, line):
    return one(dsn, "SELECT state FROM ledger.return_line WHERE return_id = %s AND line = %s", (rid, line))


def _outcome(dsn, event_key):
    return one(
        dsn,
        "SELECT COALESCE(o.status, 'NEW') FROM ledger.raw_event r LEFT JOIN ledger.event_outcome o"
        " USING (raw_id) WHERE r.event_key = %s",
        (event_key,),
    )


def _open(dsn, type_):
    return rows(
        dsn,
        "SELECT exception_id, subject_key, detail, return_id, line FROM ledger.exception"
        " WHERE type = %s AND status = 'open' ORDER BY exception_id",
        (type_,),
    )


def _all_decided(dsn):
    assert one(dsn, "SELECT count(*) FROM ledger.raw_event_status WHERE status = 'NEW'") == 0


# --- 1. integers wrap --------------------------------------------------------------------------------


def test_a_line_beyond_int4_is_invalid_and_never_moves_line_1(dsn):
    rb = FakeRebound({"R-1": order("R-1", [(1, 1)])})
    rb.serve(
        [
            raw(event("wrap", "RECEIVED", "R-1", 4294967297, quantity=1)),
            raw(event("neg", "RECEIVED", "R-1", -4294967295, quantity=1)),
        ]
    )
    run_pass(dsn, rb, day=3)
    assert _state(dsn, "R-1", 1) == "ANNOUNCED"
    assert rows(dsn, "SELECT event_key, line FROM ledger.raw_event ORDER BY 1") == [
        ("neg", None),
        ("wrap", None),
    ]
    details = {r[1]: r[2] for r in _open(dsn, "INVALID_EVENT")}
    wrap = details[f"raw:{one(dsn, 'SELECT raw_id FROM ledger.raw_event WHERE event_key = %s', ('wrap',))}"]
    assert wrap == "line_in_range: line 4294967297 is out of range (1..2147483647)"
    assert sorted(d.split(":")[0] for d in details.values()) == ["line_in_range", "line_positive"]
    assert one(dsn, "SELECT count(*) FROM ledger.line_history") == 0
    _all_decided(dsn)


def test_an_announced_quantity_beyond_int4_is_an_invalid_return_order_not_quantity_1(dsn):
    rb = FakeRebound({"R-2": order("R-2", [(1, 4294967297)])})
    rb.serve(
        [
            raw(event("r2-rc", "RETURN_CREATED", "R-2")),
            raw(event("r2-recv", "RECEIVED", "R-2", 1, quantity=1)),
        ]
    )
    run_pass(dsn, rb, day=3)
    assert rows(dsn, "SELECT * FROM ledger.return_line WHERE return_id = 'R-2'") == []
    ((_, subject, detail, rid, line),) = _open(dsn, "INVALID_RETURN_ORDER")
    assert (subject, rid, line) == ("order:R-2", "R-2", None)
    assert "quantity 4294967297 is not a whole number from 1 to 2147483647" in detail
    kept = one(dsn, "SELECT payload FROM ledger.return_order_rejected WHERE return_id = 'R-2'")
    assert kept["lines"][0]["quantity"] == 4294967297  # the order as ReBound returned it
    assert _outcome(dsn, "r2-recv") == "HELD" and _outcome(dsn, "r2-rc") == "HELD"


# --- 2. a second body under a known event id ----------------------------------------------------------


def test_another_body_under_a_known_id_keeps_both_raises_event_conflict_and_the_line_waits(dsn):
    rb = FakeRebound({"R-3": order("R-3", [(1, 2)])})
    first = event("e-recv", "RECEIVED", "R-3", 1, quantity=1, delivered_at="2026-10-02T01:00:00Z")
    second = {**first, "quantity": 2, "delivered_at": "2026-10-02T05:00:00Z"}
    rb.serve([raw(first)], [raw(second), raw(event("e-grade", "GRADED", "R-3", 1, minute=60, grade="A"))])
    run_pass(dsn, rb, day=3)
    bodies = rows(
        dsn,
        "SELECT event_key, payload->'quantity', deliveries FROM ledger.raw_event"
        " WHERE event_id = 'e-recv' ORDER BY raw_id",
    )
    assert [(b[1], b[2]) for b in bodies] == [(1, 1), (2, 1)] and bodies[1][0].startswith("e-recv#")
    ((exc_id, subject, detail, rid, line),) = _open(dsn, "EVENT_CONFLICT")
    assert (subject, rid, line) == ("event:e-recv", "R-3", 1) and "different bodies" in detail
    assert {_outcome(dsn, b[0]) for b in bodies} == {"HELD"} and _outcome(dsn, "e-grade") == "HELD"
    assert _state(dsn, "R-3", 1) == "ANNOUNCED"
    # an identical redelivery (a later delivered_at only) is a repeat, as before
    rb.serve([raw({**second, "delivered_at": "2026-10-03T09:00:00Z"})])
    run_pass(dsn, rb, day=4)
    assert one(dsn, "SELECT deliveries FROM ledger.raw_event WHERE event_key = %s", (bodies[1][0],)) == 2
    # the console action: refused without a choice, then the second body is kept
    with pytest.raises(ExceptionActionError, match="without choosing a body"):
        ex.resolve_exception(dsn, exc_id, actor="ian", resolution="looked at it", at=AT)
    with pytest.raises(ExceptionActionError, match="cannot dismiss"):
        ex.dismiss_exception(dsn, exc_id, actor="ian", reason="noise", at=AT)
    second_raw = one(dsn, "SELECT raw_id FROM ledger.raw_event WHERE event_key = %s", (bodies[1][0],))
    out = ex.resolve_exception(
        dsn, exc_id, actor="ian", resolution=f"keep raw {second_raw}: ReBound ticket 7", at=AT
    )
    assert out["status"] == "resolved" and out["chosen_raw_id"] == second_raw
    run_pass(dsn, rb, day=5)
    assert _state(dsn, "R-3", 1) == "GRADED"
    assert one(dsn, "SELECT quantity_received FROM ledger.return_line WHERE return_id = 'R-3'") == 2
    assert _outcome(dsn, bodies[0][0]) == "SUPERSEDED" and _outcome(dsn, bodies[1][0]) == "APPLIED"
    assert _outcome(dsn, "e-grade") == "APPLIED"
    _all_decided(dsn)


def test_a_body_already_applied_is_the_only_one_that_can_be_kept(dsn):
    rb = FakeRebound({"R-4": order("R-4", [(1, 1)])})
    first = event("a-recv", "RECEIVED", "R-4", 1, quantity=1)
    rb.serve([raw(first)])
    run_pass(dsn, rb, day=3)
    rb.serve([raw({**first, "quantity": 5}), raw(event("a-grade", "GRADED", "R-4", 1, minute=9, grade="B"))])
    run_pass(dsn, rb, day=4)
    ((exc_id, *_),) = _open(dsn, "EVENT_CONFLICT")
    assert _outcome(dsn, "a-grade") == "HELD" and _state(dsn, "R-4", 1) == "RECEIVED"
    applied, other = (
        one(dsn, "SELECT raw_id FROM ledger.raw_event WHERE event_key = 'a-recv'"),
        one(dsn, "SELECT raw_id FROM ledger.raw_event WHERE event_key LIKE 'a-recv#%'"),
    )
    with pytest.raises(ExceptionActionError, match="cannot be taken back"):
        ex.pick_event_body(dsn, exc_id, other, actor="ian", at=AT)
    ex.pick_event_body(dsn, exc_id, applied, actor="ian", at=AT, why="ReBound: the receipt of 1 stands")
    run_pass(dsn, rb, day=5)
    assert _state(dsn, "R-4", 1) == "GRADED"
    assert _outcome(dsn, "a-grade") == "APPLIED"
    _all_decided(dsn)


# --- 3. INVALID is not final for causes that get fixed -------------------------------------------------


def test_an_event_for_a_line_the_ledger_lacks_refreshes_the_order_and_goes_on(dsn):
    rb = FakeRebound({"R-5": order("R-5", [(1, 1)])})
    rb.serve([raw(event("l1", "RECEIVED", "R-5", 1, quantity=1))])
    run_pass(dsn, rb, day=3)
    rb.orders["R-5"] = order("R-5", [(1, 1), (2, 3)])  # ReBound adds line 2 later
    rb.serve([raw(event("l2", "RECEIVED", "R-5", 2, quantity=3))])
    run_pass(dsn, rb, day=4)
    assert rb.asked[-1] == ["R-5"]
    assert _state(dsn, "R-5", 2) == "RECEIVED" and _outcome(dsn, "l2") == "APPLIED"
    assert _open(dsn, "INVALID_EVENT") == []


def test_an_invalid_event_comes_back_by_itself_once_rebound_knows_its_return(dsn):
    rb = FakeRebound({})  # ReBound does not know R-6 yet
    rb.serve([raw(event("u-recv", "RECEIVED", "R-6", 1, quantity=1))])
    run_pass(dsn, rb, day=3)
    ((_, _, detail, *_),) = _open(dsn, "INVALID_EVENT")
    assert detail.startswith("return_known:")
    rb.orders["R-6"] = order("R-6", [(1, 1)])
    rb.serve([raw(event("u-grade", "GRADED", "R-6", 1, minute=5, grade="A"))])
    run_pass(dsn, rb, day=4)
    assert _state(dsn, "R-6", 1) == "GRADED"
    assert (_outcome(dsn, "u-recv"), _outcome(dsn, "u-grade")) == ("APPLIED", "APPLIED")
    assert _open(dsn, "INVALID_EVENT") == [] and _open(dsn, "OUT_OF_SEQUENCE") == []
    assert one(dsn, "SELECT resolved_by FROM ledger.exception WHERE type = 'INVALID_EVENT'") == SYSTEM_ACTOR


def test_an_unknown_return_is_matched_by_its_check_not_by_the_wording_of_its_detail(dsn):
    """The sync asks ReBound again for events that failed return_known / line_known: by the failure's
    check name, a structured column; rewording the human-readable detail changes nothing."""
    rb = FakeRebound({})
    rb.serve([raw(event("w-recv", "RECEIVED", "R-16", 1, quantity=1))])
    run_pass(dsn, rb, day=3)
    assert one(dsn, "SELECT check_name FROM ledger.validation_failure") == "return_known"
    from returnledger.store import db

    with db.connect(dsn) as conn:  # a reworded explanation, without the check's name in front
        conn.execute("UPDATE ledger.validation_failure SET detail = 'ReBound has never heard of R-16'")
    rb.orders["R-16"] = order("R-16", [(1, 1)])
    rb.serve([])
    run_pass(dsn, rb, day=4)
    assert _outcome(dsn, "w-recv") == "APPLIED" and _open(dsn, "INVALID_EVENT") == []


def test_resolving_an_invalid_event_replays_it_and_the_line_goes_on(dsn):
    rb = FakeRebound({"R-7": order("R-7", [(1, 1)])})
    rb.serve(
        [
            raw(event("m-recv", "RECEIVED", "R-7", 1, quantity=1, occurred_at="05/10/2026")),
            raw(event("m-grade", "GRADED", "R-7", 1, day=6, grade="A")),
        ]
    )
    run_pass(dsn, rb, day=7)
    assert _outcome(dsn, "m-recv") == "INVALID" and _outcome(dsn, "m-grade") == "HELD"  # out of sequence
    ((exc_id, *_),) = _open(dsn, "INVALID_EVENT")
    # ReBound resends the receipt with a valid timestamp under the same id: a second body, held...
    rb.serve([raw(event("m-recv", "RECEIVED", "R-7", 1, day=5, quantity=1))])
    run_pass(dsn, rb, day=8)
    ((conflict_id, *_),) = _open(dsn, "EVENT_CONFLICT")
    good = one(dsn, "SELECT raw_id FROM ledger.raw_event WHERE event_key LIKE 'm-recv#%'")
    ex.pick_event_body(dsn, conflict_id, good, actor="ian", at=AT)  # ...kept; the broken one is superseded
    assert one(dsn, "SELECT status FROM ledger.exception WHERE exception_id = %s", (exc_id,)) == "resolved"
    run_pass(dsn, rb, day=9)
    assert _state(dsn, "R-7", 1) == "GRADED"
    assert _outcome(dsn, "m-grade") == "APPLIED" and _open(dsn, "OUT_OF_SEQUENCE") == []
    # and a plain INVALID_EVENT, resolved by a person, is examined again by the next run
    rb.serve([raw(event("n-recv", "RECEIVED", "R-8", 1, quantity=1))])  # R-8 unknown to ReBound
    run_pass(dsn, rb, day=10)
    ((n_exc, *_),) = _open(dsn, "INVALID_EVENT")
    out = ex.resolve_exception(dsn, n_exc, actor="ian", resolution="ReBound created R-8", at=AT)
    assert out["replayed_events"] == 1 and _outcome(dsn, "n-recv") == "NEW"
    rb.orders["R-8"] = order("R-8", [(1, 1)])
    run_pass(dsn, rb, day=11)
    assert _state(dsn, "R-8", 1) == "RECEIVED" and _outcome(dsn, "n-recv") == "APPLIED"
    _all_decided(dsn)


# --- 4. poison records -----------------------------------------------------------------------------


def test_a_graded_event_with_a_text_quantity_does_not_stop_apply(dsn):
    rb = FakeRebound({"R-9": order("R-9", [(1, 1)])})
    rb.serve(
        [
            raw(event("p-recv", "RECEIVED", "R-9", 1, quantity=1)),
            raw(event("p-grade", "GRADED", "R-9", 1, minute=5, grade="A", quantity="n/a")),
            raw(
                event("p-disp", "DISPOSITIONED", "R-9", 1, minute=9, disposition="QUARANTINED", quantity=[1])
            ),
        ]
    )
    run_pass(dsn, rb, day=3)
    assert _state(dsn, "R-9", 1) == "DISPOSITIONED"


def test_malformed_return_orders_raise_invalid_return_order_and_hold_only_their_own_events(dsn):
    bad = {
        "R-Q0": order("R-Q0", [(1, 0)]),
        "R-NOSKU": order("R-NOSKU", [{"line": 1, "quantity": 1, "reason": "FAULTY"}]),
        "R-DUP": order("R-DUP", [(1, 1), (1, 2)]),
        "R-TYPES": order(
            "R-TYPES", [{"line": "1", "sku": 7, "quantity": True, "reason": ["x"]}], amazon_refs="RN"
        ),
        "R-TEXT": order("R-TEXT", [{"line": 1, "sku": "SKU\x00X", "quantity": 1, "reason": "bad\ud800"}]),
    }
    rb = FakeRebound({**bad, "R-OK": order("R-OK", [(1, 1)]), "R-JUNK": ["not", "an", "order"]})
    rb.serve([raw(event(f"{rid}-recv", "RECEIVED", rid, 1, quantity=1)) for rid in [*bad, "R-OK", "R-JUNK"]])
    run_pass(dsn, rb, day=3)
    assert _state(dsn, "R-OK", 1) == "RECEIVED"  # the feed goes on
    opened = {r[1]: r[2] for r in _open(dsn, "INVALID_RETURN_ORDER")}
    assert {k for k in opened if not k.startswith("order:?")} == {f"order:{rid}" for rid in bad}
    assert "quantity 0 is not a whole number" in opened["order:R-Q0"]
    assert "sku None is missing" in opened["order:R-NOSKU"]
    assert "line 1 is listed more than once" in opened["order:R-DUP"]
    assert "lines[0].line '1' is not a line number" in opened["order:R-TYPES"]
    assert "amazon_refs 'RN' is not an object" in opened["order:R-TYPES"]
    assert "sku 'SKU\\x00X'" in opened["order:R-TEXT"]
    assert any(k.startswith("order:?") for k in opened), "a found item that is no order at all"
    assert rows(dsn, "SELECT return_id FROM ledger.return_line ORDER BY 1") == [("R-OK",)]
    for rid in bad:
        assert _outcome(dsn, f"{rid}-recv") == "HELD"
    assert one(dsn, "SELECT count(*) FROM ledger.held_event WHERE reason = 'INVALID_RETURN_ORDER'") == len(
        bad
    )
    kept = dict(
        rows(dsn, "SELECT return_id, body FROM ledger.return_order_rejected WHERE return_id IS NOT NULL")
    )
    assert b'"quantity":0' in kept["R-Q0"] and b"\\ud800" in kept["R-TEXT"]
    assert _outcome(dsn, "R-JUNK-recv") == "INVALID"  # ReBound has no order for it
    # ReBound corrects one order: the next run fetches it again, clears the exception, the events go on
    rb.orders["R-Q0"] = order("R-Q0", [(1, 1)])
    run_pass(dsn, rb, day=4)
    assert _state(dsn, "R-Q0", 1) == "RECEIVED" and _outcome(dsn, "R-Q0-recv") == "APPLIED"
    assert "order:R-Q0" not in {r[1] for r in _open(dsn, "INVALID_RETURN_ORDER")}
    assert (
        one(dsn, "SELECT cleared_at FROM ledger.return_order_rejected WHERE return_id = 'R-Q0'") is not None
    )
    # a person resolving one whose order is still broken: its events are examined again and wait again
    dup_id = next(r[0] for r in _open(dsn, "INVALID_RETURN_ORDER") if r[1] == "order:R-DUP")
    out = ex.resolve_exception(dsn, dup_id, actor="ian", resolution="asked ReBound", at=AT)
    assert out["replayed_events"] == 1
    run_pass(dsn, rb, day=5)
    assert _outcome(dsn, "R-DUP-recv") == "HELD" and "order:R-DUP" in {
        r[1] for r in _open(dsn, "INVALID_RETURN_ORDER")
    }
    _all_decided(dsn)


def test_bytes_that_are_not_utf8_are_stored_as_bytes_and_reported(dsn):
    rb = FakeRebound({"R-10": order("R-10", [(1, 1)])})
    body = raw(event("bin", "RECEIVED", "R-10", 1, quantity=1))[:-1] + b',"note":"caf\xe9 \xff"}'
    rb.serve([body, b'\xfe\xff{"event_id": "x"', raw(event("ok", "RECEIVED", "R-10", 1, quantity=1))])
    run_pass(dsn, rb, day=3)
    stored = rows(dsn, "SELECT event_key, payload, body, body_problem FROM ledger.raw_event ORDER BY raw_id")
    assert stored[0][0] == "bin" and stored[0][1] is None and bytes(stored[0][2]) == body
    assert stored[0][3] == "not valid UTF-8 (byte 0xe9 at offset {})".format(body.index(b"\xe9"))
    assert stored[1][0].startswith("noid:") and bytes(stored[1][2]) == b'\xfe\xff{"event_id": "x"'
    assert _outcome(dsn, "bin") == "INVALID" and _outcome(dsn, "ok") == "APPLIED"
    details = [r[2] for r in _open(dsn, "INVALID_EVENT")]
    assert len(details) == 2 and all(
        d.startswith("payload_readable: the delivery cannot be read") for d in details
    )


def test_a_lone_surrogate_escape_is_stored_exactly_and_reported(dsn):
    rb = FakeRebound({"R-11": order("R-11", [(1, 1)])})
    note = (
        raw(event("sur", "RECEIVED", "R-11", 1, quantity=1))[:-1]
        + b',"note":"a\\ud800b \\\\ud800 \\ud83d\\ude00"}'
    )
    in_id = (
        b'{"event_id":"x\\udc00","type":"RECEIVED","return_id":"R-11","line":1,"quantity":1,'
        b'"occurred_at":"2026-10-02T00:00:00Z"}'
    )
    huge = raw(event("huge", "RECEIVED", "R-11", 1, quantity=1))[:-1] + b',"x":1e999999}'
    nul = raw(event("nul", "RECEIVED", "R-11", 1, quantity=1, note="a\x00b"))
    rb.serve([note, in_id, huge, nul])
    run_pass(dsn, rb, day=3)
    got = {
        r[0]: r[1:] for r in rows(dsn, "SELECT event_key, payload, body, body_problem FROM ledger.raw_event")
    }
    payload, body, problem = got["sur"]
    assert bytes(body) == note and payload["note"] == "a\\ud800b \\ud800 \U0001f600"
    assert problem.startswith("lone surrogate escape \\ud800")
    assert bytes(got["x\\udc00"][1]) == in_id and got["x\\udc00"][2].startswith(
        "lone surrogate escape \\udc00"
    )
    assert got["huge"][0] is None and bytes(got["huge"][1]) == huge
    assert got["huge"][2].startswith("PostgreSQL cannot store it as JSON")
    assert bytes(got["nul"][1]) == nul and got["nul"][0]["note"] == "a\\u0000b" and got["nul"][2] is None
    assert {k: _outcome(dsn, k) for k in got} == {
        "sur": "INVALID",
        "x\\udc00": "INVALID",
        "huge": "INVALID",
        "nul": "APPLIED",
    }
    assert _state(dsn, "R-11", 1) == "RECEIVED"
    assert rows(dsn, "SELECT event_id FROM ledger.line_history") == [("nul",)]


def test_a_feed_that_stops_advancing_is_reported_and_the_run_goes_on(fresh_db):
    """Finding 5: the client refuses a page that does not move the cursor; extract keeps what it read,
    raises SYNC_STALLED (integration) instead of failing the run, and a later complete read resolves it."""
    import json

    from returnledger.clients.rebound import FeedStalledError
    from returnledger.store import db as store

    class Stalling(FakeRebound):
        def iter_event_pages(self, cursor, until, *, raw=False):
            pages = list(super().iter_event_pages(cursor, until, raw=raw))
            yield pages[0]
            raise FeedStalledError(
                "page repeats cursor cursor-1",
                cursor="cursor-1",
                next_cursor="cursor-1",
                has_more=True,
                events=1,
            )

    ok = json.dumps(event("ev-stall-1", "RETURN_CREATED", "RB-STALL")).encode()
    client = Stalling({"RB-STALL": order("RB-STALL")})
    client.serve([ok], [ok])
    stats = extract(fresh_db, client, run=RunMoment(datetime(2026, 10, 3, tzinfo=UTC), batch_id="stall-1"))
    assert "FeedStalledError" in stats["feed_problem"] and stats["new"] == 1
    with store.connect(fresh_db) as conn:
        assert conn.execute("SELECT position FROM ledger.sync_cursor").fetchone()[0] == "cursor-1"
        assert conn.execute(
            "SELECT owner, status FROM ledger.exception WHERE type = 'SYNC_STALLED'"
            " AND subject_key = 'feed:rebound'"
        ).fetchall() == [("integration", "open")]
    healthy = FakeRebound({"RB-STALL": order("RB-STALL")})
    healthy.serve([])
    stats = extract(fresh_db, healthy, run=RunMoment(datetime(2026, 10, 4, tzinfo=UTC), batch_id="stall-2"))
    assert "feed_problem" not in stats
    with store.connect(fresh_db) as conn:
        assert (
            conn.execute("SELECT status FROM ledger.exception WHERE subject_key = 'feed:rebound'").fetchone()[
                0
            ]
            == "resolved"
        )
