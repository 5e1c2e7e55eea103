"""The sync steps against real PostgreSQL and both simulators, outside the scheduler.

The same functions the DAG calls, run day by day with ``run_window``;
the outcome is compared with the generator's expected file.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from returnledger.amazon.confirm import confirm
from returnledger.ledger.runs import SYSTEM_ACTOR
from returnledger.moment import RunMoment
from returnledger.reference import load as reference
from returnledger.store import db
from returnledger_dev import scratch_db
from returnledger_dev.run_window import run_window
from returnledger_dev.scenarios import reference as scenario_reference

sys.path.insert(0, str(Path(__file__).parent))
from test_money_path import _credits

from scenario_parts import sandbox_amazon_client

pytestmark = pytest.mark.integration


def _utc(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


@pytest.fixture(scope="module")
def generated(generated_month, tmp_path_factory):
    scenario, expected = generated_month(40, 5, True)
    path = tmp_path_factory.mktemp("scenario") / "s.json"
    path.write_text(json.dumps(scenario))
    return path, scenario, expected


def _amazon(sb):
    return sandbox_amazon_client(sb, backoff_max_s=0.5)


def _vendor(sb) -> dict:
    ex = sb.amazon_extra
    return {k: ex[k] for k in ("party_id", "warehouse_id", "currency")}


def _run_days(dsn, sb, scenario, days, *, rebound=None, amazon=None):
    rebound = rebound or sb.rebound_client(timeout=0.5, backoff_max_s=0.2)
    amazon = amazon or _amazon(sb)
    ops = {}
    for op in scenario["operations"]:
        ops.setdefault(op["on"], []).append(op)
    for d in days:
        for op in ops.get(d.isoformat(), []):
            scenario_reference.apply_operation(dsn, op, at=_utc(d), actor="test operator")
        run_window(dsn, rebound, amazon, window_end=_utc(d + timedelta(days=1)), vendor=_vendor(sb))


def _all_days(scenario):
    d, end = date.fromisoformat(scenario["run"]["from"]), date.fromisoformat(scenario["run"]["to"])
    while d <= end:
        yield d
        d += timedelta(days=1)


def _requests(out) -> list[dict]:
    return [json.loads(x) for x in (out / "amazon_requests.jsonl").read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def month(generated, pg_server, tmp_path_factory):
    """The whole generated month (with its faults) synced once; yields the ledger and the sandbox outputs."""
    from returnledger.store import migrate
    from returnledger_dev.sandbox.harness import run_sandbox

    path, scenario, expected = generated
    dsn = scratch_db.create_scratch_database(pg_server, "rl_sync")
    migrate.migrate(dsn)
    first = date.fromisoformat(scenario["run"]["from"])
    reference.load_reference(dsn, at=_utc(first))
    scenario_reference.load_scenario_reference(dsn, scenario, at=_utc(first))
    out = tmp_path_factory.mktemp("out")
    with run_sandbox(path, out, faults=True, timeout_delay_s=0.8) as sb:
        _run_days(dsn, sb, scenario, list(_all_days(scenario)))
        sb.dump()
        yield {"dsn": dsn, "sb": sb, "out": out, "scenario": scenario, "expected": expected}
    scratch_db.drop_database(pg_server, dsn)


def test_credits_and_stock_match_expected_despite_faults(month):
    requests = _requests(month["out"])
    assert _credits(requests) == month["expected"]["credits"]
    assert any(r["status"] >= 500 for r in requests), "the scenario's faults were injected"
    stock = {}
    for line in (month["out"] / "amazon_inventory.csv").read_text().splitlines()[1:]:
        sku, _, available = line.split(",")
        stock[sku] = int(available)
    assert {k: stock[k] for k in month["expected"]["inventory"]} == month["expected"]["inventory"]


def test_sync_side_exceptions_raised(month):
    with db.connect(month["dsn"]) as conn:
        got = {
            (t, r or "", str(ln or ""))
            for t, r, ln in conn.execute("SELECT type, return_id, line FROM ledger.exception")
        }
        invalid = conn.execute(
            "SELECT count(*) FROM ledger.exception WHERE type = 'INVALID_EVENT'"
        ).fetchone()[0]
    sync_types = {"UNMAPPED_REASON_CODE", "SKU_MISMATCH", "QUANTITY_MISMATCH", "AMAZON_REJECTED"}
    for e in month["expected"]["exceptions"]:
        if e["type"] in sync_types:
            assert (e["type"], e["return_id"], str(e["line"])) in got, e
    assert invalid == len(month["scenario"]["rebound"]["invalid_events"])


def test_every_event_ends_in_the_ledger_or_the_exception_queue(month):
    """Nothing lost: each delivered event is applied, ignored as a repeat, held with an open exception,
    or invalid with an exception that keeps its raw payload."""
    with db.connect(month["dsn"]) as conn:
        statuses = Counter(
            dict(conn.execute("SELECT status, count(*) FROM ledger.raw_event_status GROUP BY 1"))
        )
        assert statuses["NEW"] == 0
        orphans = conn.execute("""
            SELECT count(*) FROM ledger.raw_event_status r WHERE status = 'HELD' AND NOT EXISTS (
                SELECT 1 FROM ledger.held_event h JOIN ledger.exception e USING (exception_id)
                WHERE h.raw_id = r.raw_id AND e.status = 'open')""").fetchone()[0]
        assert orphans == 0
        invalid_without_exception = conn.execute("""
            SELECT count(*) FROM ledger.raw_event_status r WHERE status = 'INVALID' AND NOT EXISTS (
                SELECT 1 FROM ledger.exception e WHERE e.raw_id = r.raw_id)""").fetchone()[0]
        assert invalid_without_exception == 0
        distinct = {e["event_id"] for e in month["scenario"]["rebound"]["events"]}
        stored = {
            r[0] for r in conn.execute("SELECT event_id FROM ledger.raw_event WHERE event_id IS NOT NULL")
        }
        assert distinct <= stored
        dup = conn.execute("SELECT max(deliveries) FROM ledger.raw_event").fetchone()[0]
        assert dup == 2, "duplicate deliveries are counted on one raw row"
        no_id = conn.execute("SELECT count(*) FROM ledger.raw_event WHERE event_id IS NULL").fetchone()[0]
        assert no_id == sum(1 for e in month["scenario"]["rebound"]["invalid_events"] if "event_id" not in e)
        # every history row names a line and every outcome a raw event (checked as a set, not per row)
        assert conn.execute("SELECT * FROM ledger.audit_orphans()").fetchall() == []


def test_at_most_one_credit_note_per_line_and_ids_are_reused(month):
    requests = _requests(month["out"])
    per_line = Counter()
    with db.connect(month["dsn"]) as conn:
        for rid, ln, doc in conn.execute(
            "SELECT return_id, line, document_id FROM ledger.amazon_submission WHERE kind = 'CREDIT_NOTE'"
        ):
            per_line[(rid, ln)] += 1
            assert doc.startswith("CN-")
    assert max(per_line.values()) == 1
    sent = Counter(
        inv["id"]
        for r in requests
        if r["method"] == "POST" and r["path"].endswith("/invoices")
        for inv in r["body"]["invoices"]
    )
    taken = Counter(
        inv["id"]
        for r in requests
        if r["method"] == "POST" and r["path"].endswith("/invoices") and r["status"] == 202
        for inv in r["body"]["invoices"]
    )
    assert set(sent) == set(taken), "every credit note got through in the end"
    # every send of a credit note, the first and any resubmission after a lost answer or a 5xx, carries an
    # id the ledger holds, with the returns notice and the quantity per SKU the ledger holds under that id
    held: dict[str, Counter] = {}
    notice_of = {}
    with db.connect(month["dsn"]) as conn:
        for doc, notice, sku, qty in conn.execute(
            "SELECT s.document_id, o.returns_notice, s.sku, s.quantity FROM ledger.amazon_submission s"
            " JOIN ledger.return_order o USING (return_id) WHERE s.kind = 'CREDIT_NOTE'"
        ):
            held.setdefault(doc, Counter())[sku] += qty
            notice_of[doc] = notice
    for r in requests:
        if r["method"] == "POST" and r["path"].endswith("/invoices"):
            for inv in r["body"]["invoices"]:
                got = Counter()
                for item in inv["items"]:
                    got[item["vendorProductIdentifier"]] += item["invoicedQuantity"]["amount"]
                assert inv["id"] in held, f"credit note {inv['id']} was sent but the ledger has no such id"
                assert inv["creditNoteDetails"]["returnsReferenceNumber"] == notice_of[inv["id"]], inv["id"]
                assert got == held[inv["id"]], (
                    f"credit note {inv['id']}: sent {dict(got)}, ledger {held[inv['id']]}"
                )


def test_rerunning_every_window_changes_nothing(month):
    """A second pass over all windows (clear-and-rerun of the month) sends nothing and changes nothing."""
    dsn, sb, scenario = month["dsn"], month["sb"], month["scenario"]

    def snapshot():
        with db.connect(dsn) as conn:
            return (
                conn.execute(
                    "SELECT return_id, line, state FROM ledger.return_line ORDER BY 1, 2"
                ).fetchall(),
                conn.execute(
                    "SELECT idempotency_key, status FROM ledger.amazon_submission ORDER BY 1"
                ).fetchall(),
                conn.execute(
                    "SELECT type, subject_key, status FROM ledger.exception ORDER BY 1, 2"
                ).fetchall(),
                conn.execute("SELECT count(*), sum(deliveries) FROM ledger.raw_event").fetchone(),
            )

    before, posts = snapshot(), sum(1 for r in _requests(month["out"]) if r["method"] == "POST")
    _run_days(dsn, sb, scenario, list(_all_days(scenario))[:5])
    assert snapshot() == before
    assert sum(1 for r in _requests(month["out"]) if r["method"] == "POST") == posts


def test_out_of_sequence_hold_is_released_in_order(month):
    with db.connect(month["dsn"]) as conn:
        rows = conn.execute("""SELECT subject_key, status, resolved_by FROM ledger.exception
                               WHERE type = 'OUT_OF_SEQUENCE'""").fetchall()
        assert rows, "the scenario delivers dispositions before receipts"
        assert all(s == "resolved" and by == SYSTEM_ACTOR for _, s, by in rows)
        for key, _, _ in rows:
            rid, ln = key.split("|")
            states = [
                r[0]
                for r in conn.execute(
                    "SELECT to_state FROM ledger.line_history WHERE return_id = %s AND line = %s"
                    " ORDER BY history_id",
                    (rid, int(ln)),
                )
            ]
            assert states.index("RECEIVED") < states.index("GRADED") < states.index("DISPOSITIONED")


def test_an_event_without_id_or_with_bad_fields_changes_no_line(month):
    with db.connect(month["dsn"]) as conn:
        touched = conn.execute("""SELECT count(*) FROM ledger.line_history h
                                  JOIN ledger.raw_event_status r ON r.event_id = h.event_id
                                  WHERE r.status = 'INVALID'""").fetchone()[0]
        details = [
            r[0] for r in conn.execute("SELECT detail FROM ledger.exception WHERE type = 'INVALID_EVENT'")
        ]
    assert touched == 0
    assert any("event_id" in d for d in details)
    assert any("grade 'Z'" in d for d in details)
    assert any("is not a ReBound id" in d for d in details)


def test_confirm_survives_a_transaction_amazon_does_not_know(month, tmp_path):
    """A restarted Amazon side (here: a fresh simulator) answers 404 for stuck transactions: confirm records
    it on the rows, keeps them SUBMITTED for the operating checks, and does not fail the run."""
    from returnledger_dev.sandbox.harness import run_sandbox

    with db.connect(month["dsn"]) as conn:
        stuck = conn.execute(
            "SELECT count(*) FROM ledger.amazon_submission WHERE status = 'SUBMITTED'"
        ).fetchone()[0]
    assert stuck, "the scenario has credit notes stuck in Processing"
    with run_sandbox(month["scenario"], tmp_path, faults=False) as fresh:
        end = _utc(date.fromisoformat(month["scenario"]["run"]["to"]) + timedelta(days=1))
        stats = confirm(month["dsn"], _amazon(fresh), run=RunMoment(end, batch_id="test:confirm"), rounds=1)
    assert stats["unknown"] >= 1
    with db.connect(month["dsn"]) as conn:
        rows = conn.execute(
            "SELECT status, last_error FROM ledger.amazon_submission WHERE status = 'SUBMITTED'"
        ).fetchall()
    assert len(rows) == stuck and all("NotFound" in (e or "") or "404" in (e or "") for _, e in rows)
