"""Issue 21, finding 4: a failed return-order fetch is a feed failure, not a failed run.

Real PostgreSQL, the ReBound simulator through the production httpx client (its labelled
``returns_lookup`` fault fails GET /v1/returns alone), the SP-API simulator through python-amazon-sp-api.
Day 2's run goes on while ReBound cannot say what a new return holds: the credit already owed goes out
that day, the new return's events wait (held, not lost), SYNC_STALLED names the order, and the first run
that can read the order applies them and resolves the exception.
"""

from __future__ import annotations

import json
import sys
from datetime import date, timedelta
from pathlib import Path

import httpx
import pytest

from returnledger.store import db, migrate
from returnledger_dev import scratch_db
from returnledger_dev.run_window import run_window

sys.path.insert(0, str(Path(__file__).parent))
from test_money_path import _amazon, _credits, _requests, _scenario, _start, _utc, _vendor

pytestmark = pytest.mark.integration

DAY1, DAY2, DAY3 = date(2026, 10, 5), date(2026, 10, 6), date(2026, 10, 7)
OWED = "RB-1-0000001"  # known since day 1, dispositioned on day 2: its credit is owed on the outage day
NEW = "RB-1-0000002"  # first seen on day 2, while its order cannot be read


@pytest.fixture
def ledger(pg_server):
    dsn = scratch_db.create_scratch_database(pg_server, "rl_orders")
    migrate.migrate(dsn)
    yield dsn
    scratch_db.drop_database(pg_server, dsn)


def _month() -> dict:
    s = _scenario(
        [
            (OWED, "RN-OWED-1", "SKU-A", DAY1.isoformat(), 1, 1),
            (NEW, "RN-NEW-2", "SKU-B", DAY2.isoformat(), 1, 1),
        ]
    )
    for e in s["rebound"]["events"]:  # the owed line is dispositioned on day 2
        if e["return_id"] == OWED and e["type"] == "DISPOSITIONED":
            e["occurred_at"] = f"{DAY2.isoformat()}T07:00:00Z"
    s["run"]["to"] = DAY3.isoformat()
    return s


def _day(dsn, sb, d: date) -> dict:
    return run_window(
        dsn,
        sb.rebound_client(timeout=0.5, backoff_max_s=0.05),
        _amazon(sb),
        window_end=_utc(d + timedelta(days=1)),
        vendor=_vendor(sb),
    )


def _open_stalls(dsn) -> list[tuple[str, str | None, str]]:
    with db.connect(dsn) as conn:
        return conn.execute(
            "SELECT subject_key, return_id, detail FROM ledger.exception"
            " WHERE type = 'SYNC_STALLED' AND status = 'open' ORDER BY subject_key"
        ).fetchall()


def _line(dsn, rid: str):
    with db.connect(dsn) as conn:
        return conn.execute(
            "SELECT state FROM ledger.return_line WHERE return_id = %s AND line = 1", (rid,)
        ).fetchone()


def _held(dsn, rid: str) -> int:
    with db.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM ledger.held_event WHERE return_id = %s", (rid,)).fetchone()[
            0
        ]


@pytest.mark.parametrize("fault", ["outage", "no_returns_key"])
def test_order_fetch_outage_does_not_fail_the_run(ledger, tmp_path, fault):
    from returnledger_dev.sandbox.harness import run_sandbox

    scenario = _month()
    path = _start(ledger, scenario, tmp_path)
    with run_sandbox(path, tmp_path / "out", faults=False) as sb:
        _day(ledger, sb, DAY1)
        assert httpx.post(f"{sb.rebound_url}/_sandbox/faults", json={"returns_lookup": fault}).is_success
        stats = _day(ledger, sb, DAY2)  # before the fix: ReboundError / KeyError out of extract
        assert httpx.get(f"{sb.rebound_url}/_sandbox/stats").json()["fault_returns_lookup"] >= 1
        assert "feed_problem" not in stats["extract"]  # the feed itself was read to the window end
        # the credit already owed went out on the outage day
        day2 = _credits(_requests(tmp_path / "out"))
        assert "RN-OWED-1|SKU-A" in day2, day2
        assert "RN-NEW-2|SKU-B" not in day2
        # the new return's events wait, and SYNC_STALLED says which order
        assert _line(ledger, NEW) is None
        assert _held(ledger, NEW) == 5
        stalls = _open_stalls(ledger)
        assert [(s[0], s[1]) for s in stalls] == [(f"order-fetch:{NEW}", NEW)], stalls
        assert NEW in stalls[0][2]
        with db.connect(ledger) as conn:
            invalid = conn.execute(
                "SELECT count(*) FROM ledger.exception WHERE type = 'INVALID_EVENT' AND return_id = %s",
                (NEW,),
            ).fetchone()[0]
        assert invalid == 0, "an order ReBound could not be read is not an order ReBound does not know"

        # the next run reads the order: the held events are applied once, the exception is resolved
        assert httpx.post(f"{sb.rebound_url}/_sandbox/faults", json={"returns_lookup": None}).is_success
        _day(ledger, sb, DAY3)
        _day(ledger, sb, DAY3 + timedelta(days=1))  # confirm settles
        sb.dump()
    assert _credits(_requests(tmp_path / "out")) == {
        "RN-OWED-1|SKU-A": {"quantity": 1, "amount": "10.00"},
        "RN-NEW-2|SKU-B": {"quantity": 1, "amount": "11.00"},
    }
    assert _open_stalls(ledger) == []
    assert _held(ledger, NEW) == 0
    with db.connect(ledger) as conn:
        outcomes = conn.execute(
            "SELECT o.status, count(*) FROM ledger.event_outcome o JOIN ledger.raw_event r USING (raw_id)"
            " WHERE r.return_id = %s GROUP BY 1",
            (NEW,),
        ).fetchall()
        resolved = conn.execute(
            "SELECT resolved_by FROM ledger.exception WHERE type = 'SYNC_STALLED' AND subject_key = %s",
            (f"order-fetch:{NEW}",),
        ).fetchall()
    assert outcomes == [("APPLIED", 5)], outcomes
    assert resolved and all(r[0] is not None for r in resolved)
    assert json.loads(json.dumps(_line(ledger, NEW)))[0] in ("CREDIT_ACCEPTED", "CLOSED")
