"""Benchmark the sync path outside the scheduler, with baselines measured in the same run.

    .venv/bin/python bench/bench_sync.py [--returns 100000] [--naive-events 10000] [--no-push] [--set-based]

Path measured (one window covering the whole scenario): extract from the
simulated ReBound API (HTTP, pages) -> raw table -> GX validation ->
quarantine -> lifecycle apply -> Amazon outbox. Printed:
- events/s and peak memory (this process's max RSS; PostgreSQL is separate),
- ratio against a naive row-at-a-time implementation of the same steps
  (single-row INSERTs, per-row pydantic validation and per-row lookups,
  per-event SELECT/UPDATE) measured on every event of a sample of whole return orders (~N events),
- ratio against the raw COPY speed of the same rows into PostgreSQL (a plain table, no indexes),
  and, for scale, the same COPY into the ledger's own raw table with its dedupe key and indexes,
- SP-API calls the pushes took against the minimum ceil(items / batch limit).
Not a test: numbers vary with the machine; run it when you change the sync.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import resource
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg

from returnledger.amazon.push import push_credits, push_inventory
from returnledger.fields import parse_time
from returnledger.intake.feed import extract
from returnledger.intake.orders import store_return_orders
from returnledger.intake.raw import RAW_COLUMNS, event_key, raw_rows
from returnledger.ledger import lifecycle
from returnledger.ledger.apply import apply
from returnledger.models import EventType, LineState
from returnledger.moment import RunMoment, batch_id_for
from returnledger.reference import load as reference
from returnledger.reference.policy import load_policy
from returnledger.screening.screen import quarantine, validate
from returnledger.store import db, migrate
from returnledger_dev import scratch_db
from returnledger_dev.scenarios import reference as scenario_reference
from simulators import SandboxProcess  # bench/: this script's folder is on sys.path
from targets import report

ROOT = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def generate(n: int, seed: int, folder: Path) -> Path:
    spec = importlib.util.spec_from_file_location("gen", ROOT.parent / "shared" / "scenarios" / "generate.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    scenario, _ = gen.generate(n, seed, False)
    # the simulator's throttle is Amazon's published 10 req/s; the bench lifts it to count calls, not wait
    scenario["faults"] = {"amazon": {"throttle": {"rate": 100000, "burst": 100000}}}
    path = folder / f"bench-{n}.json"
    path.write_text(json.dumps(scenario))
    return path


def fresh_db(server: str, name: str) -> str:
    with psycopg.connect(server, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        c.execute(f'CREATE DATABASE "{name}"')
    dsn = scratch_db.with_database(server, name)
    migrate.migrate(dsn)
    return dsn


def settle(server: str) -> None:
    """CHECKPOINT before a timed phase, so the WAL a previous phase wrote is not flushed on its clock
    (the naive path commits every statement and is the most sensitive to it). Needs a superuser;
    skipped, with a note, where the role is not one."""
    try:
        with psycopg.connect(server, autocommit=True) as c:
            c.execute("CHECKPOINT")
    except psycopg.errors.InsufficientPrivilege:
        print("(no CHECKPOINT: the role is not a superuser; phases may pay for each other's WAL)")


def utc(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


def _naive_event_model():
    """The per-row pydantic model of a ReBound event the naive path validates with (lenient like a first
    version of the job; the package itself screens events in sets, returnledger.screening)."""
    from typing import Annotated, Literal

    from pydantic import BaseModel, ConfigDict, Field

    from returnledger.models import RETURN_ID_PATTERN, Disposition, Grade

    class Event(BaseModel):
        model_config = ConfigDict(extra="ignore", frozen=True)
        event_id: Annotated[str, Field(min_length=1)]
        return_id: Annotated[str, Field(pattern=RETURN_ID_PATTERN)]
        occurred_at: datetime
        delivered_at: datetime | None = None

    class ReturnCreated(Event):
        type: Literal[EventType.RETURN_CREATED]

    class InTransit(Event):
        type: Literal[EventType.IN_TRANSIT]

    class Received(Event):
        type: Literal[EventType.RECEIVED]
        line: Annotated[int, Field(ge=1)]
        quantity: Annotated[int, Field(ge=0)]

    class Graded(Event):
        type: Literal[EventType.GRADED]
        line: Annotated[int, Field(ge=1)]
        grade: Grade

    class Dispositioned(Event):
        type: Literal[EventType.DISPOSITIONED]
        line: Annotated[int, Field(ge=1)]
        disposition: Disposition

    return Annotated[
        ReturnCreated | InTransit | Received | Graded | Dispositioned, Field(discriminator="type")
    ]


def naive_path(dsn: str, events: list[dict], orders: list[dict], scenario: dict) -> float:
    """The same steps one row at a time: how the job is often first written. Returns seconds."""
    from pydantic import TypeAdapter, ValidationError

    adapter = TypeAdapter(_naive_event_model())
    with db.connect(dsn) as conn:
        store_return_orders(conn, orders)
        conn.commit()
        policy = load_policy(conn)
    conn = db.connect(dsn, autocommit=True)
    t = time.perf_counter()
    for p in events:
        key = event_key(p)
        row = conn.execute(
            """INSERT INTO ledger.raw_event (event_key, event_id, payload, received_at, batch_id)
                              VALUES (%s, %s, %s, now(), 'naive') ON CONFLICT (event_key) DO NOTHING
                              RETURNING raw_id""",
            (key, p.get("event_id"), json.dumps(p)),
        ).fetchone()
        if row is None:
            continue
        try:
            ev = adapter.validate_python(p)
        except ValidationError:
            continue
        if not conn.execute(
            "SELECT 1 FROM ledger.return_order WHERE return_id = %s", (ev.return_id,)
        ).fetchone():
            continue
        if ev.type in (EventType.RETURN_CREATED, EventType.IN_TRANSIT):
            for ln in conn.execute(
                "SELECT line FROM ledger.return_line WHERE return_id = %s", (ev.return_id,)
            ).fetchall():
                _naive_apply(conn, ev, p, ln[0], policy)
            continue
        _naive_apply(conn, ev, p, ev.line, policy)
    secs = time.perf_counter() - t
    conn.close()
    return secs


def _naive_apply(conn, ev, p, line_no, policy) -> None:
    """One line, one event: SELECT, lookups, UPDATE, history and outbox INSERTs, each its own statement."""
    line = conn.execute(
        """SELECT l.state, l.quantity_announced, l.quantity_received, l.grade, l.disposition,
                                  l.reason, l.sku FROM ledger.return_line l
                           WHERE return_id = %s AND line = %s""",
        (ev.return_id, line_no),
    ).fetchone()
    if line is None:
        return
    if not conn.execute(
        "SELECT 1 FROM ledger.reason_mapping WHERE rebound_reason = %s AND active", (line[5],)
    ).fetchone():
        return
    if not conn.execute("SELECT 1 FROM ledger.sku WHERE sku = %s", (line[6],)).fetchone():
        return
    view = lifecycle.LineView(
        state=LineState(line[0]),
        quantity_announced=line[1],
        quantity_received=line[2],
        grade=line[3],
        disposition=line[4],
    )
    out = lifecycle.apply_event(view, _line_event(p), policy)
    if out.hold or not out.transitions:
        return
    conn.execute(
        """UPDATE ledger.return_line SET state = %s, quantity_received = %s, grade = %s,
                    disposition = %s WHERE return_id = %s AND line = %s""",
        (
            str(out.line.state),
            out.line.quantity_received,
            out.line.grade,
            out.line.disposition,
            ev.return_id,
            line_no,
        ),
    )
    for frm, to in out.transitions:
        conn.execute(
            """INSERT INTO ledger.line_history (return_id, line, from_state, to_state, event_id, cause,
                        batch_id, at) VALUES (%s, %s, %s, %s, %s, %s, 'naive', now())
                        ON CONFLICT DO NOTHING""",
            (ev.return_id, line_no, str(frm), str(to), ev.event_id, str(ev.type)),
        )
    for kind in out.actions:
        conn.execute(
            """INSERT INTO ledger.amazon_submission (idempotency_key, kind, return_id, line, sku,
                        quantity, created_at, created_batch) VALUES (%s, %s, %s, %s, %s, %s, now(), 'naive')
                        ON CONFLICT DO NOTHING""",
            (
                f"{kind}:{ev.return_id}:{line_no}",
                str(kind),
                ev.return_id,
                line_no,
                line[6],
                max(1, out.line.quantity_received or 1),
            ),
        )


def _line_event(p: dict) -> lifecycle.LineEvent:
    """A validated payload as the lifecycle's event (the rules alone, without apply's set reads)."""
    occurred_at = parse_time(p["occurred_at"])
    if occurred_at is None:
        raise ValueError(f"event {p.get('event_id')!r}: occurred_at {p.get('occurred_at')!r} is no timestamp")
    return lifecycle.LineEvent(
        event_id=p["event_id"],
        type=EventType(p["type"]),
        occurred_at=occurred_at,
        quantity=p.get("quantity"),
        grade=p.get("grade"),
        disposition=p.get("disposition"),
    )


def copy_ceiling(dsn: str, events: list) -> float:
    """Seconds to COPY the same raw rows (as the fast path stages them) into a plain table, no indexes."""
    rows = list(raw_rows(events).values())
    when = datetime(2026, 1, 1, tzinfo=UTC)
    with db.connect(dsn) as conn:
        columns = ", ".join(f"{c} {t}" for c, t in RAW_COLUMNS)
        conn.execute(f"CREATE TABLE copy_ceiling ({columns})")
        conn.commit()
        t = time.perf_counter()
        db.copy_rows(conn, "copy_ceiling", RAW_COLUMNS, ((*r, when, "ceiling") for r in rows))
        conn.commit()
        return time.perf_counter() - t


def raw_table_floor(dsn: str, events: list) -> float:
    """Seconds to COPY the same rows into the ledger's own raw table (its keys and indexes, empty): what
    keeping raw events deduplicated and findable costs before any validation or ledger work."""
    rows = list(raw_rows(events).values())
    when = datetime(2026, 1, 1, tzinfo=UTC)
    with db.connect(dsn) as conn:
        conn.commit()
        t = time.perf_counter()
        db.copy_rows(conn, "ledger.raw_event", RAW_COLUMNS, ((*r, when, "floor") for r in rows))
        conn.commit()
        return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--returns", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--naive-events", type=int, default=10_000)
    ap.add_argument("--no-push", action="store_true")
    ap.add_argument(
        "--set-based",
        action="store_true",
        help="apply whole returns of common transitions in SQL (returnledger.ledger.setapply)",
    )
    ap.add_argument(
        "--server", default=None, help="PostgreSQL server DSN (default: RETURNLEDGER_DSN or embedded)"
    )
    a = ap.parse_args()
    from returnledger.clients.amazon import AmazonVendorClient
    from returnledger.clients.rebound import ReboundClient
    from returnledger_dev.sandbox import harness as h
    from returnledger_dev.sandbox.scenario import load_scenario_dict

    server = db.resolve_dsn(a.server)
    work = Path(tempfile.mkdtemp(prefix="rl-bench-"))
    t = time.perf_counter()
    path = generate(a.returns, a.seed, work)
    scenario = load_scenario_dict(path)
    print(
        f"scenario: {a.returns} returns, {len(scenario['rebound']['events'])} events "
        f"(generated in {time.perf_counter() - t:.1f}s)"
    )
    dsn = fresh_db(server, "returnledger_bench")
    first = date.fromisoformat(scenario["run"]["from"])
    window_end = utc(date.fromisoformat(scenario["run"]["to"]) + timedelta(days=1))
    reference.load_reference(dsn, at=utc(first))
    scenario_reference.load_scenario_reference(dsn, scenario, at=utc(first))
    sandbox = SandboxProcess(path, work)
    try:
        rebound = ReboundClient(
            sandbox.rebound_url, h.REBOUND_CLIENT_ID, h.REBOUND_CLIENT_SECRET, page_size=1000, timeout=30
        )
        batch = batch_id_for(window_end)
        settle(server)
        phases = {}
        t0 = time.perf_counter()
        t = t0
        stats = extract(dsn, rebound, run=RunMoment(window_end, batch_id=batch))
        phases["extract (HTTP + raw + return orders)"] = time.perf_counter() - t
        t = time.perf_counter()
        v = validate(dsn, batch_id=batch)
        phases["validate (GX, incl. its import)"] = time.perf_counter() - t
        t = time.perf_counter()
        quarantine(dsn, run=RunMoment(window_end, batch_id=batch))
        phases["quarantine"] = time.perf_counter() - t
        t = time.perf_counter()
        applied = apply(dsn, run=RunMoment(window_end, batch_id=batch), set_based=a.set_based)
        phases["apply + outbox"] = time.perf_counter() - t
        total = time.perf_counter() - t0
        delivered = stats["delivered"]
        print(
            f"\nfast path: {delivered} deliveries in {total:.1f}s = {delivered / total:,.0f} events/s; "
            f"peak RSS {rss_mb():,.0f} MB (simulators run in their own process)"
        )
        for k, secs in phases.items():
            print(f"  {k:<40}{secs:8.1f}s")
        print(
            f"  validated {v['rows']} rows: {v['passed']} passed, {v['failed']} failed; "
            f"outbox: {applied.get('credit_actions')} credit lines, "
            f"{applied.get('inventory_actions')} restocks"
        )

        # baselines on the same deliveries, in feed order
        events = [e for p in rebound.iter_event_pages(None, until=window_end) for e in p.events]
        copy_dsn = fresh_db(server, "returnledger_bench_copy")
        settle(server)
        copy_secs = copy_ceiling(copy_dsn, events)
        floor_dsn = fresh_db(server, "returnledger_bench_copy")
        settle(server)
        floor_secs = raw_table_floor(floor_dsn, events)
        # naive: every event of a sample of whole return orders, so the mix of event types is the real one
        every = max(1, round(len(events) / a.naive_events))
        sample_ids = {r["return_id"] for r in scenario["rebound"]["returns"][::every]}
        sample = [e for e in events if e.get("return_id") in sample_ids]
        found, _ = rebound.get_returns(sample_ids)
        naive_dsn = fresh_db(server, "returnledger_bench_naive")
        reference.load_reference(naive_dsn, at=utc(first))
        scenario_reference.load_scenario_reference(naive_dsn, scenario, at=utc(first))
        settle(server)
        naive_secs = naive_path(naive_dsn, sample, found, scenario)
        fast_rate = delivered / total
        naive_rate = len(sample) / naive_secs
        copy_rate = len(events) / copy_secs
        print(
            f"\nnaive row-at-a-time: {len(sample)} events of {len(sample_ids)} returns in {naive_secs:.1f}s "
            f"= {naive_rate:,.0f} events/s"
        )
        print(f"COPY ceiling (same rows, plain table): {copy_rate:,.0f} events/s")
        print(
            f"  the same COPY into ledger.raw_event (its unique key and indexes): "
            f"{len(events) / floor_secs:,.0f} events/s = "
            f"{len(events) / floor_secs / copy_rate:.0%} of the ceiling"
        )
        floor_rate = len(events) / floor_secs
        print(f"ratio fast / naive: {fast_rate / naive_rate:.1f}x")
        print(f"ratio fast / COPY:  {fast_rate / copy_rate:.0%}")
        sync_targets = [
            (
                "sync near its floor",
                f"{fast_rate:,.0f} events/s = {fast_rate / floor_rate:.0%} of the raw-table floor "
                f"({floor_rate:,.0f}/s) and {fast_rate / naive_rate:.1f}x naive at {a.returns:,} returns "
                f"({'set-based' if a.set_based else 'per-event'} apply), peak RSS {rss_mb():,.0f} MB",
                ">= 30% of the floor and >= 40x naive",
                fast_rate >= 0.3 * floor_rate and fast_rate >= 40 * naive_rate,
            ),
        ]

        if not a.no_push:
            amazon = AmazonVendorClient(
                sandbox.amazon_url,
                lwa_url=f"{sandbox.amazon_url}/auth/o2/token",
                refresh_token=h.LWA_REFRESH_TOKEN,
                lwa_client_id=h.LWA_CLIENT_ID,
                lwa_client_secret=h.LWA_CLIENT_SECRET,
                rate_per_s=100000,
                burst=100000,
            )
            vendor = scenario["vendor"]
            with db.connect(dsn) as conn:
                notes, skus = conn.execute(
                    """SELECT count(DISTINCT document_id) FILTER (WHERE kind = 'CREDIT_NOTE'),
                              count(DISTINCT sku) FILTER (WHERE kind = 'INVENTORY')
                         FROM ledger.amazon_submission WHERE status = 'PENDING'"""
                ).fetchone()
            t = time.perf_counter()
            inv = push_inventory(
                dsn,
                amazon,
                warehouse_id=vendor["warehouse_id"],
                party_id=vendor["party_id"],
                run=RunMoment(window_end, batch_id=batch),
            )
            cred = push_credits(
                dsn, amazon, party_id=vendor["party_id"], run=RunMoment(window_end, batch_id=batch)
            )
            secs = time.perf_counter() - t
            print(
                f"\npushes: inventory {inv['calls']} calls for {skus} SKUs (minimum ceil({skus}/100) = "
                f"{math.ceil(skus / 100)}); credit notes {cred['calls']} calls for {notes} notes (minimum "
                f"{notes}: one note per call, see push_credits); {secs:.1f}s"
            )
    finally:
        sandbox.stop()
    for target in sync_targets:  # last, so `make bench` ends with them
        report(*target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
