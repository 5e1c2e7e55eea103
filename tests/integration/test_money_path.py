"""The money path (issue 11): exactly one accepted credit per owed line.

Real PostgreSQL, the SP-API simulator over HTTP, and the production client (python-amazon-sp-api).
Scenarios are built here (no ../shared needed), except the generated shared-notice month, which uses
the reference generator when it is beside the checkout.

Findings and the tests that guard them:
1. credit-note ids collided across returns sharing a notice ->
   test_returns_sharing_a_notice_each_get_their_credit, test_generated_shared_notice_month_matches_expected,
   test_credit_note_ids_are_unique_in_the_ledger
2. resends assumed Amazon's "same note" answer -> test_reject_rule_with_faults_gives_the_same_outcome
3. nothing claimed a row before sending -> test_two_pushers_at_once_send_each_note_once,
   test_push_killed_between_202_and_ledger_update
4. an over-receipt was credited in full -> test_over_receipt_holds_the_credit_until_the_warehouse_chooses
"""

from __future__ import annotations

import contextlib
import json
import threading
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from returnledger.amazon import push as amazon_push
from returnledger.amazon.confirm import confirm
from returnledger.amazon.push import push_credits
from returnledger.intake.feed import extract
from returnledger.ledger.apply import apply
from returnledger.moment import RunMoment, batch_id_for
from returnledger.reference import load as reference
from returnledger.screening.screen import quarantine, validate
from returnledger.store import db, migrate
from returnledger_dev import scratch_db
from returnledger_dev.run_window import run_window
from returnledger_dev.scenarios import reference as scenario_reference
from scenario_parts import full_credit_policy, sandbox_amazon_client, vendor

pytestmark = pytest.mark.integration
UTC = UTC


