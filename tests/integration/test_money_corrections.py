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

import contextlib
import csv
import gzip
import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from returnledger.amazon.push import PushError
from returnledger.exception_queue import actions
from returnledger.exception_queue.queue import ExceptionActionError
from returnledger.reference import load as reference
from returnledger.store import db, migrate
from returnledger_dev import scratch_db
from returnledger_dev.run_window import run_window
from returnledger_dev.scenarios import reference as scenario_reference
from scenario_parts import full_credit_policy, sandbox_amazon_client, vendor

pytestmark = pytest.mark.integration

SKU, UNIT_COST = "SKU-A", Decimal("10.00")
GENERATED = Path(__file__).resolve().parents[1] / "fixtures" / "scenarios"


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
    dsn = scratch_db.create_scratch_database(pg_server, "rl_corrections")
    migrate.migrate(dsn)
    yield dsn
    scratch_db.drop_database(pg_server, dsn)


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


def _start(dsn: str, scenario: dict, tmp: Path, *, faults: bool = False):
    from returnledger_dev.sandbox.harness import run_sandbox

    path = tmp / "scenario.json"
    path.write_text(json.dumps(scenario))
    first = date.fromisoformat(scenario["run"]["from"])
    reference.load_reference(dsn, at=_utc(first))
    scenario_reference.load_scenario_reference(dsn, scenario, at=_utc(first))
    return run_sandbox(path, tmp / "out", faults=faults, timeout_delay_s=0.8)


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
    from returnledger.ledger.submissions import _free_note_ids

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


# --------------------------------------------------------------------------- finding 5 and rule 10


def _one_line_return(rid: str, day: str, announced: int) -> dict:
    return {rid: (day, [announced])}


def _received(rid: str, eid: str, at: str, quantity, ln: int = 1) -> dict:
    return _ev(eid, "RECEIVED", rid, at, line=ln, quantity=quantity)


def _settled(rid: str, day: str, disposition: str = "REFURBISH", ln: int = 1) -> list[dict]:
    return [
        _ev(f"ev-{rid}-grd", "GRADED", rid, f"{day}T15:00:00Z", line=ln, grade="B"),
        _ev(f"ev-{rid}-dsp", "DISPOSITIONED", rid, f"{day}T16:00:00Z", line=ln, disposition=disposition),
    ]


