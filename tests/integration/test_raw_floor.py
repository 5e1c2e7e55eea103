"""The raw floor (migration 0026, issue 26 target 2): the sync's readers of unprocessed raw events start at
it instead of reading every raw event ever landed; an event sent back through the sync goes below it again.

Speed is bench_years.py's (the frame's scan no longer grows with the ledger's months); these tests hold
what the floor must never do: skip an event that still needs examining.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hostile_feed import FakeRebound, event, one, order, raw, run_pass, seed

from returnledger.exception_queue import actions as ex
from returnledger.intake.feed import extract
from returnledger.moment import RunMoment, batch_id_for
from returnledger.store import db
from returnledger.store.raw_floor import raise_floor

pytestmark = pytest.mark.integration

AT = datetime(2026, 10, 20, tzinfo=UTC)


@pytest.fixture
def dsn(fresh_db):
    seed(fresh_db)
    return fresh_db


def _floor(dsn) -> int:
    return one(dsn, "SELECT raw_id FROM ledger.raw_floor")


def _raw_id(dsn, key) -> int:
    return one(dsn, "SELECT raw_id FROM ledger.raw_event WHERE event_key = %s", (key,))


def _outcome(dsn, key):
    return one(
        dsn,
        "SELECT o.status FROM ledger.raw_event r LEFT JOIN ledger.event_outcome o USING (raw_id)"
        " WHERE r.event_key = %s",
        (key,),
    )


def test_the_floor_rises_past_examined_events_and_stops_at_an_unexamined_one(dsn):
    rb = FakeRebound({"R-1": order("R-1", [(1, 1)])})
    rb.serve([raw(event("a-recv", "RECEIVED", "R-1", 1, day=2, quantity=1))])
    run_pass(dsn, rb, day=3)
    assert _outcome(dsn, "a-recv") == "APPLIED"
    rb.serve([raw(event("a-grade", "GRADED", "R-1", 1, day=3, grade="A"))])
    end = datetime(2026, 10, 4, tzinfo=UTC)
    extract(dsn, rb, run=RunMoment(end, batch_id=batch_id_for(end)))  # landed, not examined yet
    with db.connect(dsn) as conn:
        floor = raise_floor(conn)
    # every event below the floor is examined; the landed one is not below it
    assert _raw_id(dsn, "a-recv") < floor <= _raw_id(dsn, "a-grade")
    run_pass(dsn, rb, day=4)  # validate raises the floor, then reads the landed event from it
    assert _outcome(dsn, "a-grade") == "APPLIED"
    assert _floor(dsn) <= _raw_id(dsn, "a-grade")  # raised before apply gave it an outcome
    with db.connect(dsn) as conn:
        assert raise_floor(conn) == _raw_id(dsn, "a-grade") + 1  # past the newest: all examined


def test_an_event_sent_back_is_examined_again_though_the_floor_passed_it(dsn):
    rb = FakeRebound({})
    rb.serve([raw(event("n-recv", "RECEIVED", "R-8", 1, quantity=1))])  # R-8 unknown to ReBound
    run_pass(dsn, rb, day=10)
    assert _outcome(dsn, "n-recv") == "INVALID"
    rb.orders["R-9"] = order("R-9", [(1, 1)])
    rb.serve([raw(event("o-recv", "RECEIVED", "R-9", 1, day=10, quantity=1))])
    run_pass(dsn, rb, day=11)  # a later run: the floor rises past the invalid event
    assert _floor(dsn) > _raw_id(dsn, "n-recv")
    exc_id = one(dsn, "SELECT exception_id FROM ledger.exception WHERE type = 'INVALID_EVENT'")
    out = ex.resolve_exception(dsn, exc_id, actor="ian", resolution="ReBound created R-8", at=AT)
    assert out["replayed_events"] == 1 and _outcome(dsn, "n-recv") is None
    assert _floor(dsn) <= _raw_id(dsn, "n-recv")  # sent back: below the floor again
    rb.orders["R-8"] = order("R-8", [(1, 1)])
    run_pass(dsn, rb, day=12)
    assert _outcome(dsn, "n-recv") == "APPLIED"
    assert one(dsn, "SELECT state FROM ledger.return_line WHERE return_id = 'R-8' AND line = 1") == "RECEIVED"
