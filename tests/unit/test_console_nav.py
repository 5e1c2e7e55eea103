"""The console's navigation entries (returnledger.console.nav): each owner team's queue carries its counts,
fresh after CACHE_SECONDS, and a ledger that cannot be read leaves the entries without counts."""

from __future__ import annotations

import pytest

from returnledger.console import nav


@pytest.fixture(autouse=True)
def empty_cache():
    nav._cache.update(at=None, counts=None)
    yield
    nav._cache.update(at=None, counts=None)


def test_each_team_queue_carries_its_counts():
    views = nav.nav_views(
        "/rl", read=lambda: {"operations": {"open": 7, "overdue": 3}, "finance": {"open": 0, "overdue": 0}}
    )
    assert [(v["name"], v["href"], v["url_route"]) for v in views] == [
        ("Find a return", "/rl/returns", "find-a-return"),
        ("Queue: finance (0 overdue / 0 open)", "/rl/teams/finance", "returns-queue-finance"),
        ("Queue: operations (3 overdue / 7 open)", "/rl/teams/operations", "returns-queue-operations"),
    ]
    assert {v["category"] for v in views} == {"browse"}


def test_counts_are_kept_for_a_while_then_read_again():
    clock = [100.0]
    reads = []

    def read():
        reads.append(clock[0])
        return {"operations": {"open": len(reads), "overdue": 0}}

    assert nav.counts(read, now=lambda: clock[0])["operations"]["open"] == 1
    clock[0] += nav.CACHE_SECONDS - 1
    assert nav.counts(read, now=lambda: clock[0])["operations"]["open"] == 1
    clock[0] += 2
    assert nav.counts(read, now=lambda: clock[0])["operations"]["open"] == 2
    assert len(reads) == 2


def test_a_ledger_that_cannot_be_read_leaves_the_entries_without_counts():
    def broken():
        raise OSError("connection refused")

    names = [v["name"] for v in nav.nav_views("/rl", read=broken)]
    assert names[0] == "Find a return"
    assert "Queue: operations" in names and all("overdue" not in n for n in names)