def _utc(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


# --------------------------------------------------------------------------- a small scenario builder


def _events(n: int, rid: str, day: str, *, received: int = 1, disposition: str = "REFURBISH") -> list[dict]:
    p = f"ev-{rid}"

    def ev(i, t, h, **x):
        return {
            "event_id": f"{p}-{i}",
            "type": t,
            "return_id": rid,
            "occurred_at": f"{day}T{h:02d}:00:00Z",
            **x,
        }

    return [
        ev(1, "RETURN_CREATED", 8),
        ev(2, "IN_TRANSIT", 9),
        ev(3, "RECEIVED", 10, line=1, quantity=received),
        ev(4, "GRADED", 11, line=1, grade="B"),
        ev(5, "DISPOSITIONED", 12, line=1, disposition=disposition),
    ]


def _scenario(
    returns: list[tuple[str, str, str, str, int, int]],
    *,
    faults: dict | None = None,
    duplicate: str = "same_note",
) -> dict:
    """returns: (return_id, notice, sku, day, announced, received); every line 1 is REFURBISHed
    (100% credit)."""
    skus = sorted({r[2] for r in returns})
    return {
        "format": "returns-scenario/1",
        "name": "money-path",
        "description": "issue 11",
        "vendor": vendor(),
        "run": {
            "from": min(r[3] for r in returns),
            "to": max(r[3] for r in returns),
            "close_period": "2026-10",
        },
        "policy": full_credit_policy(),
        "catalog": [
            {"sku": s, "asin": f"B0{i:08d}", "unit_cost": f"{10 + i}.00", "available": 5}
            for i, s in enumerate(skus)
        ],
        "reason_codes": [{"rebound_reason": "FAULTY", "amazon_reason": "CR-DEFECTIVE"}],
        "rebound": {
            "returns": [
                {
                    "return_id": rid,
                    "order_reference": f"203-{i:07d}-0000000",
                    "created_at": f"{day}T08:00:00Z",
                    "amazon_refs": {
                        "returns_notice": notice,
                        "rma_id": f"RMA-{notice}",
                        "vret": f"VRET-{notice}",
                    },
                    "lines": [{"line": 1, "sku": sku, "quantity": announced, "reason": "FAULTY"}],
                }
                for i, (rid, notice, sku, day, announced, _) in enumerate(returns)
            ],
            "events": [e for rid, _, _, day, _, rec in returns for e in _events(0, rid, day, received=rec)],
            "invalid_events": [],
        },
        "amazon": {"returns": [], "credit_outcomes": [], "duplicate_credit_note": duplicate},
        "operations": [],
        "faults": faults or {},
    }


def _unit_cost(scenario: dict) -> dict[str, Decimal]:
    return {c["sku"]: Decimal(c["unit_cost"]) for c in scenario["catalog"]}


def _amazon(sb, **kw):
    # Amazon's own quota (10/s) is a production setting; without a throttle fault the tests go faster
    if sb.scenario.faults.amazon.throttle is None:
        kw.setdefault("rate_per_s", 200)
        kw.setdefault("burst", 50)
    return sandbox_amazon_client(sb, backoff_max_s=0.2, **kw)


def _vendor(sb) -> dict:
    ex = sb.amazon_extra
    return {k: ex[k] for k in ("party_id", "warehouse_id", "currency")}


def _requests(out: Path) -> list[dict]:
    p = out / "amazon_requests.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.exists() else []


def _credits(requests) -> dict:
    """What Amazon took in, as check.py sums it: distinct note ids answered 202, per notice and SKU."""
    notes = {}
    for r in requests:
        if r["method"] == "POST" and r["path"].endswith("/invoices") and r["status"] == 202:
            for inv in r["body"]["invoices"]:
                notes[inv["id"]] = inv
    out: dict[str, dict] = {}
    for inv in notes.values():
        notice = inv["creditNoteDetails"]["returnsReferenceNumber"]
        for item in inv["items"]:
            c = out.setdefault(
                f"{notice}|{item['vendorProductIdentifier']}", {"quantity": 0, "amount": Decimal(0)}
            )
            c["quantity"] += item["invoicedQuantity"]["amount"]
            c["amount"] += Decimal(item["netCost"]["amount"]) * item["invoicedQuantity"]["amount"]
    return {
        k: {"quantity": v["quantity"], "amount": str(v["amount"].quantize(Decimal("0.01")))}
        for k, v in out.items()
    }


def _note_posts(requests) -> dict[str, int]:
    """How many times each credit-note id was answered 202 (Amazon-side effects, whatever the rule)."""
    n: dict[str, int] = {}
    for r in requests:
        if r["method"] == "POST" and r["path"].endswith("/invoices") and r["status"] == 202:
            for inv in r["body"]["invoices"]:
                n[inv["id"]] = n.get(inv["id"], 0) + 1
    return n


@pytest.fixture
def ledger(pg_server):
    dsn = scratch_db.create_scratch_database(pg_server, "rl_money")
    migrate.migrate(dsn)
    yield dsn
    scratch_db.drop_database(pg_server, dsn)


def _start(dsn: str, scenario: dict, tmp: Path, name: str = "s.json"):
    path = tmp / name
    path.write_text(json.dumps(scenario))
    first = date.fromisoformat(scenario["run"]["from"])
    reference.load_reference(dsn, at=_utc(first))
    scenario_reference.load_scenario_reference(dsn, scenario, at=_utc(first))
    return path


def _days(scenario):
    d, end = date.fromisoformat(scenario["run"]["from"]), date.fromisoformat(scenario["run"]["to"])
    while d <= end:
        yield d
        d += timedelta(days=1)


def _run_month(dsn, sb, scenario, *, amazon=None, extra_days: int = 2) -> None:
    rebound = sb.rebound_client(timeout=0.5, backoff_max_s=0.2)
    amazon = amazon or _amazon(sb)
    days = list(_days(scenario))
    days += [days[-1] + timedelta(days=i) for i in range(1, extra_days + 1)]  # let confirm settle
    for d in days:
        # on a PushError the DAG task would retry; the next window sends what is left (same ids)
        with contextlib.suppress(amazon_push.PushError):
            run_window(dsn, rebound, amazon, window_end=_utc(d + timedelta(days=1)), vendor=_vendor(sb))


def _ledger_credits(dsn) -> dict:
    with db.connect(dsn) as conn:
        return {
            f"{r[0]}|{r[1]}": (r[2], r[3])
            for r in conn.execute("""
            SELECT s.return_id, s.line, s.status, s.document_id FROM ledger.amazon_submission s
             WHERE s.kind = 'CREDIT_NOTE' ORDER BY 1, 2""")
        }


SHARED = [
    ("RB-1-0000001", "RN-SHARED-1", "SKU-A", "2026-10-05", 1, 1),
    ("RB-1-0000002", "RN-SHARED-1", "SKU-B", "2026-10-06", 2, 2),
    ("RB-1-0000003", "RN-SHARED-1", "SKU-C", "2026-10-07", 1, 1),
    ("RB-1-0000004", "RN-OWN-4", "SKU-A", "2026-10-07", 1, 1),
]


def _expected(scenario) -> dict:
    cost = _unit_cost(scenario)
    out: dict[str, dict] = {}
    for _rid, notice, sku, _, _, rec in SHARED:
        c = out.setdefault(f"{notice}|{sku}", {"quantity": 0, "amount": Decimal(0)})
        c["quantity"] += rec
        c["amount"] += cost[sku] * rec
    return {
        k: {"quantity": v["quantity"], "amount": str(v["amount"].quantize(Decimal("0.01")))}
        for k, v in out.items()
    }


def test_returns_sharing_a_notice_each_get_their_credit(ledger, tmp_path):
    """Three returns under one returns notice, each crediting its line 1 on a different day."""
    from returnledger_dev.sandbox.harness import run_sandbox

    scenario = _scenario(SHARED)
    path = _start(ledger, scenario, tmp_path)
    with run_sandbox(path, tmp_path / "out", faults=False) as sb:
        _run_month(ledger, sb, scenario)
        sb.dump()
    assert _credits(_requests(tmp_path / "out")) == _expected(scenario)
    got = _ledger_credits(ledger)
    assert {v[0] for v in got.values()} == {"ACCEPTED"}
    assert len({v[1] for v in got.values()}) == len(SHARED), "one note per return"


def test_credit_note_ids_are_unique_in_the_ledger(ledger):
    """The schema refuses one note id for two returns, whatever code writes the rows."""
    with db.connect(ledger) as conn:
        for rid in ("R-1", "R-2"):
            conn.execute(
                "INSERT INTO ledger.return_order (return_id, order_reference, created_at, returns_notice)"
                " VALUES (%s, 'o', %s, 'RN-1')",
                (rid, _utc(date(2026, 10, 1))),
            )
            conn.execute(
                "INSERT INTO ledger.return_line (return_id, line, sku, reason, quantity_announced)"
                " VALUES (%s, 1, 'SKU-A', 'FAULTY', 1)",
                (rid,),
            )
        conn.execute(
            "INSERT INTO ledger.credit_note (credit_note_id, return_id, created_at, created_batch)"
            " VALUES ('CN-RN-1-1', 'R-1', now(), 't')"
        )
        conn.commit()
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute(
                "INSERT INTO ledger.amazon_submission (idempotency_key, kind, return_id, line, sku,"
                " quantity, unit_amount, currency, document_id, created_at, created_batch) VALUES"
                " ('credit:R-2:1', 'CREDIT_NOTE', 'R-2', 1, 'SKU-A', 1, 1, 'GBP', 'CN-RN-1-1', now(), 't')"
            )
        conn.rollback()
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(
                "INSERT INTO ledger.credit_note (credit_note_id, return_id, created_at, created_batch)"
                " VALUES ('CN-RN-1-1', 'R-1', now(), 't')"
            )


def test_reject_rule_with_faults_gives_the_same_outcome(ledger, pg_server, tmp_path):
    """Amazon refusing known ids as duplicates, with lost responses and 5xx: same credits as a clean run,
    every note accepted once, no AMAZON_REJECTED."""
    from returnledger_dev.sandbox.harness import run_sandbox

    faults = {"amazon": {"error_rate": 0.25, "lost_response_rate": 0.3}}
    scenario = _scenario(SHARED, faults=faults, duplicate="reject")
    path = _start(ledger, scenario, tmp_path)
    with run_sandbox(path, tmp_path / "out", faults=True, seed=3) as sb:
        _run_month(ledger, sb, scenario, extra_days=4)
        sb.dump()
    requests = _requests(tmp_path / "out")
    assert any(r["status"] >= 500 for r in requests), "faults were injected"
    assert _credits(requests) == _expected(scenario)
    with db.connect(ledger) as conn:
        rejected = conn.execute(
            "SELECT count(*) FROM ledger.exception WHERE type = 'AMAZON_REJECTED'"
        ).fetchone()[0]
        statuses = dict(
            conn.execute(
                "SELECT status, count(*) FROM ledger.amazon_submission WHERE kind = 'CREDIT_NOTE' GROUP BY 1"
            ).fetchall()
        )
        lines = dict(conn.execute("SELECT state, count(*) FROM ledger.return_line GROUP BY 1").fetchall())
        log_rows = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE http_status >= 500)"
            " FROM ledger.submission_attempt WHERE kind = 'CREDIT_NOTE'"
        ).fetchone()
    assert rejected == 0
    assert statuses == {"ACCEPTED": len(SHARED)}
    assert lines == {"CLOSED": len(SHARED)}
    assert log_rows[0] >= len(SHARED) and log_rows[1] >= 1, "every HTTP attempt is in the send log"


