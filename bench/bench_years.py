#!/usr/bin/env python3
"""Benchmark: a ledger that does not slow with its years (issue 26, target 2).

    RETURNLEDGER_TEST_SERVER_DSN=postgresql://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python bench/bench_years.py [--returns 100000] [--months 12] [--seed 1]

Not a test. One scratch ledger lives through ``--months`` generated months (``generate.py``'s ``generate``
once per month from October 2026, each month's SKUs named apart, as ``generate.py --months`` makes them,
without its model of the expected outcome: the bench checks no outcome), no injected faults:

1. **History by the fast path (bench setup, said so in the output):** the days through the sync steps
   that do not talk to Amazon (extract, validate, route, quarantine, apply, finish, as
   ``returnledger_dev.run_window.run_steps`` runs them), one run per ``--history-days`` days (7; a close's
   day ends a run), the scenario's operator actions applied before the run holding their day; then that
   run's outbox settled in SQL as taken by Amazon (``bench_daily.settle_outbox``: ACCEPTED under made-up
   transactions, credit lines CLOSED with their history), so no run leaves Amazon work to the next;
2. **each month's close** on the 3rd of the next month, as ``returns_reconciliation``'s close run makes it
   outside Airflow: Amazon's export imported (``import_amazon_export``, GX gate), ``reconcile`` into the
   period's results, ``close_month`` (report written and stored); each part timed, for every month;
3. **day D of month 1 and of the last month** (a mid-month day; the last month's D is the day of days
   10-20 whose deliveries are nearest month 1's D): every step of ``returns_sync`` timed, Amazon's steps
   against the SP-API simulator at a 1,000 req/s plan with no processing delay (the client learns the
   plan from the answers), so they cost our work and the simulator's answers, not Amazon's waits (the day
   before each D runs the same way, untimed, as a warm-up); then D's rolling daily check (``reconcile``
   into ``daily:<D>``), timed for information;
4. after each close: the ledger's size (``pg_total_relation_size`` per table, partitions summed into their
   parent), bytes per raw event (row and payload) and per line-history entry.

Ends with ``TARGET ledger does not slow with its years``: the last month's D own work and close <= 1.25 x
month 1's, on the same database. Machine: 2 shared cores; the load average is printed with each timing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import threading
import time
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from bench_daily import SETTLED, deliveries_by_day, settle_outbox, tree_state  # bench/ is on sys.path
from returnledger.store import db, migrate
from returnledger_dev import scratch_db
from simulators import SandboxProcess
from targets import report

ROOT = Path(__file__).resolve().parents[1]
#: the SP-API simulator's plan for the timed days: high enough that no step waits for Amazon's rate
SIM_RATE = 1000
AMAZON_STEPS = ("push_inventory", "push_credits", "confirm")


def say(text: str = "") -> None:
    print(text, flush=True)


def load() -> str:
    return "load " + "/".join(f"{x:.1f}" for x in os.getloadavg())


def utc(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


class Waits:
    """What the main thread spends waiting on Amazon while a step runs: its sleeps (``time.sleep``: the
    client's rate limit and retry back-off, confirm's waits for Amazon's processing) and, counted for
    Amazon's steps only, its HTTP round trips (``httpx.Client.send``: the simulator's answers, which a
    loaded machine slows). A step's own work is its wall less these."""

    def __init__(self) -> None:
        import httpx

        self.slept, self.http, self._sleep, self._send = 0.0, 0.0, time.sleep, httpx.Client.send
        time.sleep = self._sleep_counted  # type: ignore[assignment]
        waits = self

        def send(client, *args, **kwargs):
            t = time.perf_counter()
            try:
                return waits._send(client, *args, **kwargs)
            finally:
                if threading.current_thread() is threading.main_thread():
                    waits.http += time.perf_counter() - t

        httpx.Client.send = send  # type: ignore[method-assign]

    def _sleep_counted(self, seconds: float) -> None:
        t = time.perf_counter()
        self._sleep(seconds)
        if threading.current_thread() is threading.main_thread():
            self.slept += time.perf_counter() - t


WAITS = Waits()


