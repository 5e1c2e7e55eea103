"""Benchmark the Amazon pushes at the SP-API rate, with the baseline measured in the same run.

    .venv/bin/python bench/bench_push.py [--notes 2000] [--skus 5000] [--duplicate-rule same_note|reject]
        [--server postgresql://...]

A fresh scratch database gets ``--notes`` pending credit notes (1 to 3 lines each) and restocks over
``--skus`` SKUs, written set-wise in SQL and through the package's own writer
(``returnledger.ledger.submissions.write_submissions``). The simulated SP-API runs in its own process
(``returnledger_dev.sandbox.spapi_sim.build_spapi_app``), throttled at the client's configured rate
and burst (its token bucket answers 429 beyond it, like Amazon). ``push_inventory`` and
``push_credits`` then run through the production client (python-amazon-sp-api). Printed:
- each push's wall time against the ideal at the configured rate (requests / rate), the baseline;
- the sustained rate Amazon's side saw, from the simulator's request log: (202 answers - burst) per
  second between the first and the last (a token bucket never lets more through);
- 429s: answered by the simulator, retried by the client, and unhandled (a call that failed, or any
  note or SKU whose final outcome is wrong: every note taken in exactly once, under the transaction
  the ledger recorded, every SKU at the ledger's stock);
- calls per note and per SKU against the minimum (1 per note; ceil(SKUs / 100) for inventory);
- a rerun of both pushes, which must send nothing;
- a batching probe: what one call carrying 10 notes does to them, against one note per call, when one
  note fails (A) and when one is already held under the duplicate rule in force (B).
The scratch database is ``returnledger_bench_push``, dropped and created again: run one at a time.
Not a test: numbers vary with the machine; run it when you change the send loop or the client.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import psycopg

from returnledger.amazon.credit_note import build_credit_note
from returnledger.amazon.push import push_credits, push_inventory
from returnledger.clients.amazon import AmazonVendorClient
from returnledger.ledger import lifecycle
from returnledger.ledger.submissions import write_submissions
from returnledger.models import ActionKind, LineState
from returnledger.moment import RunMoment
from returnledger.reference import load as reference
from returnledger.reference.policy import load_policy
from returnledger.store import db, migrate
from returnledger_dev import scratch_db

sys.path.insert(0, str(Path(__file__).resolve().parent))
from targets import report

AT = datetime(2026, 10, 5, tzinfo=UTC)
BATCH = "bench-push"
VENDOR = {"party_id": "VNDR1", "warehouse_id": "WH1"}
CREDS = {
    "refresh_token": "sandbox-refresh-token",
    "lwa_client_id": "sandbox-lwa-client",
    "lwa_client_secret": "sandbox-lwa-secret",
}
INVOICES, INVENTORY = "/vendor/payments/v1/invoices", "/items"
TRANSACTIONS = "/vendor/transactions/v1/transactions/"
PROBE_FAIL_NOTICE = "RN-PROBE-FAIL"
SERVE = """
import json, sys, uvicorn
from pathlib import Path
from returnledger_dev.sandbox.spapi_sim import build_spapi_app
app = build_spapi_app(json.loads(Path(sys.argv[1]).read_text()), out_dir=Path(sys.argv[2]))
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[3]), log_level="warning", access_log=False)
"""


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fresh_db(server: str, name: str) -> str:
    with psycopg.connect(server, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        c.execute(f'CREATE DATABASE "{name}"')
    dsn = scratch_db.with_database(server, name)
    migrate.migrate(dsn)
    return dsn


# --- the pending work, set-wise --------------------------------------------------------
_SEED_SQL = """
INSERT INTO ledger.sku (sku, asin, unit_cost, available, updated_at, updated_by)
SELECT format('SKU-%%s', lpad(i::text, 5, '0')), format('B0%%s', lpad(i::text, 8, '0')),
       (3 + (i %% 97) * 0.37)::numeric(12, 2), i %% 40, %(at)s, 'bench'
  FROM generate_series(1, %(skus)s) i;

-- credit returns: 1 to 3 lines each, dispositioned; about half restocked as grade A (a restock too)
INSERT INTO ledger.return_order (return_id, order_reference, created_at, returns_notice, rma_id, vret)
SELECT format('RB-C%%s', lpad(i::text, 6, '0')), format('ORD-%%s', i), %(at)s,
       format('RN-%%s', lpad((i / 2)::text, 6, '0')), format('RMA-%%s', i), format('VRET-%%s', i)
  FROM generate_series(1, %(notes)s) i;