def test_recount_before_and_after_disposition(ledger, tmp_path):
    """Rule 10. Before the disposition the newest count stands: announced 3, received 1, recounted 3 ->
    credit 3; received 3, recounted 1 -> credit 1; an over-receipt recounted to the announced quantity is
    no longer held, a receipt recounted above it is. After the disposition a recount changes nothing sent
    and raises QUANTITY_MISMATCH (warehouse) with both counts. A redelivery of the same event stays a
    no-op."""
    d5, d6 = "2026-10-05", "2026-10-06"
    returns = {
        "RB-UP": (d5, [3]),  # 1 then 3
        "RB-DOWN": (d5, [3]),  # 3 then 1
        "RB-OVER-OK": (d5, [1]),  # 2 (over, held) then 1
        "RB-OVER-NEW": (d5, [1]),  # 1 then 2 (over: the credit waits for the warehouse)
        "RB-LATE": (d5, [3]),  # 3, dispositioned, then recounted 1
        "RB-SAMEDAY": (d5, [3]),  # 5 then 3 in the same run: the mismatch is raised, then settled
    }
    late_receipt = _received("RB-LATE", "ev-RB-LATE-rec", f"{d5}T10:00:00Z", 3)
    events = [
        _received("RB-UP", "ev-RB-UP-rec", f"{d5}T10:00:00Z", 1),
        _received("RB-UP", "ev-RB-UP-recount", f"{d6}T10:00:00Z", 3),
        *_settled("RB-UP", d6),
        _received("RB-DOWN", "ev-RB-DOWN-rec", f"{d5}T10:00:00Z", 3),
        _received("RB-DOWN", "ev-RB-DOWN-recount", f"{d6}T10:00:00Z", 1),
        *_settled("RB-DOWN", d6),
        _received("RB-OVER-OK", "ev-RB-OVER-OK-rec", f"{d5}T10:00:00Z", 2),
        _received("RB-OVER-OK", "ev-RB-OVER-OK-recount", f"{d6}T10:00:00Z", 1),
        *_settled("RB-OVER-OK", d6),
        _received("RB-OVER-NEW", "ev-RB-OVER-NEW-rec", f"{d5}T10:00:00Z", 1),
        _received("RB-OVER-NEW", "ev-RB-OVER-NEW-recount", f"{d6}T10:00:00Z", 2),
        *_settled("RB-OVER-NEW", d6),
        _received("RB-SAMEDAY", "ev-RB-SAMEDAY-rec", f"{d5}T10:00:00Z", 5),
        _received("RB-SAMEDAY", "ev-RB-SAMEDAY-recount", f"{d5}T10:30:00Z", 3),
        *_settled("RB-SAMEDAY", d5),
        late_receipt,
        *_settled("RB-LATE", d5, "RESTOCKED"),
        _received("RB-LATE", "ev-RB-LATE-recount", f"{d6}T10:00:00Z", 1),
        {**late_receipt, "delivered_at": "2026-10-07T09:00:00Z"},  # ReBound redelivers the receipt
    ]
    scenario = _scenario(returns, events, (d5, "2026-10-08"))
    with _start(ledger, scenario, tmp_path) as sb:
        m = Month(ledger, sb)
        m.day(date(2026, 10, 5))
        assert [d for _, _, d in m.mismatch("RB-UP", 1)] == ["received 1 of 3 announced"]
        assert m.mismatch("RB-DOWN", 1) == []
        late_credit = m.one(
            "SELECT quantity FROM ledger.amazon_submission WHERE return_id = 'RB-LATE'"
            " AND kind = 'CREDIT_NOTE'"
        )
        assert late_credit == (3,)
        m.days(date(2026, 10, 6), date(2026, 10, 8))
        sb.dump()
        received = dict(m.all("SELECT return_id, quantity_received FROM ledger.return_line"))
        open_mismatch = {rid: m.mismatch(rid, 1) for rid in returns}
        sameday = m.all(
            "SELECT status, detail FROM ledger.exception WHERE type = 'QUANTITY_MISMATCH'"
            " AND return_id = 'RB-SAMEDAY'"
        )
        resolved_up = m.all(
            "SELECT resolution FROM ledger.exception WHERE type = 'QUANTITY_MISMATCH' AND return_id = 'RB-UP'"
            " AND status = 'resolved'"
        )
        history = m.all(
            "SELECT return_id, event_id, from_state, to_state, detail FROM ledger.line_history"
            " WHERE cause = 'RECOUNT' ORDER BY return_id"
        )
        late_state = m.one("SELECT state FROM ledger.return_line WHERE return_id = 'RB-LATE'")[0]
        outcomes = dict(
            m.all(
                "SELECT r.event_id, o.status FROM ledger.raw_event r"
                " JOIN ledger.event_outcome o USING (raw_id) WHERE r.event_id = 'ev-RB-LATE-rec'"
            )
        )
    notes = _notes_taken_in(tmp_path / "out")
    # before the disposition: the newest count is what the credit follows
    assert notes == {
        "CN-RB-UP-1": [3],
        "CN-RB-DOWN-1": [1],
        "CN-RB-OVER-OK-1": [1],
        "CN-RB-LATE-1": [3],  # sent before the recount, and unchanged by it
        "CN-RB-SAMEDAY-1": [3],
    }, notes
    assert sameday == [("resolved", "received 5 of 3 announced")]
    assert received == {
        "RB-UP": 3,
        "RB-DOWN": 1,
        "RB-OVER-OK": 1,
        "RB-OVER-NEW": 2,
        "RB-LATE": 3,
        "RB-SAMEDAY": 3,
    }
    # the mismatch follows the count: resolved when it matches, raised when it differs
    assert open_mismatch["RB-UP"] == [] and len(resolved_up) == 1 and "recounted" in resolved_up[0][0]
    assert [(o, d) for _, o, d in open_mismatch["RB-DOWN"]] == [
        ("warehouse", "received 1 of 3 announced (recounted; 3 before)")
    ]
    assert open_mismatch["RB-OVER-OK"] == []
    assert [d for *_, d in open_mismatch["RB-OVER-NEW"]] == [
        "received 2 of 1 announced (recounted; 1 before)"
    ]
    # after the disposition: nothing sent changes, finance sees both counts
    [(_, owner, detail)] = open_mismatch["RB-LATE"]
    assert owner == "warehouse" and "recounted 1 unit(s) after the disposition" in detail
    assert "counted 3 of 3 announced" in detail and late_state == "CLOSED"
    # every recount is in the line's history with both counts; the redelivery changed nothing
    assert [(r[0], r[1], r[4]) for r in history] == [
        ("RB-DOWN", "ev-RB-DOWN-recount", {"counted_before": 3, "recounted": 1, "after_disposition": False}),
        ("RB-LATE", "ev-RB-LATE-recount", {"counted_before": 3, "recounted": 1, "after_disposition": True}),
        (
            "RB-OVER-NEW",
            "ev-RB-OVER-NEW-recount",
            {"counted_before": 1, "recounted": 2, "after_disposition": False},
        ),
        (
            "RB-OVER-OK",
            "ev-RB-OVER-OK-recount",
            {"counted_before": 2, "recounted": 1, "after_disposition": False},
        ),
        (
            "RB-SAMEDAY",
            "ev-RB-SAMEDAY-recount",
            {"counted_before": 5, "recounted": 3, "after_disposition": False},
        ),
        ("RB-UP", "ev-RB-UP-recount", {"counted_before": 1, "recounted": 3, "after_disposition": False}),
    ]
    assert outcomes == {"ev-RB-LATE-rec": "APPLIED"}