def build_scenario(n: int, seed: int, months: int) -> dict:
    """``months`` generated months from 2026-10, as generate.py --months makes them (SKUs named apart per
    month, a close on the 3rd of the next month), without its expected outcome; no faults."""
    spec = importlib.util.spec_from_file_location("gen", ROOT.parent / "shared" / "scenarios" / "generate.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)

    def rename(x, prefix):
        if isinstance(x, dict):
            return {k: rename(v, prefix) for k, v in x.items()}
        if isinstance(x, list):
            return [rename(v, prefix) for v in x]
        return prefix + x[4:] if isinstance(x, str) and x.startswith("SKU-") else x

    scenario: dict = {}
    closes = []
    year, month = 2026, 10
    for i in range(months):
        sc, _ = gen.generate(n, seed + i, False, year, month)
        sc = rename(sc, f"SKU-M{i}-") if i else sc
        closes.append({"period": f"{year:04d}-{month:02d}", "on": sc["run"]["to"]})
        if not scenario:
            scenario = sc
        else:
            scenario["catalog"] += sc["catalog"]
            known = {m["rebound_reason"] for m in scenario["reason_codes"]}
            scenario["reason_codes"] += [m for m in sc["reason_codes"] if m["rebound_reason"] not in known]
            for k in ("returns", "events", "invalid_events"):
                scenario["rebound"][k] += sc["rebound"][k]
            for k in ("returns", "credit_outcomes"):
                scenario["amazon"][k] += sc["amazon"][k]
            scenario["operations"] = sorted(scenario["operations"] + sc["operations"], key=lambda o: o["on"])
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    scenario["name"] = f"years-{months}x{n}-{seed}"
    scenario["run"] = {
        "from": "2026-10-01",
        "to": closes[-1]["on"],
        "close_period": closes[-1]["period"],
        "closes": closes,
    }
    scenario["faults"] = {}
    return scenario


def write_exports(scenario: dict, folder: Path) -> None:
    """Amazon's monthly Vendor Central returns exports, as the SP-API simulator writes them."""
    import csv

    from returnledger.reconciliation.amazon_export import COLUMNS, export_name
    from returnledger_dev.sandbox.spapi_state import export_rows_by_period

    folder.mkdir(parents=True, exist_ok=True)
    for period, rows in export_rows_by_period(scenario).items():
        with (folder / export_name(period)).open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(COLUMNS)
            for row in rows:
                w.writerow(["" if row.get(c) is None else row.get(c) for c in COLUMNS])


def pick_days(per_day: Counter, closes: list[dict]) -> tuple[date, date]:
    """D of month 1 (the day of days 10-20 nearest the month's mean) and the day of the last month's days
    10-20 whose deliveries are nearest D's, so both days carry about the same work."""

    def days(period: str) -> list[date]:
        first = date.fromisoformat(f"{period}-01")
        return [first + timedelta(days=i) for i in range(9, 20)]

    m1, last = days(closes[0]["period"]), days(closes[-1]["period"])
    mean = sum(per_day[d.isoformat()] for d in m1) / len(m1)
    d1 = min(m1, key=lambda d: (abs(per_day[d.isoformat()] - mean), d))
    d12 = min(last, key=lambda d: (abs(per_day[d.isoformat()] - per_day[d1.isoformat()]), d))
    return d1, d12


class Ledger:
    """The scratch ledger, its clients and the steps run on it."""

    def __init__(self, dsn: str, scenario: dict, sims: SandboxProcess, exports: Path, work: Path):
        from returnledger.clients.amazon import AmazonVendorClient
        from returnledger.clients.rebound import ReboundClient
        from returnledger_dev.run_window import ClientsEnv
        from returnledger_dev.sandbox import harness as h

        # imported now, so month 1's close does not pay for the first import of the report's modules
        importlib.import_module("returnledger.reports.month_close")
        importlib.import_module("returnledger.reconciliation.amazon_export")
        self.dsn, self.exports, self.work = dsn, exports, work
        rebound = ReboundClient(
            sims.rebound_url, h.REBOUND_CLIENT_ID, h.REBOUND_CLIENT_SECRET, page_size=500, timeout=60
        )
        amazon = AmazonVendorClient(
            sims.amazon_url,
            lwa_url=f"{sims.amazon_url}/auth/o2/token",
            refresh_token=h.LWA_REFRESH_TOKEN,
            lwa_client_id=h.LWA_CLIENT_ID,
            lwa_client_secret=h.LWA_CLIENT_SECRET,
        )
        v = scenario["vendor"]
        vendor = {"currency": v["currency"], "party_id": v["party_id"], "warehouse_id": v["warehouse_id"]}
        self.env = ClientsEnv(dsn, rebound, amazon, vendor=vendor)
        self.ops: dict[str, list[dict]] = {}
        for op in scenario.get("operations") or []:
            self.ops.setdefault(op["on"], []).append(op)

    def operations(self, d: date) -> None:
        from returnledger_dev.scenarios import reference as scenario_reference

        for op in self.ops.get(d.isoformat(), []):
            scenario_reference.apply_operation(self.dsn, op, at=utc(d), actor="operator (scenario)")

    def day(self, d: date, end: date | None = None, *, timed: bool = False) -> dict:
        """The run for [d, end) (one day unless ``end``): the fast path (no Amazon steps), or every step
        timed; then its outbox settled (bench setup). Returns seconds per step and the deliveries read."""
        from returnledger.moment import RunMoment
        from returnledger.sync import steps as sync_steps

        end = end or d + timedelta(days=1)
        for i in range((end - d).days):
            self.operations(d + timedelta(days=i))
        run = RunMoment(utc(end), utc(d))
        skip = () if timed else AMAZON_STEPS
        results: dict = {}
        secs: dict[str, float] = {}
        waits: dict[str, float] = {}
        for step in sync_steps.STEPS:
            if step.name in skip or (step.branch_of and step.name not in results.get(step.branch_of, ())):
                continue
            t, slept, http = time.perf_counter(), WAITS.slept, WAITS.http
            results[step.name] = step.call(self.env, None if step.branch else run, results)
            secs[step.name] = time.perf_counter() - t
            amazon = WAITS.http - http if step.name in AMAZON_STEPS else 0.0
            waits[step.name] = WAITS.slept - slept + amazon
        settle_outbox(self.dsn, run.end)
        counts = {k: results[k] for k in AMAZON_STEPS if isinstance(results.get(k), dict)}
        return {"secs": secs, "waits": waits, "delivered": results["extract"]["delivered"], "amazon": counts}

    def daily_check(self, d: date) -> float:
        from returnledger.reconciliation.match import reconcile
        from returnledger.reconciliation.period import recon_window

        w = recon_window(utc(d), utc(d + timedelta(days=1)))
        t = time.perf_counter()
        reconcile(self.dsn, w.period, as_of=w.as_of, batch_id=w.batch_id, result_key=w.result_key)
        return time.perf_counter() - t

    def close(self, period: str, on: date) -> dict:
        """The close run of ``period`` on ``on`` (after that day's sync), as returns_reconciliation makes it:
        import, reconcile, post-hoc ReBound returns for the dark returns (the simulator), the report."""
        from returnledger.reconciliation.amazon_export import import_amazon_export
        from returnledger.reconciliation.dark_returns import create_post_hoc_returns
        from returnledger.reconciliation.match import reconcile
        from returnledger.reconciliation.period import recon_window
        from returnledger.reports.month_close import close_month

        w = recon_window(utc(on), utc(on + timedelta(days=1)), period)
        t0 = time.perf_counter()
        imp = import_amazon_export(self.dsn, self.exports, period, at=w.as_of)
        t1 = time.perf_counter()
        s = reconcile(self.dsn, period, as_of=w.as_of, batch_id=w.batch_id, result_key=w.result_key)
        with self.env.rebound() as rebound:
            linked = create_post_hoc_returns(self.dsn, rebound, at=w.as_of, batch_id=w.batch_id)
        t2 = time.perf_counter()
        close_month(self.dsn, period, self.work / "reports" / period, as_of=w.as_of, batch_id=w.batch_id)
        t3 = time.perf_counter()
        return {
            "import": t1 - t0,
            "reconcile": t2 - t1,
            "post_hoc": linked,
            "report": t3 - t2,
            "total": t3 - t0,
            "rows": s.rows,
            "amazon_rows": imp.rows,
            "steps": {k: round(v, 2) for k, v in s.steps.items()},
            "load": load(),
        }

    def sizes(self) -> dict:
        """Bytes per ledger table (partitions summed into their root), rows and bytes per raw event and
        per line-history entry, the database's size."""
        with db.connect(self.dsn) as conn:
            tables = dict(
                conn.execute(
                    """SELECT r.relname, sum(pg_total_relation_size(c.oid))::bigint
                         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                         JOIN pg_class r ON r.oid = COALESCE(pg_partition_root(c.oid), c.oid)
                        WHERE n.nspname = 'ledger' AND c.relkind = 'r' GROUP BY 1"""
                ).fetchall()
            )
            raw = conn.execute(
                "SELECT count(*), COALESCE(sum(pg_column_size(payload)), 0) FROM ledger.raw_event"
            ).fetchone()
            hist = conn.execute("SELECT count(*) FROM ledger.line_history").fetchone()[0]
            total = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        return {"tables": tables, "raw_rows": raw[0], "payload_bytes": int(raw[1]), "history_rows": hist,
                "database": total}  # fmt: skip


def size_line(period: str, s: dict) -> str:
    t = s["tables"]
    raw, hist = t.get("raw_event", 0), t.get("line_history", 0)
    return (
        f"  {period}: database {s['database'] / 1e6:,.0f} MB; raw_event {s['raw_rows']:,} rows "
        f"{raw / 1e6:,.0f} MB = {raw / max(1, s['raw_rows']):,.0f} B/event (payloads "
        f"{s['payload_bytes'] / max(1, s['raw_rows']):,.0f} B); line_history {s['history_rows']:,} entries "
        f"{hist / 1e6:,.0f} MB = {hist / max(1, s['history_rows']):,.0f} B/entry"
    )


def own_work(r: dict) -> float:
    """A timed day's own work: every step's wall less its waits on Amazon (sleeps, Amazon's answers)."""
    return sum(r["secs"].values()) - sum(r["waits"].values())


def day_line(label: str, d: date, r: dict) -> str:
    amz = sum(v for k, v in r["secs"].items() if k in AMAZON_STEPS)
    steps = ", ".join(
        f"{k} {v:.2f}" + (f" (waits {r['waits'][k]:.2f})" if r["waits"][k] >= 0.005 else "")
        for k, v in r["secs"].items()
    )
    return (
        f"  {label} D={d} ({r['delivered']:,} deliveries, {r['load']}): own work {own_work(r):.2f}s = every "
        f"step {sum(r['secs'].values()):.2f}s (Amazon's steps at {SIM_RATE} req/s, no processing delay: "
        f"{amz:.2f}s) less Amazon's waits and answers {sum(r['waits'].values()):.2f}s; daily check "
        f"{r['check']:.2f}s\n"
        f"    steps: {steps}\n    Amazon's steps: {json.dumps(r['amazon'], default=str)[:600]}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--returns", type=int, default=100_000, help="returns a month")
    ap.add_argument("--months", type=int, default=12)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--history-days", type=int, default=7, help="days per fast-path run of the history")
    ap.add_argument("--out", default="test-output/bench-years")
    ap.add_argument("--keep", action="store_true", help="keep the scratch ledger (its DSN is printed)")
    ap.add_argument("--server", default=None, help="PostgreSQL server DSN (default: the test server's)")
    a = ap.parse_args()
    from returnledger.reference import load as reference
    from returnledger_dev.scenarios import reference as scenario_reference

    server = a.server or os.environ.get("RETURNLEDGER_TEST_SERVER_DSN") or db.resolve_dsn()
    os.environ["RETURNLEDGER_SIM_PROCESSING_S"] = "0"
    os.environ["RETURNLEDGER_SIM_USAGE_PLAN"] = f"{SIM_RATE}/{SIM_RATE}"
    work = Path(a.out).resolve() / f"{a.months}x{a.returns}-{a.seed}-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    say(f"== bench_years: {a.months} months x {a.returns:,} returns, seed {a.seed}; {tree_state()}; {load()}")
    t0 = time.monotonic()
    scenario = build_scenario(a.returns, a.seed, a.months)
    path = work / "scenario.json"
    path.write_text(json.dumps(scenario))
    write_exports(scenario, work / "exports")
    per_day = deliveries_by_day(scenario)
    closes = scenario["run"]["closes"]
    close_on = {date.fromisoformat(c["on"]): c["period"] for c in closes}
    d1, d12 = pick_days(per_day, closes)
    first, last = date.fromisoformat(scenario["run"]["from"]), date.fromisoformat(scenario["run"]["to"])
    say(
        f"scenario: {len(scenario['rebound']['returns']):,} returns, {len(scenario['rebound']['events']):,} "
        f"events, {first}..{last} ({time.monotonic() - t0:.0f}s); timed days {d1} "
        f"({per_day[d1.isoformat()]:,} deliveries) and {d12} ({per_day[d12.isoformat()]:,})"
    )
    dsn = scratch_db.create_scratch_database(server, "rl_bench_years", created_by="bench_years")
    sims = None
    timed: dict[date, dict] = {}
    closed: dict[str, dict] = {}
    sizes: dict[str, dict] = {}
    try:
        migrate.migrate(dsn)
        reference.load_reference(dsn, at=utc(first))
        scenario_reference.load_scenario_reference(dsn, scenario, at=utc(first))
        sims = SandboxProcess(path, work, wait_s=1800)
        led = Ledger(dsn, scenario, sims, work / "exports", work)
        say(
            f"ledger {scratch_db.database_name(dsn)} migrated, simulators up ({time.monotonic() - t0:.0f}s). "
            f"BENCH SETUP, not the product: history by the fast path (the sync steps that do not talk to "
            f"Amazon, outside Airflow, one run per {a.history_days} days), each run's outbox then settled "
            f"in SQL as taken by Amazon "
            f"(ACCEPTED under made-up transactions '{SETTLED}...', credit lines CLOSED with their history)"
        )
        d, t_month = first, time.monotonic()
        one_day = {x - timedelta(days=1) for x in (d1, d12)} | {d1, d12}
        while d <= last:
            end = d + timedelta(days=1)
            if d in (d1, d12):
                r = led.day(d, timed=True)
                r["load"] = load()
                r["check"] = led.daily_check(d)
                timed[d] = r
                say(day_line("timed day", d, r))
            elif d in one_day:  # warm-up: the same code paths run the day before, the client logged in
                led.day(d, timed=True)
                led.daily_check(d)
            else:  # history: up to --history-days a run, a close's day ending one
                while (end - d).days < a.history_days and end <= last and end not in one_day:
                    if end - timedelta(days=1) in close_on:
                        break
                    end += timedelta(days=1)
                led.day(d, end)
            period = close_on.get(end - timedelta(days=1))
            if period:
                c = closed[period] = led.close(period, end - timedelta(days=1))
                sizes[period] = led.sizes()
                say(
                    f"close {period} on {end - timedelta(days=1)}: {c['total']:.2f}s = import "
                    f"{c['import']:.2f} + reconcile and {c['post_hoc']} post-hoc returns "
                    f"{c['reconcile']:.2f} + "
                    f"report {c['report']:.2f} "
                    f"({c['rows']:,} result rows, {c['amazon_rows']:,} Amazon rows; {c['load']}); month "
                    f"built in {time.monotonic() - t_month:.0f}s\n    reconcile steps: {c['steps']}"
                )
                say(size_line(period, sizes[period]))
                t_month = time.monotonic()
            d = end
    finally:
        if sims is not None:
            sims.stop()
        path.unlink(missing_ok=True)
        if not a.keep:
            scratch_db.drop_database(server, dsn)
    say(
        f"\n== {a.months} months built and measured in {time.monotonic() - t0:.0f}s"
        + (f"; kept {dsn}" if a.keep else "")
    )
    say("sizes per month (MB per table after each close):")
    names = sorted(
        {n for s in sizes.values() for n in s["tables"]},
        key=lambda n: -sizes[closes[-1]["period"]]["tables"].get(n, 0),
    )
    say("  table" + "".join(f"{p:>9}" for p in sizes))
    for n in names[:12]:
        say(f"  {n:<22}" + "".join(f"{s['tables'].get(n, 0) / 1e6:9.1f}" for s in sizes.values()))
    (work / "bench_years.json").write_text(
        json.dumps({"timed": {k.isoformat(): {**v, "results": None} for k, v in timed.items()},
                    "closes": closed, "sizes": sizes}, default=str, indent=1)
    )  # fmt: skip
    r1, r12 = timed[d1], timed[d12]
    c1, c12 = closed[closes[0]["period"]], closed[closes[-1]["period"]]
    w1, w12 = own_work(r1), own_work(r12)
    day_ratio, close_ratio = w12 / w1, c12["total"] / c1["total"]
    s12 = sizes[closes[-1]["period"]]
    report(
        "ledger does not slow with its years",
        f"{a.months} months x {a.returns:,} returns (history by the fast path, bench setup); "
        f"day D's own work "
        f"{w12:.2f}s on {d12} ({r12['delivered']:,} deliveries) vs {w1:.2f}s on {d1} "
        f"({r1['delivered']:,}) = {day_ratio:.2f}x; close {c12['total']:.2f}s ({closes[-1]['period']}, "
        f"{c12['rows']:,} rows) vs {c1['total']:.2f}s ({closes[0]['period']}, {c1['rows']:,}) = "
        f"{close_ratio:.2f}x; ledger {s12['database'] / 1e9:.2f} GB, {s12['raw_rows']:,} events",
        "month 12 <= 1.25 x month 1 for both",
        day_ratio <= 1.25 and close_ratio <= 1.25,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