INSERT INTO ledger.return_line (return_id, line, sku, reason, quantity_announced, quantity_received, grade,
                                disposition, state, received_at, dispositioned_at, updated_at)
SELECT format('RB-C%%s', lpad(i::text, 6, '0')), ln,
       format('SKU-%%s', lpad((1 + (i * 7 + ln * 131) %% %(skus)s)::text, 5, '0')), 'DAMAGED',
       1 + (i + ln) %% 3, 1 + (i + ln) %% 3,
       CASE WHEN (i + ln) %% 2 = 0 THEN 'A' ELSE 'C' END,
       CASE WHEN (i + ln) %% 2 = 0 THEN 'RESTOCKED' WHEN (i + ln) %% 3 = 0 THEN 'RECYCLE'
            ELSE 'REFURBISH' END,
       'DISPOSITIONED', %(at)s - interval '1 day', %(at)s, %(at)s
  FROM generate_series(1, %(notes)s) i,
       generate_series(1, 1 + (i %% 7 = 0)::int + (i %% 13 = 0)::int) ln;

-- restocks of lines whose credit went in an earlier run: every SKU gets at least one
INSERT INTO ledger.return_order (return_id, order_reference, created_at, returns_notice, rma_id, vret)
SELECT format('RB-R%%s', lpad(i::text, 6, '0')), format('ORD-R%%s', i), %(at)s,
       format('RN-R%%s', lpad(i::text, 6, '0')), NULL, NULL
  FROM generate_series(1, %(skus)s) i;
INSERT INTO ledger.return_line (return_id, line, sku, reason, quantity_announced, quantity_received, grade,
                                disposition, state, received_at, dispositioned_at, updated_at)
SELECT format('RB-R%%s', lpad(i::text, 6, '0')), 1, format('SKU-%%s', lpad(i::text, 5, '0')), 'DAMAGED',
       1 + i %% 2, 1 + i %% 2, 'A', 'RESTOCKED', 'CREDIT_ACCEPTED', %(at)s - interval '2 days',
       %(at)s - interval '1 day', %(at)s
  FROM generate_series(1, %(skus)s) i;