def _seed_pending_notes(dsn, tmp_path, n: int = 6):
    """n dispositioned returns with their credit notes PENDING (apply ran, nothing pushed yet)."""
    rows = [(f"RB-1-{i:07d}", f"RN-{i}", "SKU-A", "2026-10-05", 1, 1) for i in range(1, n + 1)]
    scenario = _scenario(rows, duplicate="reject")
    return _start(dsn, scenario, tmp_path), scenario


def _sync_without_push(dsn, sb, day: date):
    rebound = sb.rebound_client(timeout=0.5, backoff_max_s=0.2)
    end = _utc(day + timedelta(days=1))
    batch = batch_id_for(end)
    extract(dsn, rebound, run=RunMoment(end, batch_id=batch))
    validate(dsn, batch_id=batch)
    quarantine(dsn, run=RunMoment(end, batch_id=batch))
    apply(dsn, run=RunMoment(end, batch_id=batch))
    return end, batch


def test_two_pushers_at_once_send_each_note_once(ledger, tmp_path):
    from returnledger_dev.sandbox.harness import run_sandbox

    path, _scenario = _seed_pending_notes(ledger, tmp_path, n=12)
    with run_sandbox(path, tmp_path / "out", faults=False) as sb:
        end, batch = _sync_without_push(ledger, sb, date(2026, 10, 5))
        barrier = threading.Barrier(2)
        results, errors = [], []

        class SlowClient:
            """Both pushers claim before either sends, and every send takes a moment."""

            def __init__(self, real):
                self.real = real

            def submit_invoices(self, invoices, **kw):
                import time

                time.sleep(0.05)
                return self.real.submit_invoices(invoices, **kw)

        def push():
            try:
                barrier.wait()
                results.append(
                    push_credits(
                        ledger, SlowClient(_amazon(sb)), party_id="VNDR1", run=RunMoment(end, batch_id=batch)
                    )
                )
            except Exception as e:
                errors.append(e)

        threads = [threading.Thread(target=push) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        sb.dump()
    assert not errors, errors
    assert sum(r["credit_notes"] for r in results) == 12
    posts = _note_posts(_requests(tmp_path / "out"))
    assert len(posts) == 12 and set(posts.values()) == {1}, posts


class _Crash(BaseException):
    """Stands for the process dying: not an Exception, so no handler in the push path catches it."""


@pytest.mark.parametrize("record_batch", ["1", "8"])
def test_push_killed_between_202_and_ledger_update(ledger, tmp_path, monkeypatch, record_batch):
    """Amazon took the note (202); the pusher dies before the ledger update; the task is rerun once the
    dead pusher's lease has run out. Under the reject rule the resend is refused as a duplicate naming the
    logged transaction: one note at Amazon, one accepted credit. Sent notes are recorded several per
    transaction (returnledger.amazon.recording): with batches of 8 the first note's 202 dies with the
    pusher too, and both unrecorded notes are resent and judged by evidence; with batches of 1 only the
    second is."""
    import time

    from returnledger.amazon.claims import LEASE_ENV
    from returnledger.amazon.recording import RECORD_ENV
    from returnledger_dev.sandbox.harness import run_sandbox

    monkeypatch.setenv(LEASE_ENV, "1")
    monkeypatch.setenv(RECORD_ENV, record_batch)
    monkeypatch.setattr("returnledger.amazon.recording.RECORD_WAIT_S", 60.0)  # by size only, however slow
    unrecorded = 1 if record_batch == "1" else 2

    path, _scenario = _seed_pending_notes(ledger, tmp_path, n=3)
    with run_sandbox(path, tmp_path / "out", faults=False) as sb:
        end, batch = _sync_without_push(ledger, sb, date(2026, 10, 5))

        class DiesAfter202:
            def __init__(self, real):
                self.real, self.sent = real, 0

            def submit_invoices(self, invoices, **kw):
                tx = self.real.submit_invoices(invoices, **kw)
                self.sent += 1
                if self.sent == 2:
                    raise _Crash("killed after Amazon's 202")
                return tx

        with pytest.raises(_Crash):
            push_credits(
                ledger,
                DiesAfter202(_amazon(sb)),
                party_id="VNDR1",
                run=RunMoment(end, batch_id=batch),
            )
        with db.connect(ledger) as conn:
            # what the dead pusher left: its unrecorded (and unsent) notes SENDING, the unrecorded ones'
            # attempts without an outcome
            left = conn.execute(
                """SELECT count(DISTINCT s.document_id) FILTER (WHERE s.status = 'SENDING'),
                          (SELECT count(*) FROM ledger.submission_attempt a WHERE a.outcome = 'SENDING'
                              AND NOT EXISTS (SELECT 1 FROM ledger.submission_attempt r
                                               WHERE r.send_id = a.send_id AND r.outcome <> 'SENDING')),
                          count(*) FILTER (WHERE s.status IN ('SUBMITTED', 'ACCEPTED'))
                     FROM ledger.amazon_submission s WHERE s.kind = 'CREDIT_NOTE'"""
            ).fetchone()
        assert left == (1 + unrecorded, unrecorded, 2 - unrecorded), left
        with db.connect(ledger) as conn:
            assert (
                conn.execute(
                    "SELECT count(*) FROM ledger.amazon_submission WHERE status = 'SENDING'"
                ).fetchone()[0]
                >= 1
            ), "the dead pusher's claim is left behind"
        # the retry: the dead claim is taken over once its lease ran out, the note resent with the same id
        time.sleep(1.2)
        amazon = _amazon(sb)
        push_credits(ledger, amazon, party_id="VNDR1", run=RunMoment(end, batch_id=batch))
        stats = confirm(ledger, amazon, run=RunMoment(end, batch_id=batch), rounds=6, wait_s=0.3)
        sb.dump()
    requests = _requests(tmp_path / "out")
    posts = _note_posts(requests)
    # each unrecorded note resent once (refused at Amazon under the reject rule), the others sent once
    assert len(posts) == 3 and sorted(posts.values()) == sorted([1] * (3 - unrecorded) + [2] * unrecorded), (
        posts
    )
    assert stats["duplicates_followed"] >= 1
    assert _credits(requests) == {f"RN-{i}|SKU-A": {"quantity": 1, "amount": "10.00"} for i in range(1, 4)}
    with db.connect(ledger) as conn:
        assert dict(
            conn.execute(
                "SELECT status, count(*) FROM ledger.amazon_submission WHERE kind = 'CREDIT_NOTE' GROUP BY 1"
            ).fetchall()
        ) == {"ACCEPTED": 3}
        assert (
            conn.execute("SELECT count(*) FROM ledger.exception WHERE type = 'AMAZON_REJECTED'").fetchone()[0]
            == 0
        )
        held = conn.execute(
            "SELECT confirmed_by, first_transaction_id IS NOT NULL FROM ledger.credit_note"
            " ORDER BY credit_note_id"
        ).fetchall()
    assert all(c == "SUCCESS" and first for c, first in held), held


def test_a_deferred_202_is_stamped_with_the_time_amazon_answered(ledger, tmp_path, monkeypatch):
    """Sent notes are recorded several per transaction (returnledger.amazon.recording); each 202's send-log
    row still carries the time of Amazon's answer (the status checks count Amazon's processing from it):
    after its own SENDING row and before the next note's."""
    from returnledger.amazon.recording import RECORD_ENV
    from returnledger_dev.sandbox.harness import run_sandbox

    monkeypatch.setenv(RECORD_ENV, "8")
    monkeypatch.setattr("returnledger.amazon.recording.RECORD_WAIT_S", 60.0)
    path, _scenario = _seed_pending_notes(ledger, tmp_path, n=3)
    with run_sandbox(path, tmp_path / "out", faults=False) as sb:
        end, batch = _sync_without_push(ledger, sb, date(2026, 10, 5))
        stats = push_credits(
            ledger, _amazon(sb), party_id="VNDR1", run=RunMoment(end, batch_id=batch), check_beside=False
        )
    assert stats["credit_notes"] == 3 and stats["record_transactions"] == 1
    with db.connect(ledger) as conn:
        rows = conn.execute(
            """SELECT outcome, sent_at FROM ledger.submission_attempt WHERE kind = 'CREDIT_NOTE'
                ORDER BY sent_at"""
        ).fetchall()
    assert [r[0] for r in rows] == ["SENDING", "ACCEPTED_202"] * 3, rows


def test_over_receipt_holds_the_credit_until_the_warehouse_chooses(ledger, tmp_path):
    """Announced 1, received 5: no credit, recon ON_HOLD; the warehouse chooses 2: exactly 2 credited,
    once."""
    from returnledger.exception_queue import actions, queue
    from returnledger.reconciliation.match import reconcile
    from returnledger_dev.sandbox.harness import run_sandbox

    rows = [("RB-1-0000001", "RN-OVER", "SKU-A", "2026-10-05", 1, 5)]
    scenario = _scenario(rows)
    path = _start(ledger, scenario, tmp_path)
    with run_sandbox(path, tmp_path / "out", faults=False) as sb:
        rebound, amazon = sb.rebound_client(timeout=0.5, backoff_max_s=0.2), _amazon(sb)
        for d in (5, 6):
            run_window(ledger, rebound, amazon, window_end=_utc(date(2026, 10, d + 1)), vendor=_vendor(sb))
        assert _ledger_credits(ledger) == {}, "no credit while the over-receipt is open"
        reconcile(ledger, "2026-10", as_of=_utc(date(2026, 10, 7)), batch_id="r1")
        with db.connect(ledger) as conn:
            assert (
                conn.execute(
                    "SELECT recon_status FROM ledger.recon_result WHERE row_key = 'RB-1-0000001|1'"
                ).fetchone()[0]
                == "ON_HOLD"
            )
            exc_id = conn.execute(
                "SELECT exception_id FROM ledger.exception WHERE type = 'QUANTITY_MISMATCH'"
            ).fetchone()[0]
        with pytest.raises(queue.ExceptionActionError):
            actions.resolve_over_receipt(ledger, exc_id, 6, actor="wh", at=_utc(date(2026, 10, 7)))
        actions.resolve_over_receipt(
            ledger,
            exc_id,
            2,
            actor="warehouse lead",
            at=_utc(date(2026, 10, 7)),
            note="3 units were another vendor's",
        )
        for d in (7, 8, 9):
            run_window(ledger, rebound, amazon, window_end=_utc(date(2026, 10, d + 1)), vendor=_vendor(sb))
        sb.dump()
    assert _credits(_requests(tmp_path / "out")) == {"RN-OVER|SKU-A": {"quantity": 2, "amount": "20.00"}}
    assert _note_posts(_requests(tmp_path / "out")) == {"CN-RB-1-0000001-1": 1}
    with db.connect(ledger) as conn:
        audit = conn.execute(
            "SELECT actor, detail->>'credit_quantity' FROM ledger.audit_log"
            " WHERE action = 'exception.credit_quantity'"
        ).fetchall()
        state = conn.execute("SELECT state FROM ledger.return_line").fetchone()[0]
    assert audit == [("warehouse lead", "2")]
    assert state == "CLOSED"


def test_generated_shared_notice_month_matches_expected(ledger, tmp_path, generated_month):
    """The reference generator's shared-notice month under the reject rule with faults: exact credits."""
    from returnledger_dev.sandbox.harness import run_sandbox

    scenario, expected = generated_month(40, 13, faults=True, shared_notices=True)
    scenario["amazon"]["duplicate_credit_note"] = "reject"
    shared = len(scenario["rebound"]["returns"]) - len(
        {r["amazon_refs"]["returns_notice"] for r in scenario["rebound"]["returns"]}
    )
    assert shared >= 5, "the scenario really pairs returns under shared notices"
    path = _start(ledger, scenario, tmp_path)
    with run_sandbox(path, tmp_path / "out", faults=True, timeout_delay_s=0.8) as sb:
        rebound, amazon = sb.rebound_client(timeout=0.5, backoff_max_s=0.2), _amazon(sb)
        ops: dict[str, list] = {}
        for op in scenario["operations"]:
            ops.setdefault(op["on"], []).append(op)
        for d in _days(scenario):
            for op in ops.get(d.isoformat(), []):
                scenario_reference.apply_operation(ledger, op, at=_utc(d), actor="test operator")
            with contextlib.suppress(amazon_push.PushError):
                run_window(
                    ledger, rebound, amazon, window_end=_utc(d + timedelta(days=1)), vendor=_vendor(sb)
                )
        sb.dump()
    assert _credits(_requests(tmp_path / "out")) == expected["credits"]


def test_circuit_breaker_stops_a_push_step_during_an_outage(ledger, tmp_path):
    """Amazon answers every request with 5xx: the step stops after BREAKER_FAILURES notes, leaves every
    note PENDING (same ids) for the next run, does not hold the pool retrying each note in turn, and
    fails (AmazonOutage: the same signal as confirm's, tests/sandbox/test_money_evidence.py)."""
    from returnledger_dev.sandbox.harness import run_sandbox

    rows = [(f"RB-1-{i:07d}", f"RN-{i}", "SKU-A", "2026-10-05", 1, 1) for i in range(1, 13)]
    scenario = _scenario(rows, faults={"amazon": {"error_rate": 1.0}})
    path = _start(ledger, scenario, tmp_path)
    with run_sandbox(path, tmp_path / "out", faults=True) as sb:
        end, batch = _sync_without_push(ledger, sb, date(2026, 10, 5))
        with pytest.raises(amazon_push.AmazonOutage) as outage:
            push_credits(
                ledger, _amazon(sb, max_attempts=3), party_id="VNDR1", run=RunMoment(end, batch_id=batch)
            )
    assert outage.value.failed == amazon_push.BREAKER_FAILURES and outage.value.stopped
    with db.connect(ledger) as conn:
        assert dict(
            conn.execute(
                "SELECT status, count(*) FROM ledger.amazon_submission WHERE kind = 'CREDIT_NOTE' GROUP BY 1"
            ).fetchall()
        ) == {"PENDING": 12}
        attempts = conn.execute(
            "SELECT count(*), count(DISTINCT document_id) FROM ledger.submission_attempt"
            " WHERE outcome <> 'SENDING'"
        ).fetchone()
    assert attempts == (3 * amazon_push.BREAKER_FAILURES, amazon_push.BREAKER_FAILURES)