def test_receipt_of_zero_units_is_invalid_and_the_real_one_applies(ledger, tmp_path):
    """A RECEIVED of 0 units is no receipt: INVALID_EVENT, the line untouched; the real receipt of 2 that
    follows under another event id is the line's receipt, and its credit goes out."""
    d5, d6 = "2026-10-05", "2026-10-06"
    events = [
        _received("RB-ZERO", "ev-RB-ZERO-rec0", f"{d5}T10:00:00Z", 0),
        _received("RB-ZERO", "ev-RB-ZERO-rec2", f"{d6}T10:00:00Z", 2),
        *_settled("RB-ZERO", d6),
    ]
    scenario = _scenario({"RB-ZERO": (d5, [2])}, events, (d5, "2026-10-07"))
    with _start(ledger, scenario, tmp_path) as sb:
        m = Month(ledger, sb)
        m.day(date(2026, 10, 5))
        invalid = m.all(
            "SELECT e.detail FROM ledger.exception e JOIN ledger.raw_event r USING (raw_id)"
            " WHERE e.type = 'INVALID_EVENT' AND r.event_id = 'ev-RB-ZERO-rec0'"
        )
        after_zero = m.one("SELECT state, quantity_received FROM ledger.return_line")
        m.days(date(2026, 10, 6), date(2026, 10, 7))
        sb.dump()
        line = m.one("SELECT state, quantity_received FROM ledger.return_line")
        mismatches = m.all("SELECT 1 FROM ledger.exception WHERE type = 'QUANTITY_MISMATCH'")
    assert len(invalid) == 1 and "out of range (1..100000)" in invalid[0][0], invalid
    assert after_zero == ("IN_TRANSIT", None)
    assert line == ("CLOSED", 2) and mismatches == []
    assert _notes_taken_in(tmp_path / "out") == {"CN-RB-ZERO-1": [2]}


# --------------------------------------------------------------------------- finding 6