"""


def seed(dsn: str, notes: int, skus: int) -> list[dict]:
    """Pending credit notes and restocks, as apply leaves them; returns the simulator's catalog (the stock
    Amazon holds before the push)."""
    reference.load_reference(dsn, at=AT)
    with db.connect(dsn) as conn:
        for statement in _SEED_SQL.split(";\n")[:-1]:
            conn.execute(statement, {"at": AT, "notes": notes, "skus": skus})
        catalog = [
            {"sku": s, "asin": a, "unit_cost": str(c), "available": n}
            for s, a, c, n in conn.execute(
                "SELECT sku, asin, unit_cost, available FROM ledger.sku ORDER BY sku"
            )
        ]
        lines, info, actions = {}, {}, []
        for rid, ln, state, qa, qr, grade, disp, sku, asin, cost, notice in conn.execute(
            """SELECT l.return_id, l.line, l.state, l.quantity_announced, l.quantity_received, l.grade,
                      l.disposition, l.sku, s.asin, s.unit_cost, o.returns_notice
                 FROM ledger.return_line l JOIN ledger.return_order o USING (return_id)
                 JOIN ledger.sku s USING (sku)"""
        ):
            lines[(rid, ln)] = lifecycle.LineView(
                state=LineState(state),
                quantity_announced=qa,
                quantity_received=qr,
                grade=grade,
                disposition=disp,
            )
            info[(rid, ln)] = (sku, asin, cost, notice)
            if state == LineState.DISPOSITIONED:
                actions.append((rid, ln, ActionKind.CREDIT_NOTE))
            if disp == "RESTOCKED" and grade == "A":
                actions.append((rid, ln, ActionKind.INVENTORY))
        policy = load_policy(conn)
        written = write_submissions(conn, lines, info, actions, policy, batch_id=BATCH, at=AT, currency="GBP")
        conn.commit()
    print(
        f"seeded: {notes} credit notes ({written['credit_actions']} lines), "
        f"{written['inventory_actions']} restocks over {skus} SKUs"
    )
    return catalog


# --- the simulated SP-API, in its own process ------------------------------------------------
class Simulator:
    def __init__(self, scenario: dict, work: Path):
        from returnledger_dev.sandbox.server import free_port

        self.out = work / "out"
        path = work / "scenario.json"
        path.write_text(json.dumps(scenario))
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log = (work / "sim.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVE, str(path), str(self.out), str(port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/_sandbox/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the SP-API simulator did not start; see {work / 'sim.log'}")
            time.sleep(0.2)

    def stats(self) -> dict:
        return httpx.get(f"{self.url}/_sandbox/stats", timeout=10).json()

    def stock(self) -> dict[str, int]:
        path = httpx.post(f"{self.url}/_sandbox/dump", timeout=60).json()["inventory"]
        rows = Path(path).read_text().splitlines()[1:]
        return {r.split(",")[0]: int(r.split(",")[2]) for r in rows}

    def requests(self) -> list[dict]:
        return [json.loads(x) for x in (self.out / "amazon_requests.jsonl").read_text().splitlines()]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def first_to_last(log: list[dict]) -> tuple[float, int, float]:
    """(rate, 200s, seconds) of the getTransaction checks in ``log``: answered 200, first to last."""
    times = [datetime.fromisoformat(r["at"]).timestamp() for r in log if r["status"] == 200]
    if len(times) < 2:
        return float("nan"), len(times), 0.0
    span = times[-1] - times[0]
    return (len(times) - 1) / span, len(times), span


def sustained(log: list[dict], suffix: str, burst: int) -> tuple[float, int, float]:
    """(rate, 202s, seconds): the operation's 202 answers beyond the bucket's burst per second between the
    first and the last, from the simulator's log. A token bucket lets through at most ``burst + rate * T``
    requests in ``T`` seconds, so this is at most the configured rate however the run starts."""
    times = [
        datetime.fromisoformat(r["at"]).timestamp()
        for r in log
        if r["method"] == "POST" and r["path"].endswith(suffix) and r["status"] == 202
    ]
    if len(times) <= burst + 1:
        return float("nan"), len(times), 0.0
    span = times[-1] - times[0]
    return (len(times) - burst) / span, len(times), span


def probe_note(note_id: str, notice: str, sku: dict) -> dict:
    row = {
        "currency": "GBP",
        "unit_amount": Decimal(sku["unit_cost"]),
        "quantity": 1,
        "returns_notice": notice,
        "received_at": AT,
        "created_at": AT,
        "rma_id": None,
        "vret": None,
        "asin": sku["asin"],
        "sku": sku["sku"],
    }
    return build_credit_note(note_id, [row], party_id=VENDOR["party_id"])


def batching_probe(client, sim: Simulator, catalog: list[dict]) -> dict:
    """What one submitInvoices call carrying 10 notes does to them, against one note per call.

    A: 10 new notes, one of them under the returns notice Amazon fails (PROBE_FAIL_NOTICE).
    B: 9 new notes sent with one Amazon already holds (taken in by A): the duplicate rule decides.
    Returns the transaction status and how many of the notes Amazon took in (and kept) each way.
    """

    def final(tid: str) -> str:
        for _ in range(5):
            status = client.get_transaction(tid)
            if status.final:
                return status.status
        return status.status

    def kept(before: dict) -> int:
        after = sim.stats()
        return (after["credit_notes_taken_in"] - before["credit_notes_taken_in"]) - (
            after["credit_notes_failed"] - before["credit_notes_failed"]
        )

    notes = [
        probe_note(f"CN-PROBE-A{i}", PROBE_FAIL_NOTICE if i == 0 else f"RN-PROBE-{i}", catalog[i])
        for i in range(10)
    ]
    out = {}
    before = sim.stats()
    out["A batched"] = (final(client.submit_invoices(notes)), kept(before), 1)
    before = sim.stats()
    singles = [dict(n, id=n["id"] + "-1") for n in notes]
    out["A one per call"] = (
        "/".join(sorted({final(client.submit_invoices([n])) for n in singles})),
        kept(before),
        len(singles),
    )
    held = singles[1:2]  # a note Amazon took in under A, one per call (Success)
    fresh = [probe_note(f"CN-PROBE-B{i}", f"RN-PROBE-B{i}", catalog[i]) for i in range(1, 10)]
    before = sim.stats()
    out["B batched with a held note"] = (final(client.submit_invoices(held + fresh)), kept(before), 1)
    return out


def client_defaults() -> tuple[float, int]:
    params = inspect.signature(AmazonVendorClient).parameters
    return float(params["rate_per_s"].default), int(params["burst"].default)


def main() -> int:
    rate0, burst0 = client_defaults()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--notes", type=int, default=2000)
    ap.add_argument("--skus", type=int, default=5000)
    ap.add_argument(
        "--rate",
        type=float,
        default=rate0,
        help="the simulator's usage plan, req/s per operation (the client starts at Amazon's documented "
        "default and learns this one from x-amzn-RateLimit-Limit)",
    )
    ap.add_argument("--burst", type=int, default=burst0, help="the plan's burst (getTransaction: twice)")
    ap.add_argument("--duplicate-rule", choices=("same_note", "reject"), default="same_note")
    ap.add_argument("--server", default=None, help="PostgreSQL server DSN (default: RETURNLEDGER_DSN)")
    a = ap.parse_args()

    server = db.resolve_dsn(a.server)
    work = Path(tempfile.mkdtemp(prefix="rl-bench-push-"))
    dsn = fresh_db(server, "returnledger_bench_push")
    t = time.perf_counter()
    catalog = seed(dsn, a.notes, a.skus)
    print(f"  in {time.perf_counter() - t:.1f}s")
    with db.connect(dsn) as conn:
        n_notes, n_skus, expected = conn.execute(
            """SELECT count(DISTINCT document_id) FILTER (WHERE kind = 'CREDIT_NOTE'),
                      count(DISTINCT sku) FILTER (WHERE kind = 'INVENTORY'),
                      (SELECT jsonb_object_agg(sku, available) FROM ledger.sku)
                 FROM ledger.amazon_submission WHERE status = 'PENDING'"""
        ).fetchone()
    scenario = {
        "vendor": VENDOR,
        "catalog": catalog,
        "amazon": {
            "returns": [],
            "credit_outcomes": [
                {
                    "returns_notice": PROBE_FAIL_NOTICE,
                    "status": "Failure",
                    "error": {"code": "InvalidReturnsReference", "message": "probe: notice unknown"},
                }
            ],
            "duplicate_credit_note": a.duplicate_rule,
        },
        "faults": {},
    }
    # the simulator's usage plan (stated in every answer); the client is not told it (issue 26)
    os.environ["RETURNLEDGER_SIM_USAGE_PLAN"] = (
        f"{a.rate:g}/{a.burst},getTransaction={a.rate:g}/{2 * a.burst}"
    )
    sim = Simulator(scenario, work)
    print(
        f"simulated SP-API usage plan {a.rate:g} req/s, burst {a.burst} per operation (getTransaction burst "
        f"{2 * a.burst}); the client starts at its default {rate0:g} req/s, burst {burst0} and learns the "
        f"plan from the answers; duplicate rule {a.duplicate_rule}"
    )
    try:
        client = AmazonVendorClient(sim.url, lwa_url=f"{sim.url}/auth/o2/token", **CREDS)
        t = time.perf_counter()
        inv = push_inventory(
            dsn,
            client,
            warehouse_id=VENDOR["warehouse_id"],
            party_id=VENDOR["party_id"],
            run=RunMoment(AT, batch_id=BATCH),
        )
        inv_secs = time.perf_counter() - t
        t = time.perf_counter()
        cred = push_credits(dsn, client, party_id=VENDOR["party_id"], run=RunMoment(AT, batch_id=BATCH))
        cred_secs = time.perf_counter() - t
        attempts = dict(client.attempts)
        rerun_inv = push_inventory(
            dsn,
            client,
            warehouse_id=VENDOR["warehouse_id"],
            party_id=VENDOR["party_id"],
            run=RunMoment(AT, batch_id=BATCH + "-rerun"),
        )
        rerun_cred = push_credits(
            dsn, client, party_id=VENDOR["party_id"], run=RunMoment(AT, batch_id=BATCH + "-rerun")
        )
        stats, log, stock = sim.stats(), sim.requests(), sim.stock()
        probe = batching_probe(client, sim, catalog)
        client.close()
    finally:
        sim.stop()

    by_op = stats["requests"]
    inv_ops, cred_ops = by_op.get("submitInventoryUpdate", {}), by_op.get("submitInvoices", {})
    sim_429 = {"credit notes": int(cred_ops.get("429", 0)), "inventory": int(inv_ops.get("429", 0))}

    # final outcomes: every note taken in once, under the transaction the ledger holds; every SKU's stock
    accepted = Counter()
    for r in log:
        if r["method"] == "POST" and r["path"] == INVOICES and r["status"] == 202:
            accepted.update(inv["id"] for inv in r["body"]["invoices"])
    with db.connect(dsn) as conn:
        ledger = conn.execute(
            """SELECT count(DISTINCT document_id) FILTER (WHERE status IN ('SUBMITTED', 'ACCEPTED')),
                      count(DISTINCT transaction_id) FILTER (WHERE kind = 'CREDIT_NOTE'),
                      count(*) FILTER (WHERE status NOT IN ('SUBMITTED', 'ACCEPTED')),
                      count(*) FILTER (WHERE kind = 'INVENTORY' AND status IN ('SUBMITTED', 'ACCEPTED'))
                 FROM ledger.amazon_submission"""
        ).fetchone()
        lines_moved = conn.execute(
            "SELECT count(*) FROM ledger.return_line WHERE state IN ('CREDIT_SUBMITTED', 'CLOSED')"
        ).fetchone()[0]
        attempts_log = dict(
            conn.execute(
                "SELECT outcome || ':' || kind, count(*) FROM ledger.submission_attempt GROUP BY 1"
            ).fetchall()
        )
    wrong_notes = sum(1 for n in accepted.values() if n != 1) + (n_notes - len(accepted))
    wrong_notes += abs(stats["credit_notes_taken_in"] - n_notes) + stats["credit_notes_conflicting"]
    wrong_notes += n_notes - ledger[0] + (n_notes - ledger[1])
    wrong_skus = sum(1 for s, n in expected.items() if stock.get(s) != n)
    failed_calls = cred["failed"] + inv["failed"] + cred["rejected"]
    unhandled = failed_calls + wrong_notes + wrong_skus  # a 429 is handled only if nothing went wrong

    inv_min = math.ceil(n_skus / 100)
    inv_ideal, cred_ideal = inv_min / a.rate, n_notes / a.rate
    inv_rate, inv_n, inv_span = sustained(log, INVENTORY, a.burst)
    cred_rate, cred_n, cred_span = sustained(log, INVOICES, a.burst)
    # getTransaction checks beside push_credits (issue 26): those sent while the push ran
    push_window = [r for r in log if r["method"] == "POST" and r["path"] == INVOICES]
    first_post, last_post = (push_window[0]["at"], push_window[-1]["at"]) if push_window else ("", "")
    during = [
        r
        for r in log
        if r["method"] == "GET" and TRANSACTIONS in r["path"] and first_post <= r["at"] <= last_post
    ]
    get_rate, get_n, get_span = first_to_last(during)
    get_429 = sum(1 for r in during if r["status"] == 429)
    checks = cred.get("status_checks") or {}
    print(
        f"\npush_inventory: {inv['calls']} calls for {n_skus} SKUs in {inv_secs:.1f}s "
        f"(ideal at {a.rate:g}/s: {inv_ideal:.1f}s = {inv_ideal / inv_secs:.0%}); "
        f"HTTP attempts {attempts['submitInventoryUpdate']}; "
        f"simulator answered {dict(sorted(inv_ops.items()))}"
    )
    print(
        f"  sustained: {inv_n} accepted in {inv_span:.1f}s, ({inv_n} - burst {a.burst}) / {inv_span:.1f}s "
        f"= {inv_rate:.2f} req/s"
    )
    print(
        f"push_credits: {cred['calls']} calls for {n_notes} notes ({cred['lines']} lines) "
        f"in {cred_secs:.1f}s "
        f"(ideal at {a.rate:g}/s: {cred_ideal:.1f}s = {cred_ideal / cred_secs:.0%}); "
        f"HTTP attempts {attempts['submitInvoices']}; simulator answered {dict(sorted(cred_ops.items()))}"
    )
    print(
        f"  sustained: {cred_n} accepted in {cred_span:.1f}s, "
        f"({cred_n} - burst {a.burst}) / {cred_span:.1f}s "
        f"= {cred_rate:.2f} req/s"
    )
    print(
        f"outcomes: {len(accepted)} note ids accepted by Amazon, {sum(accepted.values())} 202s; "
        f"simulator took in "
        f"{stats['credit_notes_taken_in']} (resubmitted {stats['credit_notes_resubmitted']}, conflicting "
        f"{stats['credit_notes_conflicting']}); ledger: {ledger[0]} notes SUBMITTED or ACCEPTED (checked "
        f"beside the push) under {ledger[1]} transactions, {ledger[2]} rows neither, {lines_moved} lines "
        f"CREDIT_SUBMITTED or CLOSED; "
        f"{wrong_skus} SKUs off the ledger's stock"
    )
    print(f"send log: {dict(sorted(attempts_log.items()))}")
    print(
        f"rerun: inventory {rerun_inv['calls']} calls, credit notes {rerun_cred['calls']} calls; "
        f"peak RSS {rss_mb():,.0f} MB (simulator in its own process)"
    )
    print(
        f"batching probe (duplicate rule {a.duplicate_rule}): A = 10 new notes, 1 under a notice Amazon "
        f"fails (9 good); B = 9 new notes + 1 Amazon holds"
    )
    for k, (status, n_kept, calls) in probe.items():
        print(f"  {k:<28}transaction {status:<18}{n_kept:>3} new notes taken in and kept, {calls:>3} calls")
    print()
    print(
        f"status checks beside push_credits: {checks.get('polls', 0)} getTransaction checks, "
        f"{checks.get('accepted', 0)} notes accepted while the push ran; {get_n} answered 200 between the "
        f"first and the last POST ({get_span:.1f}s): {get_rate:.2f} req/s, {get_429} answered 429"
    )
    cred_share, inv_share = cred_rate / a.rate, inv_rate / a.rate
    get_share = get_rate / a.rate
    report(
        "push both operations at once",
        f"submitInvoices {cred_rate:.2f} req/s = {cred_share:.0%} and getTransaction {get_rate:.2f} req/s = "
        f"{get_share:.0%} of {a.rate:g}/s while push_credits ran (checks beside it); 429s answered "
        f"{sim_429['credit notes']} + {get_429}, unhandled {unhandled}",
        ">= 90% each, 0 unhandled 429s",
        cred_share >= 0.9 and get_share >= 0.9 and unhandled == 0,
    )
    report(
        "push credit-note rate",
        f"{cred_rate:.2f} req/s = {cred_share:.0%} of {a.rate:g}/s sustained "
        f"(wall {cred_secs:.1f}s vs ideal {cred_ideal:.1f}s = {cred_ideal / cred_secs:.0%})",
        ">= 90%",
        cred_share >= 0.9,
    )
    if math.isnan(inv_rate):  # every call fitted in the burst: no sustained rate to speak of
        report("push inventory rate", f"n/a ({inv_n} calls, within the burst of {a.burst})", ">= 90%", False)
    else:
        report(
            "push inventory rate",
            f"{inv_rate:.2f} req/s = {inv_share:.0%} of {a.rate:g}/s sustained "
            f"(wall {inv_secs:.1f}s vs ideal {inv_ideal:.1f}s = {inv_ideal / inv_secs:.0%})",
            ">= 90%",
            inv_share >= 0.9,
        )
    report(
        "push unhandled 429s",
        f"{unhandled} (simulator answered {sim_429['credit notes']} + {sim_429['inventory']} 429s, "
        f"{wrong_notes} notes and {wrong_skus} SKUs with a wrong outcome, {failed_calls} failed calls)",
        "0",
        unhandled == 0,
    )
    per_note = attempts["submitInvoices"] / n_notes
    report(
        "push calls per note",
        f"{per_note:.3f} ({attempts['submitInvoices']} requests, {cred['calls']} sends for {n_notes} notes)",
        "1 (minimum)",
        attempts["submitInvoices"] == n_notes,
    )
    report(
        "push calls per SKU batch",
        f"{attempts['submitInventoryUpdate']} requests ({inv['calls']} sends) for {n_skus} SKUs",
        f"{inv_min} = ceil({n_skus}/100)",
        attempts["submitInventoryUpdate"] == inv_min,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
