#!/usr/bin/env python3
"""Benchmark: the console's pages at size, 1M return lines and 7M ReBound events (not a test).

    RETURNLEDGER_TEST_SERVER_DSN=postgresql://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python bench/bench_console.py [--lines 1000000] [--events-per-line 7] [--keep|--reuse DSN]

Builds a scratch ledger by the fast path, in SQL (generate_series into the tables, no pipeline): the
1M-line month of bench_reconcile (return orders, lines, credit notes, submissions, Amazon's export), 7
ReBound events per line with their payloads and outcomes, a line history entry per event, exceptions and
send-log attempts naming the Airflow runs that wrote them (migration 0022_run_links); then reconciles the
month twice (its close, its report stored; a daily check) the way the DAG does. Then times each page's
queries, as the page calls them, median of ``--repeat`` runs on a warm cache:

* finance (``console.finance``): the overview (latest daily check's figures, closed months) and a closed
  month, each at its first view (one pass over the partition) and its later views (the figures kept until
  the check's rows are written again / per close version),
  the rows behind a number (a status; money at risk of an age);
* runs (``console.runs``): what one run raised and sent;
* find a return, the return's story, a team's queue (helper D's ``console.story`` and ``console.teams``:
  ``search_returns``, ``return_story``, ``team_queue``, ``team_counts``).

Prints ms per page, the EXPLAIN of each query (the plan's scan nodes: which index it reads, or which
partition it reads whole) and ``TARGET console pages ≤ 300 ms: ... -> met|missed`` (issue 25: each page
≤ 300 ms at 1M lines and 7M events).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime

from bench_reconcile import AS_OF, BATCH, GENERATE_SQL, N_SKUS, PERIOD  # the same 1M-line month
from returnledger.reconciliation.match import reconcile
from returnledger.reconciliation.period import period_bounds
from returnledger.store import db, migrate
from returnledger_dev import scratch_db
from targets import report

TARGET_MS = 300.0
DAILY_DAY = "2026-10-31"  # the month's last daily check, before its close
RUN_DAG, N_RUNS = "returns_sync", 30
EVENT_TYPES = ["RETURN_ANNOUNCED", "IN_TRANSIT", "RECEIVED", "GRADED", "DISPOSITIONED", "NOTE", "NOTE"]

# 7 events per line (the lines exist: bench_reconcile's month), each with a payload, an outcome and a
# history entry; exceptions and send-log attempts written by 30 Airflow runs
EVENTS_SQL = [
    """INSERT INTO ledger.raw_event (event_key, event_id, payload, delivered_at, received_at, batch_id,
                                   event_type, return_id, line, occurred_at)
       SELECT 'EV-' || l.return_id || '-' || l.line || '-' || e,
              'EV-' || l.return_id || '-' || l.line || '-' || e,
              jsonb_build_object('event_id', 'EV-' || l.return_id || '-' || l.line || '-' || e,
                                 'event_type', (%(types)s::text[])[e], 'return_id', l.return_id,
                                 'line', l.line, 'sku', l.sku, 'occurred_at',
                                 %(start)s + e * interval '1 day'),
              %(start)s + e * interval '1 day', %(start)s + (e + 1) * interval '1 day',
              'returns_sync:bench-' || e, (%(types)s::text[])[e], l.return_id, l.line,
              %(start)s + e * interval '1 day'
         FROM ledger.return_line l, generate_series(1, %(per_line)s) e""",
    """INSERT INTO ledger.event_outcome (raw_id, status, detail, batch_id, decided_at)
       SELECT raw_id, 'APPLIED', NULL, batch_id, received_at FROM ledger.raw_event""",
    """INSERT INTO ledger.line_history (return_id, line, from_state, to_state, event_id, cause, batch_id, at)
       SELECT return_id, line, NULL, 'RECEIVED', event_id, 'event', batch_id, occurred_at
         FROM ledger.raw_event WHERE event_type <> 'NOTE'""",
    # 60k exceptions over 4 owner teams, raised by 30 runs (one task each); a sixth resolved
    """INSERT INTO ledger.exception (type, owner, status, subject_key, return_id, line, sku, detail,
                                   opened_at, opened_by_batch, resolved_at, resolved_by, resolution,
                                   run_dag_id, run_id, run_task_id, run_map_index, run_try_number)
       SELECT (array['AMAZON_REJECTED','CREDIT_MISSING','SKU_MISMATCH','QUANTITY_MISMATCH'])[1 + l.n %% 4],
              (array['integration','finance','operations','warehouse'])[1 + l.n %% 4],
              CASE WHEN l.n %% 6 = 0 THEN 'resolved' ELSE 'open' END,
              'bench|' || l.return_id || '|' || l.line, l.return_id, l.line, l.sku, 'bench',
              %(start)s + (l.n %% 30) * interval '1 day', 'bench',
              CASE WHEN l.n %% 6 = 0 THEN %(start)s + interval '40 days' END,
              CASE WHEN l.n %% 6 = 0 THEN 'bench' END, CASE WHEN l.n %% 6 = 0 THEN 'bench' END,
              %(dag)s, 'scheduled__run-' || (l.n %% %(runs)s),
              (array['apply','push_credits','confirm','quarantine'])[1 + l.n %% 4], -1, 1
         FROM (SELECT return_id, line, sku, row_number() OVER () AS n FROM ledger.return_line
                WHERE abs(hashint4(hashtext(return_id) + line)) %% 100 < 6) l""",
    # one attempt per credit note, sent by push_credits of one of the 30 runs
    """INSERT INTO ledger.submission_attempt (kind, document_id, submission_ids, attempt, request_sha256,
                                            http_status, transaction_id, outcome, batch_id, at, run_dag_id,
                                            run_id, run_task_id, run_map_index, run_try_number)
       SELECT 'CREDIT_NOTE', n.credit_note_id, '{}', 1, md5(n.credit_note_id), 202, n.first_transaction_id,
              'ACCEPTED_202', 'bench', n.created_at, %(dag)s,
              'scheduled__run-' || (abs(hashtext(n.credit_note_id)) %% %(runs)s), 'push_credits', -1, 1
         FROM ledger.credit_note n""",
]


def generate(dsn: str, lines: int, per_line: int) -> float:
    """The ledger by the fast path: generate_series in SQL, straight into the tables."""
    t0 = time.perf_counter()
    start, _ = period_bounds(PERIOD)
    params = {
        "t": start,
        "start": start,
        "orders": lines // 2,
        "skus": N_SKUS,
        "lines": lines,
        "per_line": per_line,
        "types": EVENT_TYPES,
        "dag": RUN_DAG,
        "runs": N_RUNS,
    }
    with db.connect(dsn) as conn:
        for sql in GENERATE_SQL + EVENTS_SQL:
            t1 = time.perf_counter()
            n = conn.execute(sql, params if "%(" in sql else None).rowcount
            what = re.search(r"(INSERT INTO|CREATE TEMP TABLE|DROP TABLE) (\S+)", sql)
            print(f"  {what.group(2) if what else sql[:30]}: {n:,} rows in {time.perf_counter() - t1:.1f} s")
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")
    return time.perf_counter() - t0


def close_and_check(dsn: str, workdir: str) -> None:
    """The month's close (reconcile, report stored) and a daily check, as returns_reconciliation runs them."""
    from returnledger.reports.month_close import close_month

    t0 = time.perf_counter()
    day = datetime.fromisoformat(DAILY_DAY).replace(tzinfo=UTC)
    reconcile(dsn, PERIOD, as_of=day, batch_id=f"daily:{DAILY_DAY}", result_key=f"daily:{DAILY_DAY}")
    reconcile(dsn, PERIOD, as_of=AS_OF, batch_id=BATCH)
    close_month(dsn, PERIOD, os.path.join(workdir, PERIOD), as_of=AS_OF, batch_id=BATCH)
    print(f"close of {PERIOD} (report stored) and daily check {DAILY_DAY}: {time.perf_counter() - t0:.1f} s")


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``fn`` in ms (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


class Explaining:
    """A connection's execute that keeps each SELECT's plan (EXPLAIN ANALYZE, scan nodes only)."""

    def __init__(self, conn):
        self.conn, self.plans = conn, []
        self.info = conn.info

    def execute(self, query, params=None, **kw):
        text = query if isinstance(query, str) else query.as_string(self.conn)
        if text.lstrip().upper().startswith(("SELECT", "WITH")) and "pg_inherits" not in text:
            plan = [r[0] for r in self.conn.execute("EXPLAIN (ANALYZE, COSTS OFF) " + text, params)]
            scans = [p.strip() for p in plan if re.search(r"Scan|Execution Time", p)]
            self.plans.append(scans)
        return self.conn.execute(query, params, **kw)

    def cursor(self, *a, **kw):
        outer, cur = self, self.conn.cursor(*a, **kw)

        class Cur:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                cur.close()

            def execute(self, query, params=None, **kw):
                outer.execute(query, params)
                return cur.execute(query, params, **kw)

        return Cur()


def pages(conn, sample: dict) -> dict[str, Callable[[object], object]]:
    """Each page's queries, as its route calls them (``c``: the connection)."""
    from returnledger.console import finance, runs

    key = f"daily:{DAILY_DAY}"
    out: dict[str, Callable[[object], object]] = {
        "finance (current month + closed months), first view": lambda c: (
            finance.finance_summary(c, finance.latest_daily_key(c)),
            finance.closed_months(c),
        ),
        "finance (current month + closed months), later views": lambda c: (
            finance.daily_summary(c, finance.latest_daily_key(c)),
            finance.closed_months(c),
        ),
        "finance: closed month, first view": lambda c: (
            finance.finance_summary(c, PERIOD),
            finance.closed_months(c),
        ),
        "finance: closed month, later views": lambda c: finance.closed_summary(
            c, finance.closed_months(c)[-1]
        ),
        "finance: rows of a status": lambda c: finance.finance_rows(c, PERIOD, status="CREDIT_MISMATCH"),
        "finance: rows at risk of an age": lambda c: finance.finance_rows(
            c, key, at_risk=True, bucket="0-30"
        ),
        "runs: what a run did (one task)": lambda c: (
            runs.run_exceptions(c, RUN_DAG, sample["run_id"], "push_credits"),
            runs.run_credit_notes(c, RUN_DAG, sample["run_id"], "push_credits"),
        ),
        "runs: what a run did (whole run)": lambda c: (
            runs.run_exceptions(c, RUN_DAG, sample["run_id"]),
            runs.run_credit_notes(c, RUN_DAG, sample["run_id"]),
        ),
        "runs: the latest runs": lambda c: runs.recent_runs(c),
        "extra link: did the task raise/send": lambda c: (
            runs.task_did(c, "exceptions", RUN_DAG, sample["run_id"], "apply"),
            runs.task_did(c, "credit_notes", RUN_DAG, sample["run_id"], "push_credits"),
        ),
    }
    try:  # helper D's console modules (find a return, its story, team queues)
        from returnledger.console import story, teams
    except ImportError as exc:  # the hook: these pages join the bench when the modules exist
        print(f"find a return / story / team queues not benched: {exc}")
        return out
    as_of = datetime(2026, 11, 4, tzinfo=UTC)
    for ref in ("return_id", "rma_id", "vret", "returns_notice", "credit_note_id", "sku"):
        out[f"find a return by {ref}"] = lambda c, ref=ref: story.search_returns(c, sample[ref], limit=500)
    out["return story"] = lambda c: story.return_story(c, sample["return_id"])
    out["team queue (operations)"] = lambda c: (
        teams.team_queue(c, "operations", as_of, limit=500),
        teams.team_counts(c, as_of),
    )
    return out


def sample_refs(conn) -> dict:
    row = conn.execute(
        """SELECT o.return_id, o.rma_id, o.vret, o.returns_notice, n.credit_note_id,
                  (SELECT sku FROM ledger.return_line l WHERE l.return_id = o.return_id LIMIT 1)
             FROM ledger.return_order o JOIN ledger.credit_note n USING (return_id)
            WHERE o.return_id = 'RB-' || (SELECT count(*) / 3 FROM ledger.return_order) LIMIT 1"""
    ).fetchone()
    keys = ["return_id", "rma_id", "vret", "returns_notice", "credit_note_id", "sku"]
    found = dict(zip(keys, row)) if row else {}
    found["run_id"] = "scheduled__run-7"
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--events-per-line", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--keep", action="store_true", help="keep the scratch database (its DSN is printed)")
    ap.add_argument("--reuse", metavar="DSN", help="a database kept by --keep: skip building it")
    args = ap.parse_args()
    server = os.environ.get("RETURNLEDGER_TEST_SERVER_DSN") or db.resolve_dsn()
    dsn = args.reuse or scratch_db.create_scratch_database(server, prefix="bench_console")
    if args.keep or args.reuse:
        print(f"database: {dsn}")
    import tempfile

    try:
        if not args.reuse:
            migrate.migrate(dsn)
            print(
                f"building the ledger by the fast path (generate_series in SQL, no pipeline): {args.lines:,} "
                f"lines, {args.events_per_line} events per line"
            )
            gen_s = generate(dsn, args.lines, args.events_per_line)
            with tempfile.TemporaryDirectory() as work:
                close_and_check(dsn, work)
            with db.connect(dsn) as conn:
                conn.commit()
                conn.autocommit = True
                conn.execute("ANALYZE")
            print(f"built in {gen_s:.1f} s (+ reconciliation above)")
        with db.connect(dsn) as conn:
            conn.commit()
            conn.autocommit = True
            counts = {
                t: conn.execute(f"SELECT count(*) FROM ledger.{t}").fetchone()[0]
                for t in ("return_line", "raw_event", "exception", "credit_note", "submission_attempt")
            }
            counts["recon_result"] = conn.execute("SELECT count(*) FROM ledger.recon_result").fetchone()[0]
            print("ledger: " + ", ".join(f"{t} {n:,}" for t, n in counts.items()))
            sample = sample_refs(conn)
            results = {}
            for name, fn in pages(conn, sample).items():
                results[name] = timed(lambda fn=fn: fn(conn), args.repeat)
                print(f"{name:55s} {results[name]:8.1f} ms")
            print("\nEXPLAIN (scan nodes of each query; ANALYZE, warm cache):")
            for name, fn in pages(conn, sample).items():
                spy = Explaining(conn)
                fn(spy)
                print(f"-- {name}")
                for plan in spy.plans:
                    for node in plan:
                        print(f"     {node}")
        worst = max(results, key=results.get)
        met = results[worst] <= TARGET_MS and counts["return_line"] >= args.lines
        report(
            "console pages ≤ 300 ms",
            f"worst {results[worst]:.0f} ms ({worst}) over {len(results)} pages at "
            f"{counts['return_line']:,} lines / {counts['raw_event']:,} events",
            f"≤ {TARGET_MS:.0f} ms per page",
            met,
        )
        return 0 if met else 1
    finally:
        if not args.keep and not args.reuse:
            scratch_db.drop_database(server, dsn)


if __name__ == "__main__":
    sys.exit(main())
