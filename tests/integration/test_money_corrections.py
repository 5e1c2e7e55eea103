"""Corrections on the money path (issue 21, findings 1, 5 and 6): what the warehouse corrects or resolves
later must never reuse a credit-note id, drop a recount, or close a line without its credit.

Real PostgreSQL, the ReBound and SP-API simulators over HTTP, the production clients; the warehouse's
choices go through the same functions the console and the CLI call.

Findings and the tests that guard them:
1. a skipped (policy-held) over-receipt kept naming later notes -> UniqueViolation on credit_note_pkey
   -> test_credit_note_id_never_reused_after_a_held_resolution
5. a recount was dropped as a redelivery; a receipt of 0 units was accepted
   -> test_recount_before_and_after_disposition,
      test_receipt_of_zero_units_is_invalid_and_the_real_one_applies
6. an over-receipt closed with the generic Resolve/Dismiss was never credited and nobody saw it
   -> test_over_receipt_closes_only_with_a_quantity
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from returnledger.exception_queue import actions
from returnledger.ledger.run_window import run_window
from returnledger.reference import load as reference
from returnledger.store import db, migrate
from scenario_parts import full_credit_policy, sandbox_amazon_client, vendor

pytestmark = pytest.mark.integration

SKU, UNIT_COST = "SKU-A", Decimal("10.00")


def _utc(d: date, hour: int = 0) -> datetime:
    return datetime(d.year, d.month, d.day, hour, tzinfo=UTC)


def _ev(eid: str, etype: str, rid: str, at: str, **x) -> dict:
    return {"event_id": eid, "type": etype, "return_id": rid, "occurred_at": at, **x}


def _line_events(rid: str, ln: int, day: str, received: int, disposition: str, *, grade: str = "B") -> list:
    """RECEIVED, GRADED and DISPOSITIONED of one line on one day (10:00, 11:00, 12:00)."""
    p = f"ev-{rid}-{ln}"
    return [
        _ev(f"{p}-rec", "RECEIVED", rid, f"{day}T10:00:00Z", line=ln, quantity=received),
        _ev(f"{p}-grd", "GRADED", rid, f"{day}T11:00:00Z", line=ln, grade=grade),
        _ev(f"{p}-dsp", "DISPOSITIONED", rid, f"{day}T12:00:00Z", line=ln, disposition=disposition),
    ]


def _scenario(returns: dict[str, tuple[str, list[int]]], events: list[dict], days: tuple[str, str]) -> dict:
    """returns: return id -> (creation day, announced quantity of each line, lines numbered from 1)."""
    evs = []
    for rid, (day, _) in returns.items():
        evs += [
            _ev(f"ev-{rid}-created", "RETURN_CREATED", rid, f"{day}T08:00:00Z"),
            _ev(f"ev-{rid}-transit", "IN_TRANSIT", rid, f"{day}T09:00:00Z"),
        ]
    return {
        "format": "returns-scenario/1",
        "name": "money-corrections",
        "description": "issue 21",
        "vendor": vendor(),
        "run": {"from": days[0], "to": days[1], "close_period": days[1][:7]},
        "policy": full_credit_policy(),
        "catalog": [{"sku": SKU, "asin": "B000000001", "unit_cost": str(UNIT_COST), "available": 5}],
        "reason_codes": [{"rebound_reason": "FAULTY", "amazon_reason": "CR-DEFECTIVE"}],
        "rebound": {
            "returns": [
                {
                    "return_id": rid,
                    "order_reference": f"203-{i:07d}-0000000",
                    "created_at": f"{day}T08:00:00Z",
                    "amazon_refs": {
                        "returns_notice": f"RN-{rid}",
                        "rma_id": f"RMA-{rid}",
                        "vret": f"VRET-{rid}",
                    },
                    "lines": [
                        {"line": n, "sku": SKU, "quantity": q, "reason": "FAULTY"}
                        for n, q in enumerate(announced, start=1)
                    ],
                }
                for i, (rid, (day, announced)) in enumerate(returns.items())
            ],
            "events": evs + events,
            "invalid_events": [],
        },
        "amazon": {"returns": [], "credit_outcomes": [], "duplicate_credit_note": "same_note"},
        "operations": [],
        "faults": {},
    }


@pytest.fixture
def ledger(pg_server):
    dsn = db.create_scratch_database(pg_server, "rl_corrections")
    migrate.migrate(dsn)
    yield dsn
    db.drop_database(pg_server, dsn)


class Month:
    """A scenario served by the simulators, run day by day through ``run_window`` like the DAG does."""

    def __init__(self, dsn: str, sb):
        self.dsn, self.sb = dsn, sb
        self.rebound = sb.rebound_client(timeout=0.5, backoff_max_s=0.2)
        self.amazon = sandbox_amazon_client(sb, backoff_max_s=0.2, rate_per_s=200, burst=50)
        self.vendor = {k: sb.amazon_extra[k] for k in ("party_id", "warehouse_id", "currency")}

    def day(self, d: date) -> dict:
        return run_window(
            self.dsn, self.rebound, self.amazon, window_end=_utc(d + timedelta(days=1)), vendor=self.vendor
        )

    def days(self, first: date, last: date) -> None:
        d = first
        while d <= last:
            self.day(d)
            d += timedelta(days=1)

    def one(self, sql: str, *args):
        with db.connect(self.dsn) as conn:
            return conn.execute(sql, args).fetchone()

    def all(self, sql: str, *args) -> list:
        with db.connect(self.dsn) as conn:
            return conn.execute(sql, args).fetchall()

    def mismatch(self, rid: str, ln: int, status: str = "open") -> list:
        return self.all(
            "SELECT exception_id, owner, detail FROM ledger.exception WHERE type = 'QUANTITY_MISMATCH'"
            " AND return_id = %s AND line = %s AND status = %s ORDER BY exception_id",
            rid,
            ln,
            status,
        )


def _start(dsn: str, scenario: dict, tmp: Path):
    from returnledger_dev.sandbox.harness import run_sandbox

    path = tmp / "scenario.json"
    path.write_text(json.dumps(scenario))
    first = date.fromisoformat(scenario["run"]["from"])
    reference.load_reference(dsn, at=_utc(first))
    reference.load_scenario_reference(dsn, scenario, at=_utc(first))
    return run_sandbox(path, tmp / "out", faults=False)


def _notes_taken_in(out: Path) -> dict[str, list[tuple[int, int]]]:
    """Credit-note id -> [(line's SKU position, units)] of every note the SP-API simulator answered 202."""
    notes: dict[str, list] = {}
    p = out / "amazon_requests.jsonl"
    for raw in p.read_text().splitlines() if p.exists() else []:
        r = json.loads(raw)
        if r["method"] == "POST" and r["path"].endswith("/invoices") and r["status"] == 202:
            for inv in r["body"]["invoices"]:
                notes[inv["id"]] = [item["invoicedQuantity"]["amount"] for item in inv["items"]]
    return notes


# --------------------------------------------------------------------------- finding 1


def test_credit_note_id_never_reused_after_a_held_resolution(ledger, tmp_path):
    """Line 1 announced 1, received 2, dispositioned QUARANTINED (the policy holds its credit) and the
    warehouse chose 1 unit; line 2 credited the next day, line 3 the day after: each note has its own id,
    apply never fails, and every owed credit goes out."""
    rid = "RB-1-0000001"
    events = (
        _line_events(rid, 1, "2026-10-05", 2, "QUARANTINED")
        + _line_events(rid, 2, "2026-10-06", 1, "REFURBISH")
        + _line_events(rid, 3, "2026-10-07", 1, "REFURBISH")
    )
    scenario = _scenario({rid: ("2026-10-05", [1, 1, 1])}, events, ("2026-10-05", "2026-10-09"))
    with _start(ledger, scenario, tmp_path) as sb:
        m = Month(ledger, sb)
        m.day(date(2026, 10, 5))
        [(exc_id, _, _)] = m.mismatch(rid, 1)
        actions.resolve_over_receipt(ledger, exc_id, 1, actor="warehouse lead", at=_utc(date(2026, 10, 6)))
        for d in range(6, 10):  # before the fix: UniqueViolation on credit_note_pkey from the 7th on
            m.day(date(2026, 10, d))
        sb.dump()
        notes = m.all(
            "SELECT line, document_id, status FROM ledger.amazon_submission WHERE kind = 'CREDIT_NOTE'"
            " ORDER BY line"
        )
        state1 = m.one("SELECT state FROM ledger.return_line WHERE line = 1")[0]
    assert [(ln, doc) for ln, doc, _ in notes] == [(2, f"CN-{rid}-2"), (3, f"CN-{rid}-3")]
    assert all(status == "ACCEPTED" for *_, status in notes), notes
    assert _notes_taken_in(tmp_path / "out") == {f"CN-{rid}-2": [1], f"CN-{rid}-3": [1]}
    assert state1 == "DISPOSITIONED"  # the policy still holds line 1's credit: it named nothing


def test_a_legacy_note_named_after_a_skipped_line_does_not_block_that_lines_own_note(ledger):
    """A ledger written by the old naming holds CN-<return>-1 for a note of line 2; when line 1's credit
    is finally owed, its note takes a free id instead of failing on the key."""
    from returnledger.amazon.submissions import _free_note_ids

    with db.connect(ledger) as conn:
        conn.execute(
            "INSERT INTO ledger.return_order (return_id, order_reference, created_at, returns_notice,"
            " payload) VALUES ('R9', 'o', now(), 'RN9', '{}')"
        )
        for note in ("CN-R9-1", "CN-R9-1r2"):
            conn.execute(
                "INSERT INTO ledger.credit_note (credit_note_id, return_id, returns_notice, created_at,"
                " created_batch) VALUES (%s, 'R9', 'RN9', now(), 'b')",
                (note,),
            )
        assert _free_note_ids(conn, {"R9": "CN-R9-1", "R8": "CN-R8-1"}) == {
            "R9": "CN-R9-1r3",
            "R8": "CN-R8-1",
        }
        conn.rollback()
