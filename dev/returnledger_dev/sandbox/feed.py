"""The event feed as the simulated ReBound delivers it: in delivery order, duplicates twice, redeliveries
again at their later time."""

from __future__ import annotations

from datetime import UTC, datetime

from returnledger_dev.sandbox.scenario import Scenario, paused_gc


def delivery_time(raw_event: dict) -> datetime:
    """Delivery time of a raw feed object: ``delivered_at``, else ``occurred_at`` (aware, UTC)."""
    value = raw_event.get("delivered_at") or raw_event["occurred_at"]
    t = datetime.fromisoformat(value.replace("Z", "+00:00")) if isinstance(value, str) else value
    return t.astimezone(UTC)


def feed_order(scenario: Scenario) -> list[dict]:
    """Every delivery of the simulated feed, in order: scenario events, then invalid events,
    stably sorted by delivery time; a ``duplicate`` event is delivered a second time right
    after the first, and an event listed again (a redelivery) is delivered again at its own
    later ``delivered_at``. Items are the raw objects of the file (shared, do not mutate)."""
    return [obj for _, obj in feed_deliveries(scenario)]


def feed_deliveries(scenario: Scenario) -> list[tuple[datetime, dict]]:
    """``feed_order`` with each delivery's time (aware UTC datetime)."""
    with paused_gc():
        raw = scenario.raw["rebound"]
        events = raw["events"]
        invalid = raw.get("invalid_events") or []
        # validated times: cheaper than re-parsing and identical by construction
        keyed = [(e.delivered_at or e.occurred_at, i) for i, e in enumerate(scenario.rebound.events)]
        base = len(events)
        keyed += [(delivery_time(e), base + j) for j, e in enumerate(invalid)]
        keyed.sort()
        out: list[tuple[datetime, dict]] = []
        for t, idx in keyed:
            obj = events[idx] if idx < base else invalid[idx - base]
            out.append((t, obj))
            if obj.get("duplicate") is True:
                out.append((t, obj))
        return out