def test_over_receipt_closes_only_with_a_quantity(ledger, tmp_path, capsys):
    """An over-receipt's QUANTITY_MISMATCH refuses the generic Resolve and Dismiss (console and CLI) and
    closes only by choosing the quantity: 0 closes the line with nothing owed, before or after the
    disposition; a line left owed a credit with no note and no exception is reported as a stall."""
    from returnledger.cli.main import main as cli
    from returnledger.exception_queue.stalled import check_stalled_flows
    from returnledger.render import render

    d5, d6 = "2026-10-05", "2026-10-06"
    returns = {rid: (d5, [1]) for rid in ("RB-HELD", "RB-ZERO", "RB-EARLY0", "RB-EARLY1", "RB-LOST")}
    events = [_received(rid, f"ev-{rid}-rec", f"{d5}T10:00:00Z", 3) for rid in returns]
    for rid in ("RB-HELD", "RB-ZERO", "RB-LOST"):
        events += _settled(rid, d5)
    for rid in ("RB-EARLY0", "RB-EARLY1"):  # the warehouse chooses before the disposition
        events += _settled(rid, d6)
    scenario = _scenario(returns, events, (d5, "2026-10-09"))
    at = _utc(date(2026, 10, 6), 7)
    with _start(ledger, scenario, tmp_path) as sb:
        m = Month(ledger, sb)
        m.day(date(2026, 10, 5))
        exc = {rid: m.mismatch(rid, 1)[0][0] for rid in returns}
        for verb in ("resolve", "dismiss"):
            with pytest.raises(
                ExceptionActionError, match=r"returnledger exceptions credit \d+ QUANTITY"
            ) as why:
                getattr(actions, f"{verb}_exception")(
                    ledger,
                    exc["RB-HELD"],
                    actor="ops",
                    at=at,
                    **{"resolution" if verb == "resolve" else "reason": "counted again, fine"},
                )
            assert "0 closes the line with nothing owed" in str(why.value)
            assert (
                cli(
                    [
                        "exceptions",
                        verb,
                        str(exc["RB-HELD"]),
                        "--why",
                        "fine",
                        "--actor",
                        "ops",
                        "--dsn",
                        ledger,
                    ]
                )
                == 2
            )
        assert "refused: cannot dismiss" in capsys.readouterr().out
        # the console offers only the quantity action for it
        with db.connect(ledger) as conn:
            from returnledger.exception_queue.queries import exception_detail

            detail = exception_detail(conn, exc["RB-HELD"])
        from returnledger.console.pages import _over_received

        x = dict(detail["exception"])
        over = _over_received(x, detail["line"] or {})
        page = render(
            "console/detail.html",
            base="",
            user="wh",
            read_only=False,
            x=x,
            can_act=True,
            over_received=over,
            sections=[],
            csrf="t",
            what_to_do=None,
        )
        assert over == {"received": 3, "announced": 1}
        assert 'id="credit-quantity-form"' in page and 'id="resolve-form"' not in page
        assert 'id="dismiss-form"' not in page
        # the choices: 1 unit (console's function), 0 through the CLI, and two before the disposition
        actions.resolve_over_receipt(ledger, exc["RB-HELD"], 1, actor="wh", at=at, note="2 were not ours")
        assert cli(["exceptions", "credit", str(exc["RB-ZERO"]), "0", "--actor", "wh", "--dsn", ledger]) == 0
        for rid, q in (("RB-EARLY0", 0), ("RB-EARLY1", 1)):
            actions.resolve_over_receipt(ledger, exc[rid], q, actor="wh", at=at)
        # the old way out: the exception closed without a quantity (as Resolve did before)
        with db.connect(ledger) as conn:
            conn.execute(
                "UPDATE ledger.exception SET status = 'resolved', resolved_at = %s, resolved_by = 'ops',"
                " resolution = 'closed by hand' WHERE exception_id = %s",
                (at, exc["RB-LOST"]),
            )
        m.days(date(2026, 10, 6), date(2026, 10, 9))
        sb.dump()
        states = dict(m.all("SELECT return_id, state FROM ledger.return_line"))
        stall = check_stalled_flows(ledger, as_of=_utc(date(2026, 10, 9), 23))
        stalled = m.all(
            "SELECT subject_key, return_id, owner FROM ledger.exception WHERE type = 'SYNC_STALLED'"
            " AND status = 'open' AND subject_key LIKE 'uncredited:%%'"
        )
    assert _notes_taken_in(tmp_path / "out") == {"CN-RB-HELD-1": [1], "CN-RB-EARLY1-1": [1]}
    assert states == {
        "RB-HELD": "CLOSED",
        "RB-ZERO": "CLOSED",
        "RB-EARLY0": "CLOSED",
        "RB-EARLY1": "CLOSED",
        "RB-LOST": "DISPOSITIONED",
    }
    assert stall["uncredited_lines"] == 1
    assert stalled == [("uncredited:RB-LOST|1", "RB-LOST", "integration")]


# --------------------------------------------------------------------------- a generated month, corrected


