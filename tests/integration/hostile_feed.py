"""Helpers for the hostile-input tests: a stand-in ReBound client and a one-call sync pass.

``FakeRebound`` offers what ``extract`` uses of ``ReboundClient``: ``iter_event_pages(cursor, until,
raw=True)`` yielding ``EventPage`` objects whose events are the bytes exactly as given (``msgspec.Raw``,
whatever they hold: invalid UTF-8, lone surrogate escapes, numbers no database holds), and
``get_returns(ids)``. The point of these tests is the sync's handling of bytes, so the HTTP layer is left
out; the real client's own decoding is tested in tests/sandbox.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from returnledger.clients.rebound_feed import EventPage
from returnledger.intake.feed import extract
from returnledger.ledger.apply import apply
from returnledger.moment import RunMoment, batch_id_for
from returnledger.screening.screen import quarantine, validate
from returnledger.store import db

T0 = datetime(2026, 10, 1, tzinfo=UTC)
SKU, ASIN, REASON = "SKU-HOSTILE", "B0HOSTILE1", "FAULTY"  # FAULTY is mapped in include/reference


class FakeRebound:
    """Pages of raw event bytes served once each (a page list per call of ``serve``), and return orders."""

    def __init__(self, orders: dict[str, Any] | None = None):
        self.orders: dict[str, Any] = dict(orders or {})
        self.pending: list[list[bytes]] = []
        self.asked: list[list[str]] = []
        self.served = 0

    def serve(self, *pages: list[bytes]) -> None:
        self.pending.extend(list(p) for p in pages)

    def iter_event_pages(self, cursor, until, *, raw: bool = False):
        assert raw, "the sync reads the feed in raw mode"
        pages, self.pending = self.pending, []
        for i, events in enumerate(pages):
            self.served += 1
            yield EventPage([msgspec.Raw(e) for e in events], f"cursor-{self.served}", i < len(pages) - 1)

    def get_returns(self, ids):
        ids = list(ids)
        self.asked.append(ids)
        return [self.orders[i] for i in ids if i in self.orders], [i for i in ids if i not in self.orders]


def order(rid: str, lines: list | None = None, **changes) -> dict:
    """A ReBound return order, well-formed unless told otherwise; ``lines``: (line, quantity) or line
    objects."""
    o = {
        "return_id": rid,
        "order_reference": f"ORD-{rid}",
        "created_at": "2026-10-01T08:00:00Z",
        "amazon_refs": {"returns_notice": f"RN-{rid}", "rma_id": f"RMA-{rid}", "vret": f"VRET-{rid}"},
        "lines": [
            ln if isinstance(ln, dict) else {"line": ln[0], "sku": SKU, "quantity": ln[1], "reason": REASON}
            for ln in (lines or [(1, 1)])
        ],
    }
    o.update(changes)
    return o


def event(
    event_id: str, type_: str, rid: str, line: int | None = None, *, day: int = 2, minute: int = 0, **extra
) -> dict:
    e = {
        "event_id": event_id,
        "type": type_,
        "return_id": rid,
        "occurred_at": f"2026-10-{day:02d}T{minute // 60:02d}:{minute % 60:02d}:00Z",
    }
    if line is not None:
        e["line"] = line
    e.update(extra)
    return e


def raw(value: Any) -> bytes:
    return msgspec.json.encode(value)


def seed(dsn: str) -> None:
    """Reference data: the include/ seed files plus the one SKU the hostile orders use."""
    from returnledger.reference import load as reference

    reference.load_reference(dsn, at=T0)
    with db.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO ledger.sku (sku, asin, unit_cost, available, updated_at, updated_by)"
            " VALUES (%s, %s, 10.00, 0, %s, 'test') ON CONFLICT DO NOTHING",
            (SKU, ASIN, T0),
        )
        conn.commit()


def run_pass(dsn: str, client, *, day: int, currency: str = "GBP") -> dict:
    """extract -> validate -> quarantine -> apply, as the DAG runs them (no Amazon steps)."""
    end = datetime(2026, 10, day, tzinfo=UTC)
    batch = batch_id_for(end)
    stats = {"extract": extract(dsn, client, run=RunMoment(end, batch_id=batch))}
    stats["validate"] = validate(dsn, batch_id=batch)
    stats["quarantine"] = quarantine(dsn, run=RunMoment(end, batch_id=batch))
    stats["apply"] = apply(dsn, run=RunMoment(end, batch_id=batch), currency=currency)
    return stats


def rows(dsn: str, sql: str, params=()) -> list[tuple]:
    with db.connect(dsn) as conn:
        return conn.execute(sql, params or None).fetchall()


def one(dsn: str, sql: str, params=()):
    found = rows(dsn, sql, params)
    return found[0][0] if found else None
