"""Redelivered events: an event listed again in ``rebound.events`` with a later ``delivered_at`` and
an otherwise identical body (ReBound's at-least-once delivery). The loader accepts it, the simulated
feed serves it again at its new time, and a listing with another body is refused by name."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta

import pytest

from returnledger.clients.rebound import ReboundClient
from returnledger_dev.sandbox.feed import feed_deliveries, feed_order
from returnledger_dev.sandbox.scenario import Scenario, load_scenario
from returnledger_dev.sandbox.scenario_rules import ScenarioError

CLIENT = dict(client_id="sandbox-client", client_secret="sandbox-secret")


def _z(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _t(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


@pytest.fixture
def raw(scenarios_dir) -> dict:
    return json.loads((scenarios_dir / "small-month.json").read_text())


def _plain_index(raw: dict, kind: str = "RECEIVED") -> int:
    """An event of ``kind`` without delivered_at or duplicate (its delivery time is occurred_at)."""
    return next(
        i
        for i, e in enumerate(raw["rebound"]["events"])
        if e["type"] == kind and "delivered_at" not in e and not e.get("duplicate")
    )


def _redeliver(raw: dict, i: int, after: timedelta, **changes) -> dict:
    """Append a listing of events[i] again, delivered ``after`` its occurred_at (plus changes)."""
    first = raw["rebound"]["events"][i]
    again = dict(first, delivered_at=_z(_t(first["occurred_at"]) + after), **changes)
    raw["rebound"]["events"].append(again)
    return again


def test_a_redelivery_loads_and_is_served_again_at_its_own_time(raw):
    i = _plain_index(raw)
    first = raw["rebound"]["events"][i]
    again = _redeliver(raw, i, timedelta(days=3, hours=5))
    s = Scenario.from_dict(raw)
    assert [e.event_id for e in s.rebound.events].count(first["event_id"]) == 2

    deliveries = feed_deliveries(s)
    times = [t for t, _ in deliveries]
    assert times == sorted(times)  # still in delivered_at order
    copies = [(t, obj) for t, obj in deliveries if obj.get("event_id") == first["event_id"]]
    assert [obj for _, obj in copies] == [first, again]  # the first at occurred_at, then the redelivery
    assert copies[0][0] == _t(first["occurred_at"]) and copies[1][0] == _t(again["delivered_at"])
    plain = json.loads(json.dumps(raw))
    plain["rebound"]["events"].pop()
    assert len(feed_order(s)) == len(feed_order(Scenario.from_dict(plain))) + 1


def test_redelivery_of_an_event_that_already_had_a_delivered_at(raw):
    i = next(j for j, e in enumerate(raw["rebound"]["events"]) if "delivered_at" in e)
    first = raw["rebound"]["events"][i]
    later = dict(first, delivered_at=_z(_t(first["delivered_at"]) + timedelta(hours=1)))
    latest = dict(first, delivered_at=_z(_t(first["delivered_at"]) + timedelta(days=2)))
    raw["rebound"]["events"] += [later, latest]
    s = Scenario.from_dict(raw)
    copies = [obj for obj in feed_order(s) if obj.get("event_id") == first["event_id"]]
    assert copies == [first, later, latest]


def test_the_simulator_serves_the_redelivery_to_the_client_in_its_later_window(raw, serve_rebound):
    i = _plain_index(raw)
    first = raw["rebound"]["events"][i]
    again = _redeliver(raw, i, timedelta(days=4))
    url, _ = serve_rebound(Scenario.from_dict(raw))
    first_seen = _t(first["occurred_at"])
    redelivered = _t(again["delivered_at"])
    day_start = first_seen.replace(hour=0)
    with ReboundClient(url, **CLIENT, page_size=50) as client:
        # daily windows, as the sync reads them: the first copy in its day, the redelivery days later
        seen: dict[datetime, list[dict]] = {}
        cursor, day = None, day_start
        while day <= redelivered + timedelta(days=1):
            end = day + timedelta(days=1)
            for page in client.iter_event_pages(cursor, end):
                seen.setdefault(day, []).extend(
                    e for e in page.events if e.get("event_id") == first["event_id"]
                )
                cursor = page.next_cursor
            day = end
        # raw mode: each copy's bytes as served, delivered_at included
        raw_copies = [
            json.loads(bytes(e))
            for p in client.iter_event_pages(None, redelivered + timedelta(days=1), raw=True)
            for e in p.events
            if b'"' + first["event_id"].encode() + b'"' in bytes(e)
        ]
    assert seen[day_start] == [first]
    assert seen[redelivered.replace(hour=0)] == [again]
    assert sum(len(v) for v in seen.values()) == 2
    assert raw_copies == [first, again]


def _load_error(raw: dict, tmp_path) -> str:
    path = tmp_path / "scenario.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ScenarioError) as err:
        load_scenario(path)
    return str(err.value)


def test_a_second_listing_with_another_body_is_refused_by_id_and_path(raw, tmp_path):
    i = _plain_index(raw)
    eid = raw["rebound"]["events"][i]["event_id"]
    n = len(raw["rebound"]["events"])
    _redeliver(raw, i, timedelta(days=2), quantity=raw["rebound"]["events"][i]["quantity"] + 1)
    msg = _load_error(raw, tmp_path)
    assert msg.startswith(
        f"rebound.events[{n}].event_id: duplicate id {eid!r} with a different body than "
        f"rebound.events[{i}] (differs in quantity)"
    ), msg
    assert "later delivered_at" in msg


def test_another_body_without_delivered_at_is_named_as_a_body_conflict(raw, tmp_path):
    """Two different events sharing an id (the old 'duplicate id' case) still fail with that id."""
    other = next(j for j, e in enumerate(raw["rebound"]["events"]) if e["type"] == "GRADED")
    i = _plain_index(raw)
    eid = raw["rebound"]["events"][i]["event_id"]
    raw["rebound"]["events"][other]["event_id"] = eid
    lo, hi = sorted((i, other))
    msg = _load_error(raw, tmp_path)
    assert msg.startswith(
        f"rebound.events[{hi}].event_id: duplicate id {eid!r} with a different body than rebound.events[{lo}]"
    ), msg
    assert "type" in msg  # names what differs


@pytest.mark.parametrize(
    "after, problem",
    [
        (None, "got no delivered_at"),
        (timedelta(0), "got delivered_at"),
        (timedelta(hours=-1), "got delivered_at"),
    ],
)
def test_a_redelivery_must_be_delivered_later(raw, tmp_path, after, problem):
    i = _plain_index(raw)
    first = raw["rebound"]["events"][i]
    n = len(raw["rebound"]["events"])
    raw["rebound"]["events"].append(
        copy.deepcopy(first)
        if after is None
        else dict(first, delivered_at=_z(_t(first["occurred_at"]) + after))
    )
    msg = _load_error(raw, tmp_path)
    assert msg.startswith(
        f"rebound.events[{n}].delivered_at: redelivery of event {first['event_id']!r} must be "
        f"delivered later than rebound.events[{i}]"
    ), msg
    assert problem in msg


def test_each_redelivery_is_later_than_the_listing_before_it(raw, tmp_path):
    i = _plain_index(raw)
    first = raw["rebound"]["events"][i]
    n = len(raw["rebound"]["events"])
    _redeliver(raw, i, timedelta(days=3))
    _redeliver(raw, i, timedelta(days=2))  # later than the first listing, earlier than the second
    msg = _load_error(raw, tmp_path)
    assert msg.startswith(
        f"rebound.events[{n + 1}].delivered_at: redelivery of event {first['event_id']!r} must "
        f"be delivered later than rebound.events[{n}]"
    ), msg


def test_a_duplicate_flag_is_part_of_the_body(raw, tmp_path):
    i = _plain_index(raw)
    _redeliver(raw, i, timedelta(days=1), duplicate=True)
    assert "(differs in duplicate)" in _load_error(raw, tmp_path)