def _credits_taken_in(out: Path) -> dict[str, dict]:
    """What Amazon took in, as the outcome checker sums it: distinct note ids answered 202, per returns
    notice and SKU."""
    notes: dict[str, dict] = {}
    p = out / "amazon_requests.jsonl"
    for raw in p.read_text().splitlines() if p.exists() else []:
        r = json.loads(raw)
        if r["method"] == "POST" and r["path"].endswith("/invoices") and r["status"] == 202:
            notes.update({inv["id"]: inv for inv in r["body"]["invoices"]})
    sums: dict[str, list] = {}
    for inv in notes.values():
        for item in inv["items"]:
            key = f"{inv['creditNoteDetails']['returnsReferenceNumber']}|{item['vendorProductIdentifier']}"
            c = sums.setdefault(key, [0, Decimal(0)])
            c[0] += item["invoicedQuantity"]["amount"]
            c[1] += Decimal(item["netCost"]["amount"]) * item["invoicedQuantity"]["amount"]
    return {k: {"quantity": q, "amount": str(a.quantize(Decimal("0.01")))} for k, (q, a) in sums.items()}


@pytest.mark.slow
def test_generated_month_with_recounts_and_resolved_over_receipts(ledger, tmp_path):
    """A generated month (shared notices, "reject", faults) edited by hand: over-receipts resolved with
    ``resolve_over_receipt`` operations (on a policy-held disposition, with 0 before and after the
    disposition, before the disposition), recounts before and after dispositions, receipts of 0 units.
    Credits and stock are those ../shared/scenarios/model.py computes (tests/fixtures/scenarios/README.md)."""
    name = (
        Path(__file__).parents[1]
        / "fixtures"
        / "scenarios"
        / "gen-60-21-faults-shared-notices-reject-corrections"
    )
    scenario = json.loads(gzip.decompress(Path(f"{name}.json.gz").read_bytes()))
    expected = json.loads(gzip.decompress(Path(f"{name}.expected.json.gz").read_bytes()))
    assert {o["action"] for o in scenario["operations"]} >= {"resolve_over_receipt"}
    ops: dict[str, list] = {}
    for op in scenario["operations"]:
        ops.setdefault(op["on"], []).append(op)
    first, last = date.fromisoformat(scenario["run"]["from"]), date.fromisoformat(scenario["run"]["to"])
    with _start(ledger, scenario, tmp_path) as sb:  # faults change no outcome: make demo runs them
        m = Month(ledger, sb)
        d = first
        while d <= last:
            for op in ops.get(d.isoformat(), []):
                scenario_reference.apply_operation(ledger, op, at=_utc(d), actor="warehouse (scenario)")
            with contextlib.suppress(PushError):  # the DAG task would retry; the next day sends the rest
                m.day(d)
            d += timedelta(days=1)
        sb.dump()
    assert _credits_taken_in(tmp_path / "out") == expected["credits"]
    with (tmp_path / "out" / "amazon_inventory.csv").open() as f:
        stock = {r["sku"]: int(r["available"]) for r in csv.DictReader(f)}
    assert {k: stock.get(k) for k in expected["inventory"]} == expected["inventory"]


def test_scenario_loader_accepts_resolve_over_receipt_and_names_a_bad_one(tmp_path):
    """The operation as scenarios/README.md defines it loads; one naming a line ReBound does not have, a
    negative quantity or a day outside the run is refused with its JSON path."""
    from returnledger_dev.sandbox.scenario import load_scenario
    from returnledger_dev.sandbox.scenario_rules import ScenarioError

    base = _scenario({"RB-1": ("2026-10-05", [1])}, [], ("2026-10-05", "2026-10-09"))
    good = {
        "on": "2026-10-06",
        "action": "resolve_over_receipt",
        "return_id": "RB-1",
        "line": 1,
        "quantity": 0,
    }
    path = tmp_path / "s.json"
    path.write_text(json.dumps({**base, "operations": [good]}))
    [op] = load_scenario(path).operations
    assert (op.action, op.return_id, op.line, op.quantity) == ("resolve_over_receipt", "RB-1", 1, 0)
    for bad, message in (
        ({"line": 2}, "operations[0]: resolve_over_receipt names line 2 of return 'RB-1'"),
        ({"quantity": -1}, "operations[0].quantity"),
        ({"on": "2026-11-01"}, "operations[0].on: 2026-11-01 is not a day of the run"),
    ):
        path.write_text(json.dumps({**base, "operations": [{**good, **bad}]}))
        with pytest.raises(ScenarioError) as err:
            load_scenario(path)
        assert str(err.value).startswith(message), str(err.value)
