#!/usr/bin/env python3
"""Benchmark: one daily returns_sync run through the scheduler at steady state (issue 15, target 1).

    RETURNLEDGER_TEST_SERVER_DSN=postgresql://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python bench/bench_daily.py [--returns 100000] [--seed 1] [--day auto|15|2026-10-15]

Not a test. What it does, in this order:

1. generates a month (``../shared/scenarios/generate.py``, as bench_sync.py does), no injected faults;
2. a scratch ledger database: migrations (owned by the DAGs' role, as the cluster demo does), the
   reference data and the scenario's reference data, and both simulators in their own process
   (ReBound, and the SP-API at Amazon's documented plan, 10 req/s, unless ``--amazon-rate`` says otherwise);
3. brings the ledger to steady state for day D: the fast sync path outside Airflow (extract, validate,
   quarantine, apply, finish: the steps of returns_sync that do not talk to Amazon, from the same
   definition as the DAG, returnledger.sync.steps) for every day before D, the
   scenario's operator actions on their days. Bench setup only: the outbox those days wrote is then
   settled in SQL as if Amazon had taken it (every PENDING row ACCEPTED under a made-up transaction, the
   credit lines moved to CLOSED with their history), so D's pushes carry D's work only and ``confirm``
   polls only transactions D's run sent;
4. a fresh local Celery cluster (``returnledger_dev.cluster``: api-server, scheduler, dag-processor,
   triggerer, ``--workers`` Celery workers), returns_sync unpaused, ``--warmups`` runs for the days just
   before D (nothing left to read or send: they pay what a freshly started cluster pays once, e.g. the
   api-server's first Execution API request, and show the fixed costs of a run with no work), then D's
   operator actions and the run for D (data interval [D, D+1)), created through the REST API as the
   scheduler would make it, and waited for;
5. from the REST API (run, task instances, XComs), the task logs (the task runner's ``Pre Execute`` and
   ``Post Execute`` groups), the workers' and the api-server's logs and the SP-API simulator's request
   log: events in D's window, notes and SKUs pushed, wall time (run start -> last task end), per task the
   scheduling delay (upstream end -> queued), Celery hand-off (queued -> started), start-up (process,
   DAG parse), work, post-execute (XCom push, state) and its Execution API calls; tasks running vs
   between tasks; the critical path split into those parts (they add up to the wall time); and
   push_credits and confirm against their ideal time at the configured rate (requests / rate).

Everything the report reads is kept in ``<out>/<returns>-<seed>-<pid>/bench_daily.json`` with the
cluster's logs; ``--from-json that/bench_daily.json`` prints the report again.
Ends with ``TARGET daily run at Amazon's floor`` (issue 26: wall <= 1.15 x floor + 30 s, where the floor is
max(notes / submit rate, transactions / status rate) + one processing delay, read from the simulator's log
of D's run; status checks per transaction <= 1.3; confirm's worker-slot seconds <= 10 % of the checks'
wall) and an informative ``BREAKDOWN`` line. The simulator answers Processing for ``--processing-s`` (30)
after each submission; ``--amazon-rate`` sets its usage plan, which the client (left at the documented
default) learns from the answers.
Machine: 2 shared cores; the load averages are printed with the numbers.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from returnledger.store import db
from returnledger.sync.steps import STEPS
from returnledger_dev import scratch_db
from simulators import SandboxProcess  # bench/: this script's folder is on sys.path
from targets import report

ROOT = Path(__file__).resolve().parents[1]
SYNC = "returns_sync"
#: the run's tasks in their order (the DAG makes one task per step)
ORDER = tuple(s.name for s in STEPS)
#: the settled outbox rows' made-up transaction ids start with this (bench setup only)
SETTLED = "bench-settled:"


def load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def tree_state() -> str:
    """The code the run measures: HEAD, and the runtime files (include/, dags/, plugins/) that differ from it
    (a shared working tree may change while the bench runs: task processes import it when they start)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "include", "dags", "plugins"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    changed = sorted(line[3:] for line in dirty if line.strip())
    return f"HEAD {head}" + (f" + uncommitted {', '.join(changed)}" if changed else " (runtime files clean)")


def say(text: str = "") -> None:
    print(text, flush=True)


def utc(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


def parse_ts(ts: str | None) -> datetime | None:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")) if ts else None


# --------------------------------------------------------------------------- the month and its day D


def generate(n: int, seed: int, folder: Path) -> tuple[Path, dict]:
    spec = importlib.util.spec_from_file_location("gen", ROOT.parent / "shared" / "scenarios" / "generate.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    scenario, _ = gen.generate(n, seed, False)
    # no injected faults; the SP-API simulator's usage plan is Amazon's default unless --amazon-rate (the
    # client is never told: it learns the plan from x-amzn-RateLimit-Limit, issue 26)
    scenario["faults"] = {}
    path = folder / f"daily-{n}-{seed}.json"
    path.write_text(json.dumps(scenario))
    return path, scenario


def deliveries_by_day(scenario: dict) -> Counter:
    """Feed deliveries per UTC day: each event at its delivered_at (else occurred_at), twice if duplicated."""
    c: Counter = Counter()
    for e in scenario["rebound"]["events"]:
        day = (e.get("delivered_at") or e["occurred_at"])[:10]
        c[day] += 2 if e.get("duplicate") else 1
    for e in scenario["rebound"]["invalid_events"]:
        c[(e.get("delivered_at") or "")[:10]] += 1
    return c


def choose_day(scenario: dict, per_day: Counter, wanted: str) -> tuple[date, float]:
    """Day D and the month's daily average (deliveries in the close period / its days)."""
    period = scenario["run"]["close_period"]
    month = [d for d in per_day if d.startswith(period)]
    first = date.fromisoformat(f"{period}-01")
    days = ((first.replace(day=28) + timedelta(days=4)).replace(day=1) - first).days
    average = sum(per_day[d] for d in month) / days
    if wanted == "auto":  # the day of the month whose deliveries are closest to the average
        best = min(
            (first + timedelta(days=i) for i in range(1, days)),
            key=lambda d: (abs(per_day[d.isoformat()] - average), d),
        )
        return best, average
    if wanted.isdigit():
        return first.replace(day=int(wanted)), average
    return date.fromisoformat(wanted), average


# --------------------------------------------------------------------------- simulators in their own process


class Simulators(SandboxProcess):
    """Both simulators in one process of their own (``returnledger_dev.sandbox.serve``), free ports."""

    def __init__(self, scenario_path: Path, work: Path):
        super().__init__(scenario_path, work, out=work / "sandbox-out", wait_s=900)

    def amazon_extra(self, scenario: dict, rate: float, burst: int) -> dict:
        from returnledger_dev.sandbox import harness as h

        v = scenario["vendor"]
        return {
            "refresh_token": h.LWA_REFRESH_TOKEN,
            "lwa_url": f"{self.amazon_url}/auth/o2/token",
            "marketplace_id": v["marketplace_id"],
            "region": "eu",
            "rate_per_s": rate,
            "burst": burst,
            "party_id": v["party_id"],
            "warehouse_id": v["warehouse_id"],
            "currency": v["currency"],
        }


# --------------------------------------------------------------------------- steady state before day D


def preload(dsn: str, sims: Simulators, scenario: dict, first: date, day: date) -> dict:
    """The fast sync path outside Airflow for every day first..D-1 (the steps of returns_sync that do not talk
    to Amazon, one window per day), each day's operator actions applied before its run (D's come later)."""
    from returnledger.clients.rebound import ReboundClient
    from returnledger.moment import RunMoment
    from returnledger_dev.run_window import ClientsEnv, run_steps
    from returnledger_dev.sandbox import harness as h
    from returnledger_dev.scenarios import reference as scenario_reference

    ops: dict[str, list[dict]] = {}
    for op in scenario.get("operations") or []:
        ops.setdefault(op["on"], []).append(op)
    rebound = ReboundClient(
        sims.rebound_url, h.REBOUND_CLIENT_ID, h.REBOUND_CLIENT_SECRET, page_size=500, timeout=30
    )
    env = ClientsEnv(dsn, rebound, vendor={"currency": scenario["vendor"]["currency"]})
    amazon_steps = {s.name for s in STEPS if s.amazon}
    totals: Counter = Counter()
    d = first
    while d < day:
        for op in ops.get(d.isoformat(), []):
            scenario_reference.apply_operation(dsn, op, at=utc(d), actor="operator (scenario)")
            totals["operations"] += 1
        done = run_steps(env, RunMoment(utc(d + timedelta(days=1)), utc(d)), skip=amazon_steps)
        a = done.get("apply") or {}
        totals["days"] += 1
        totals["delivered"] += done["extract"]["delivered"]
        totals["credit_actions"] += a.get("credit_actions") or 0
        totals["inventory_actions"] += a.get("inventory_actions") or 0
        d += timedelta(days=1)
    return dict(totals)


def day_operations(dsn: str, scenario: dict, day: date) -> int:
    """D's operator actions, applied just before D's run (as the cluster demo does)."""
    from returnledger_dev.scenarios import reference as scenario_reference

    ops = [op for op in scenario.get("operations") or [] if op["on"] == day.isoformat()]
    for op in ops:
        scenario_reference.apply_operation(dsn, op, at=utc(day), actor="operator (scenario)")
    return len(ops)


def settle_outbox(dsn: str, at: datetime) -> dict:
    """Bench setup only: every outbox row the days before D left PENDING is taken by Amazon, as a push and a
    confirm would have left it (rows ACCEPTED under a made-up transaction, notes confirmed, credit lines
    through CREDIT_SUBMITTED and CREDIT_ACCEPTED to CLOSED, with history). Nothing is left PENDING, SENDING
    or SUBMITTED, so D's push_credits and push_inventory claim only D's rows and confirm polls only the
    transactions D's run sends (it never asks Amazon about these made-up ones)."""
    from returnledger.amazon.answers import transition
    from returnledger.ledger import lifecycle

    with db.connect(dsn) as conn:
        before = dict(
            conn.execute("SELECT status, count(*) FROM ledger.amazon_submission GROUP BY status").fetchall()
        )
        keys = conn.execute(
            f"""
            UPDATE ledger.amazon_submission
               SET status = 'ACCEPTED', submitted_at = %(at)s, resolved_at = %(at)s, claim_key = NULL,
                   transaction_id = '{SETTLED}' || COALESCE(document_id, 'inventory:' || sku)
             WHERE status = 'PENDING'
            RETURNING kind, return_id, line""",
            {"at": at},
        ).fetchall()
        notes = conn.execute(
            f"""
            UPDATE ledger.credit_note n
               SET first_transaction_id = '{SETTLED}' || n.credit_note_id,
                   held_transaction_id = '{SETTLED}' || n.credit_note_id,
                   confirmed_by = 'SUCCESS', confirmed_at = %(at)s
             WHERE n.confirmed_by IS NULL AND EXISTS (
                   SELECT 1 FROM ledger.amazon_submission s WHERE s.document_id = n.credit_note_id
                      AND s.transaction_id = '{SETTLED}' || n.credit_note_id)""",
            {"at": at},
        ).rowcount
        credit_lines = [(rid, ln) for kind, rid, ln in keys if kind == "CREDIT_NOTE"]
        transition(
            conn,
            credit_lines,
            lambda v: lifecycle.on_credit_result(v, accepted=True),
            cause="AMAZON_SUCCESS",
            at=at,
            batch_id="bench:settled-before-day",
        )
        conn.commit()
        left = conn.execute(
            """SELECT count(*) FILTER (WHERE status IN ('PENDING', 'SENDING')),
                      count(*) FILTER (WHERE status = 'SUBMITTED')
                 FROM ledger.amazon_submission"""
        ).fetchone()
    return {
        "before": before,
        "credit_lines": len(credit_lines),
        "restocks": len(keys) - len(credit_lines),
        "notes": notes,
        "left_pending": left[0],
        "left_submitted": left[1],
    }


# --------------------------------------------------------------------------- runs on the cluster


def trigger_and_wait(api, day: date, timeout_s: float) -> dict:
    """Create the run listed under ``day`` (as the scheduler would), wait for it; load sampled meanwhile."""
    from returnledger_dev.cluster import demo as cd

    loads = [os.getloadavg()]
    t = time.monotonic()
    run_id = cd.trigger_day(api, SYNC, day)
    deadline = t + timeout_s
    while True:
        run = api.get(f"/dags/{SYNC}/dagRuns/{run_id}")
        if run["state"] in cd.FINISHED:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{SYNC} {run_id} still {run['state']} after {timeout_s:.0f}s")
        time.sleep(1.0)
        loads.append(os.getloadavg())
    loads.append(os.getloadavg())
    tis = cd.task_instances(api, SYNC, run_id)
    return {
        "day": day,
        "run_id": run_id,
        "run": run,
        "tis": tis,
        "bench_wait_s": time.monotonic() - t,
        "loads": loads,
        "xcom": {ti["task_id"]: xcom(api, run_id, ti["task_id"]) for ti in tis if ti.get("hostname")},
    }


def xcom(api, run_id: str, task_id: str):
    from returnledger_dev.cluster.processes import ClusterError

    try:
        r = api.get(
            f"/dags/{SYNC}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value",
            deserialize="true",
        )
    except ClusterError:
        return None
    value = r.get("value")
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def run_on_cluster(a, scenario: dict, ledger: str, sims: Simulators, day: date, work: Path, rate, burst):
    """A fresh cluster; ``a.warmups`` runs for the days before D (nothing left to read or send: they warm the
    api-server and the workers as a cluster that has been up for days is), then D's operator actions and D's
    run. Returns the runs, and the component logs' folder (read after the cluster stopped)."""
    from returnledger_dev.cluster import demo as cd
    from returnledger_dev.cluster.api import AirflowAPI
    from returnledger_dev.cluster.processes import start, stop
    from returnledger_dev.cluster.spec import DEFAULT_REDIS_URL, ClusterSpec, free_port

    spec = ClusterSpec(
        root=work / "cluster",
        ledger_dsn=ledger,
        name=f"daily{os.getpid()}",
        fresh=True,
        redis_url=os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL,
        api_port=free_port(),
        workers=a.workers,
        load_reference=False,
        conn_overrides={
            "rebound_api": {"host": sims.rebound_url, "port": None},  # extra as in airflow_settings.yaml
            "amazon_sp_api": {
                "host": sims.amazon_url,
                "port": None,
                "extra": sims.amazon_extra(scenario, rate, burst),
            },
        },
        extra_env={
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "false",
            **dict(kv.split("=", 1) for kv in a.airflow_env),
        },
    )
    t = time.monotonic()
    state = start(spec, progress=lambda line: say(f"    {line}"))
    out: dict = {"cluster_ready_s": state.get("ready_s"), "warmups": [], "root": spec.root}
    api = None
    try:
        api = AirflowAPI(state)
        cd.wait_dag_parsed(api, [SYNC])
        cd.unpause(api, [SYNC])
        out["downstream"] = {
            t["task_id"]: t.get("downstream_task_ids") or [] for t in api.get(f"/dags/{SYNC}/tasks")["tasks"]
        }
        say(f"  cluster up, {SYNC} parsed and unpaused ({time.monotonic() - t:.0f}s; {load()})")
        for k in range(a.warmups, 0, -1):
            r = trigger_and_wait(api, day - timedelta(days=k), a.timeout)
            out["warmups"].append(r)
            say(f"  warm-up run {r['run_id']}: {r['run']['state']} in {r['bench_wait_s']:.1f}s ({load()})")
        ops = day_operations(ledger, scenario, day)
        say(f"  {ops} operator action(s) of {day} applied; triggering {day} ({load()})")
        out["main"] = trigger_and_wait(api, day, a.timeout)
        say(f"  run {out['main']['run_id']}: {out['main']['run']['state']} ({load()})")
    finally:
        if api is not None:
            api.close()
        stop(spec.root, progress=lambda line: say(f"    {line}"))
    return out


# --------------------------------------------------------------------------- what the logs show

_TS = r"^(\d{4}-\d\d-\d\dT[\d:.]+Z)"
_RECEIVED = re.compile(_TS + r" \[info\s*\] Task execute_workload\[([^\]]+)\] received")
_EXECUTING = re.compile(
    _TS
    + r" \[info\s*\] \[([^\]]+)\] Executing workload in Celery: .*?ti=TaskInstanceDTO\(id=UUID\('([^']+)'\)"
)
_FINISHED = re.compile(_TS + r" \[info\s*\] Workload finished .*?workload_id=(\S+)")
_ACCESS = re.compile(
    _TS + r" .*request finished .*client_addr=(\S+) duration_us=(\d+) .*method=(\S+) path=(/execution/\S+)"
)


def celery_handoff(log_dir: Path) -> dict[str, dict]:
    """Per task instance id, from the workers' logs: when its Celery message was received, when a pool
    process began executing it, when its supervisor finished, and which worker."""
    out: dict[str, dict] = {}
    for path in sorted(log_dir.glob("worker-*.log")):
        received: dict[str, datetime] = {}
        for line in path.read_text(errors="replace").splitlines():
            if m := _RECEIVED.match(line):
                received[m.group(2)] = parse_ts(m.group(1))
            elif m := _EXECUTING.match(line):
                out[m.group(3)] = {
                    "worker": path.stem,
                    "received": received.get(m.group(2)),
                    "executing": parse_ts(m.group(1)),
                }
            elif (m := _FINISHED.match(line)) and m.group(2) in out:
                out[m.group(2)]["finished"] = parse_ts(m.group(1))
    return out


def execution_api_calls(log_dir: Path, ti_ids: dict[tuple[str, str], str]) -> dict[str, Counter]:
    """Per task instance id, the Execution API requests its supervisor made (api-server access log), counted
    and timed server-side by kind: xcom_get, xcom_push, variable, connection, ti (run, heartbeat, rtif,
    state). A request names its task instance (task-instance routes) or its task (XCom pushes); the others
    (XCom pulls, Variables, Connections) go to the task whose request last came from the same client port
    (one keep-alive connection per supervisor, reopened when the server closed it)."""
    owner: dict[str, str] = {}
    out: dict[str, Counter] = {}
    try:
        lines = (log_dir / "api-server.log").read_text(errors="replace").splitlines()
    except OSError:
        return out
    for line in lines:
        m = _ACCESS.match(line)
        if not m:
            continue
        _, client, us, method, path = m.groups()
        parts = path.split("/")  # ['', 'execution', kind, ...]
        if parts[2] == "task-instances" and len(parts) > 3 and parts[3] in ti_ids.values():
            owner[client] = parts[3]
        elif parts[2] == "xcoms" and method == "POST" and len(parts) > 6:
            ti = ti_ids.get((parts[4], parts[5]))
            if ti:
                owner[client] = ti
        ti = owner.get(client)
        if ti is None:
            continue
        kind = {
            "xcoms": "xcom_push" if method == "POST" else "xcom_get",
            "variables": "variable",
            "connections": "connection",
            "task-instances": "ti",
        }.get(parts[2], "other")
        c = out.setdefault(ti, Counter())
        c[kind] += 1
        c[f"{kind}_ms"] += int(us) / 1000
    return out


def task_phases(log_root: Path, run_id: str, ti: dict) -> dict:
    """The task runner's log groups: start-up (the process, the DAG file parse) ends with the ``Pre Execute``
    group, work runs until ``Post Execute`` (XCom push, final state) begins."""
    path = (
        log_root
        / f"dag_id={SYNC}"
        / f"run_id={run_id}"
        / f"task_id={ti['task_id']}"
        / f"attempt={ti.get('try_number') or 1}.log"
    )
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    out: dict = {}
    group = None
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if not isinstance(rec, dict) or not rec.get("timestamp"):
            continue
        ts, event = parse_ts(rec["timestamp"]), str(rec.get("event") or "")
        if event == "::group::Pre Execute":
            group = "pre"
            out["pre"] = ts
        elif event == "::group::Post Execute":
            group = "post"
            out["post"] = ts
        elif event == "::endgroup::" and group == "pre":
            out["work"] = ts
            group = None
        elif event == "Worker startup parse complete":
            out["parse_ms"] = rec.get("dag_file_parse_ms")
    return out


def analyse(r: dict, downstream: dict, log_root: Path, handoff: dict, calls: dict, rate: float) -> dict:
    """Per task: scheduling (upstream end -> queued), Celery hand-off (queued -> started), start-up, work and
    post-execute; the critical path through them (it adds up to the wall time); pushes against the rate."""
    run, tis = r["run"], {t["task_id"]: t for t in r["tis"]}
    upstream: dict[str, list[str]] = {t: [] for t in tis}
    for t, downs in downstream.items():
        for d in downs:
            upstream.setdefault(d, []).append(t)
    start = parse_ts(run.get("start_date")) or parse_ts(run.get("queued_at"))
    rows: dict[str, dict] = {}
    for task_id, t in tis.items():
        s, e, q = (parse_ts(t.get(k)) for k in ("start_date", "end_date", "queued_when"))
        if not (s and e):
            rows[task_id] = {"task": task_id, "state": t.get("state"), "ran": False}
            continue
        ups = [parse_ts(tis[u]["end_date"]) for u in upstream.get(task_id, []) if tis[u].get("end_date")]
        ready = max(ups) if ups else start
        ph = task_phases(log_root, r["run_id"], t)
        h = handoff.get(t["id"], {})
        work_s = ph.get("work") if ph.get("work") and ph["work"] >= s else None
        post_s = ph.get("post") if ph.get("post") and work_s and ph["post"] >= work_s else None
        c = calls.get(t["id"], Counter())
        rows[task_id] = {
            "task": task_id,
            "state": t.get("state"),
            "ran": True,
            "worker": h.get("worker") or t.get("hostname") or "",
            "ready": ready,
            "start_at": s,
            "end_at": e,
            "queued": (q - start).total_seconds() if q else None,
            "start": (s - start).total_seconds(),
            "end": (e - start).total_seconds(),
            "sched": (q - ready).total_seconds() if q else None,
            "handoff": (s - q).total_seconds() if q else None,
            "to_worker": (h["received"] - q).total_seconds() if q and h.get("received") else None,
            "startup": (work_s - s).total_seconds() if work_s else None,
            "parse": (ph.get("parse_ms") or 0) / 1000 if ph.get("parse_ms") is not None else None,
            "work": (post_s - work_s).total_seconds() if post_s else None,
            "post": (e - post_s).total_seconds() if post_s else None,
            "dur": (e - s).total_seconds(),
            "calls": c,
        }
    ran = [x for x in rows.values() if x["ran"]]
    last = max(ran, key=lambda x: x["end_at"])
    wall = (last["end_at"] - start).total_seconds()
    # the critical path: from the last task back through the upstream task that ended last
    path, cur = [], last
    while cur is not None:
        path.append(cur)
        ups = [rows[u] for u in upstream.get(cur["task"], []) if rows.get(u, {}).get("ran")]
        cur = max(ups, key=lambda x: x["end_at"]) if ups else None
    path.reverse()
    crit = Counter()
    crit["run start -> first task queued"] = path[0]["queued"] or 0.0
    for x in path:
        if x is not path[0]:
            crit["scheduling (upstream end -> queued)"] += x["sched"] or 0.0
        crit["Celery hand-off (queued -> started)"] += x["handoff"] or 0.0
        if x["startup"] is not None and x["work"] is not None:
            crit["task start-up (process, DAG parse)"] += x["startup"]
            crit["work"] += x["work"]
            crit["post-execute (XCom push, state)"] += x["post"]
        else:
            crit["work"] += x["dur"]
    x = r["xcom"]
    pc, pi, cf = (x.get(k) or {} for k in ("push_credits", "push_inventory", "confirm"))
    pc_ideal = (pc.get("calls") or 0) / rate
    saved = 0.0
    if rows.get("push_credits", {}).get("ran"):
        p = rows["push_credits"]
        other = [rows[s]["end_at"] for s in ("push_inventory",) if rows.get(s, {}).get("ran")]
        phase_end = max([p["end_at"], *other])
        cut = min(pc_ideal, p["work"] if p["work"] is not None else p["dur"])
        saved = (phase_end - max([p["end_at"] - timedelta(seconds=cut), *other])).total_seconds()
    cf_ideal = (cf.get("polls") or 0) / rate
    cf_saved = (
        min(cf_ideal, rows["confirm"]["work"] or rows["confirm"]["dur"])
        if rows.get("confirm", {}).get("ran")
        else 0.0
    )
    return {
        "rows": rows,
        "wall": wall,
        "path": [p["task"] for p in path],
        "crit": crit,
        "tasks_running": r["timing"]["tasks_running_s"],
        "between": r["timing"]["between_tasks_s"],
        "pc": pc,
        "pi": pi,
        "cf": cf,
        "pc_ideal": pc_ideal,
        "pc_saved": saved,
        "cf_ideal": cf_ideal,
        "cf_saved": cf_saved,
    }


def sent_during(reqs: list[dict], row: dict, match) -> dict:
    if not row.get("ran"):
        return {"n": 0, "429": 0, "first": None, "span": 0.0}
    s, e = row["start_at"], row["end_at"]
    hits = [(parse_ts(r["at"]), r["status"]) for r in reqs if match(r) and s <= parse_ts(r["at"]) <= e]
    ts = sorted(h[0] for h in hits)
    return {
        "n": len(hits),
        "429": sum(1 for _, st in hits if st == 429),
        "first": (ts[0] - s).total_seconds() if ts else None,
        "span": (ts[-1] - ts[0]).total_seconds() if len(ts) > 1 else 0.0,
    }


# --------------------------------------------------------------------------- printing


def fmt(x, w: int = 7, p: int = 2) -> str:
    return f"{x:>{w}.{p}f}" if isinstance(x, (int, float)) else f"{'-':>{w}}"


def loads_text(loads: list[tuple]) -> str:
    one = [x[0] for x in loads]
    return (
        f"1-min load average {min(one):.2f}..{max(one):.2f} (mean {sum(one) / len(one):.2f}) over "
        f"{len(one)} samples; at the end {', '.join(f'{v:.2f}' for v in loads[-1])}"
    )


def print_tasks(an: dict, order: list[str]) -> None:
    say(
        f"  {'task':<15}{'state':<9}{'worker':<10}{'queued':>7}{'start':>8}{'end':>8}{'sched':>7}"
        f"{'handoff':>8}{'(redis)':>8}{'st.up':>7}{'(parse)':>8}{'work':>8}{'post':>6}{'dur':>8}"
        f"  exec-API calls: xcom get/push, variable, ti"
    )
    for task_id in order:
        x = an["rows"].get(task_id)
        if x is None:
            continue
        if not x["ran"]:
            say(f"  {task_id:<15}{x['state'] or '-':<9}")
            continue
        c = x["calls"]
        say(
            f"  {task_id:<15}{x['state']:<9}{x['worker']:<10}{fmt(x['queued'], 7, 1)}{fmt(x['start'], 8, 1)}"
            f"{fmt(x['end'], 8, 1)}{fmt(x['sched'])}{fmt(x['handoff'], 8)}{fmt(x['to_worker'], 8)}"
            f"{fmt(x['startup'])}{fmt(x['parse'], 8)}{fmt(x['work'], 8)}{fmt(x['post'], 6)}{fmt(x['dur'], 8)}"
            f"  {c['xcom_get']}/{c['xcom_push']}, {c['variable']}, {c['ti']}"
            f" ({c['xcom_get_ms'] + c['xcom_push_ms'] + c['variable_ms']:.0f} ms xcom+var server-side)"
        )


def print_run(label: str, r: dict, an: dict, order: list[str]) -> None:
    say(f"\n{label}: run {r['run_id']} {r['run']['state']}; {loads_text(r['loads'])}")
    print_tasks(an, order)
    say(
        f"  wall (run start -> last task end) {an['wall']:.1f}s: tasks running {an['tasks_running']:.1f}s, "
        f"between tasks {an['between']:.1f}s; critical path {' > '.join(an['path'])}:"
    )
    say("    " + "; ".join(f"{k} {v:.1f}s" for k, v in an["crit"].items()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--returns", type=int, default=100_000, help="returns in the generated month")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--day",
        default="auto",
        help="day D: 'auto' (the day of the month whose deliveries are closest to the month's daily "
        "average), a day of the month (15) or a date",
    )
    ap.add_argument("--workers", type=int, default=2, help="Celery workers (concurrency 2 each)")
    ap.add_argument(
        "--warmups",
        type=int,
        default=1,
        help="runs for the days before D on the fresh cluster first (they find nothing to do)",
    )
    ap.add_argument(
        "--amazon-rate",
        type=float,
        default=None,
        help="the SP-API simulator's usage plan, req/s per operation (default: Amazon's documented plan, "
        "10/s); the client's connection stays at the default and learns it from the answers",
    )
    ap.add_argument("--amazon-burst", type=int, default=None)
    ap.add_argument(
        "--plans",
        default=None,
        metavar="RATE[,RATE...]",
        help="run D once per SP-API usage plan (req/s per operation, e.g. '10,20'), each on a copy of the "
        "one preloaded ledger (CREATE DATABASE ... TEMPLATE) with fresh simulators and a fresh cluster; "
        "one TARGET line per plan (default: --amazon-rate alone)",
    )
    ap.add_argument(
        "--processing-s",
        default="30",
        help="seconds the simulator answers Processing after a submission ('30' or a range '20-90')",
    )
    ap.add_argument(
        "--airflow-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="one more variable for every cluster component (experiments, e.g. scheduler settings)",
    )
    ap.add_argument("--timeout", type=float, default=3600, help="seconds to wait for each run")
    ap.add_argument("--out", default="test-output/bench-daily")
    ap.add_argument(
        "--from-json", default=None, help="print the report of an earlier bench from its bench_daily.json"
    )
    ap.add_argument(
        "--server", default=None, help="PostgreSQL server DSN (default: RETURNLEDGER_DSN or embedded)"
    )
    a = ap.parse_args()
    if a.from_json:
        facts = json.loads(Path(a.from_json).read_text())
        lines = Path(facts["requests_log"]).read_text().splitlines()
        return report_from(facts, [json.loads(x) for x in lines if x.strip()])
    from returnledger.reference import load as reference
    from returnledger.store import migrate
    from returnledger_dev.cluster.spec import ClusterSpec, metadata_dsn
    from returnledger_dev.scenarios import reference as scenario_reference

    server = a.server or os.environ.get("RETURNLEDGER_TEST_SERVER_DSN") or db.resolve_dsn()
    plans: list[float | None] = (
        [float(x) for x in a.plans.split(",") if x.strip()] if a.plans else [a.amazon_rate]
    )
    # the simulators run in a process of their own: their knobs go by environment (spapi_state)
    os.environ["RETURNLEDGER_SIM_PROCESSING_S"] = str(a.processing_s)
    use_plan(plans[0], a.amazon_burst)
    work = Path(a.out).resolve() / f"{a.returns}-{a.seed}-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    say(f"== bench_daily: {a.returns:,} returns/month, seed {a.seed}, {a.workers} Celery worker(s); {load()}")
    code = tree_state()
    say(f"   code: {code}")
    if a.airflow_env:
        say(f"   cluster components also get: {', '.join(a.airflow_env)}")
    t0 = time.monotonic()
    t = t0
    path, scenario = generate(a.returns, a.seed, work)
    per_day = deliveries_by_day(scenario)
    day, average = choose_day(scenario, per_day, a.day)
    first = date.fromisoformat(scenario["run"]["from"])
    if not first + timedelta(days=a.warmups) <= day:
        raise SystemExit(f"day {day} leaves no room for {a.warmups} warm-up run(s) after {first}")
    say(
        f"scenario: {len(scenario['rebound']['returns']):,} returns, {len(scenario['rebound']['events']):,} "
        f"events (generated in {time.monotonic() - t:.1f}s); {scenario['run']['close_period']} averages "
        f"{average:,.0f} deliveries a day; day D = {day}: {per_day[day.isoformat()]:,} deliveries "
        f"(the 15th: {per_day[day.replace(day=15).isoformat()]:,})"
    )
    ledger = scratch_db.create_scratch_database(server, "rl_bench_daily")
    sims = None
    try:
        t = time.monotonic()
        migrate.migrate(
            ledger,
            runtime=ClusterSpec.ledger_role,
            runtime_password=os.environ.get("RETURNLEDGER_LEDGER_PASSWORD"),
        )
        reference.load_reference(ledger, at=utc(first))
        scenario_reference.load_scenario_reference(ledger, scenario, at=utc(first))
        sims = Simulators(path, work)
        say(f"ledger migrated, reference data loaded, simulators up ({time.monotonic() - t:.1f}s; {load()})")
        t = time.monotonic()
        pre = preload(ledger, sims, scenario, first, day)
        say(
            f"steady state: {pre.get('days', 0)} day(s) {first}..{day - timedelta(days=1)} through the fast "
            f"sync path outside Airflow: {pre.get('delivered', 0):,} deliveries, "
            f"{pre.get('credit_actions', 0):,} credit lines and {pre.get('inventory_actions', 0):,} restocks "
            f"into the outbox, {pre.get('operations', 0)} operator action(s) "
            f"({time.monotonic() - t:.1f}s; {load()})"
        )
        settled = settle_outbox(ledger, utc(day))
        say(
            f"BENCH SETUP, not the product: the earlier days' outbox settled in SQL as taken by Amazon "
            f"(statuses before: {settled['before']}): {settled['notes']:,} credit notes / "
            f"{settled['credit_lines']:,} lines ACCEPTED and CLOSED, {settled['restocks']:,} restocks "
            f"ACCEPTED, under made-up transactions '{SETTLED}...'; left PENDING/SENDING "
            f"{settled['left_pending']}, SUBMITTED {settled['left_submitted']}"
        )
        if settled["left_pending"] or settled["left_submitted"]:
            raise RuntimeError("the outbox was not settled: D's run would carry earlier days' work")
        snapshot = None
        if len(plans) > 1:
            t = time.monotonic()
            snapshot = copy_database(server, ledger, "rl_bench_daily_snapshot")
            say(f"preloaded ledger copied for the other plans ({time.monotonic() - t:.1f}s; {load()})")
        done: list[tuple[dict, list[dict]]] = []
        for i, plan in enumerate(plans):
            rate = plan if plan is not None else 10.0
            if i:  # the same preloaded ledger, fresh simulators at this plan, a fresh cluster
                sims.stop()
                sims = None
                scratch_db.drop_database(server, ledger)
                scratch_db.drop_database(server, metadata_dsn(ledger))
                assert snapshot is not None
                ledger = copy_database(server, snapshot, "rl_bench_daily")
                use_plan(plan, a.amazon_burst)
                sims = Simulators(path, work / f"plan-{rate:g}")
            say(
                f"== plan {rate:g} req/s: {a.warmups} warm-up run(s), then the run for {day}, on a fresh "
                f"cluster ({a.workers} workers)"
            )
            root = work if len(plans) == 1 else work / f"plan-{rate:g}"
            root.mkdir(parents=True, exist_ok=True)
            res = run_on_cluster(a, scenario, ledger, sims, day, root, 10.0, 10)  # the documented default
            done.append(
                ({"rate": rate, "res": res, "log": str(sims.out / "amazon_requests.jsonl")}, sims.requests())
            )
    finally:
        if sims is not None:
            sims.stop()
        path.unlink(missing_ok=True)  # the generated month (160 MB at 100k returns); logs stay in `work`
        scratch_db.drop_database(server, ledger)
        scratch_db.drop_database(server, metadata_dsn(ledger))
        if snapshot is not None:
            scratch_db.drop_database(server, snapshot)
    status = 0
    for plan_facts, reqs in done:
        status |= report_plan(
            a,
            code,
            day,
            per_day,
            t0,
            work if len(done) == 1 else work / f"plan-{plan_facts['rate']:g}",
            plan_facts,
            reqs,
        )
    return status


def use_plan(rate: float | None, burst: int | None) -> None:
    """The SP-API simulator's usage plan for the simulators started next (None: its documented default)."""
    if rate is None:
        os.environ.pop("RETURNLEDGER_SIM_USAGE_PLAN", None)
        return
    b = burst if burst is not None else 10
    os.environ["RETURNLEDGER_SIM_USAGE_PLAN"] = f"{rate:g}/{b},getTransaction={rate:g}/{2 * b}"


def copy_database(server: str, source_dsn: str, prefix: str) -> str:
    """A copy of the preloaded ledger (``CREATE DATABASE ... TEMPLATE``: seconds, where the preload took
    minutes)."""
    return scratch_db.create_scratch_database(server, prefix, created_by="bench_daily", template=source_dsn)


def report_plan(a, code: str, day: date, per_day, t0: float, work: Path, plan: dict, reqs: list[dict]) -> int:
    res, rate = plan["res"], plan["rate"]
    facts = {
        "returns": a.returns,
        "seed": a.seed,
        "workers": a.workers,
        "rate": rate,
        "processing_s": a.processing_s,
        "airflow_env": a.airflow_env,
        "code": code,
        "day": day.isoformat(),
        "day_deliveries": per_day[day.isoformat()],
        "bench_s": round(time.monotonic() - t0, 1),
        "load_end": os.getloadavg(),
        "requests_log": plan["log"],
        "root": str(res["root"]),
        **{k: res[k] for k in ("cluster_ready_s", "downstream", "warmups", "main")},
    }
    # everything the report reads, before it is read: --from-json prints the report again from here
    (work / "bench_daily.json").write_text(json.dumps(facts, indent=1, default=str))
    return report_from(facts, reqs)


def report_from(facts: dict, reqs: list[dict]) -> int:
    """The report of a finished bench: its facts (bench_daily.json), the cluster's logs, the SP-API log."""
    from returnledger_dev.cluster import demo as cd

    root = Path(facts["root"])
    log_dir, log_root = root / "logs", root / "airflow" / "logs"
    runs = [*facts["warmups"], facts["main"]]
    ti_ids = {(r["run_id"], t["task_id"]): t["id"] for r in runs for t in r["tis"]}
    handoff, calls = celery_handoff(log_dir), execution_api_calls(log_dir, ti_ids)
    downstream, rate = facts["downstream"], facts["rate"]
    order = [t for t in ORDER if t in downstream] + sorted(set(downstream) - set(ORDER))
    for i, r in enumerate(facts["warmups"], 1):
        r["timing"] = cd.run_timing(r["run"], r["tis"])
        an = analyse(r, downstream, log_root, handoff, calls, rate)
        print_run(f"warm-up {i} (nothing to read or send: the fixed costs alone)", r, an, order)
    r = facts["main"]
    r["timing"] = cd.run_timing(r["run"], r["tis"])
    an = analyse(r, downstream, log_root, handoff, calls, rate)
    print_run(f"day D = {facts['day']}", r, an, order)
    print_summary(facts, r, an, reqs)
    return 0 if r["run"]["state"] == "success" else 1


def print_summary(facts: dict, r: dict, an: dict, reqs: list[dict]) -> None:
    day, rate, _returns, _workers = (
        date.fromisoformat(facts["day"]),
        facts["rate"],
        facts["returns"],
        facts["workers"],
    )
    x = r["xcom"]
    ext = (x.get("extract") or {}).get("extract") or {}
    val, app, pc, pi, cf = (
        x.get(k) or {} for k in ("validate", "apply", "push_credits", "push_inventory", "confirm")
    )
    say(
        f"\nD's window [{day}, {day + timedelta(days=1)}): {ext.get('delivered', '?')} deliveries read "
        f"(scenario: {facts['day_deliveries']:,}), {ext.get('new', '?')} new, "
        f"{ext.get('return_orders', '?')} return orders fetched; validate {val.get('rows', '?')} rows "
        f"({val.get('passed', '?')} passed, {val.get('failed', '?')} failed); apply "
        f"{app.get('credit_actions', '?')} credit lines, {app.get('inventory_actions', '?')} restocks"
    )
    say(
        f"pushed: {pc.get('credit_notes', '?')} credit notes ({pc.get('lines', '?')} lines) in "
        f"{pc.get('calls', '?')} calls; {pi.get('skus', '?')} SKUs ({pi.get('lines', '?')} restocks) in "
        f"{pi.get('calls', '?')} calls; confirm: {cf.get('polls', '?')} polls, "
        f"{cf.get('accepted', '?')} notes accepted, {cf.get('inventory_accepted', '?')} inventory accepted, "
        f"{cf.get('rejected', '?')} rejected, "
        f"{cf.get('processing', '?')} still processing"
    )
    rows = an["rows"]
    for task_id, label, match, n_ideal in (
        (
            "push_credits",
            "credit-note POSTs",
            lambda q: q["method"] == "POST" and "/invoices" in q["path"],
            pc.get("calls"),
        ),
        (
            "push_inventory",
            "inventory POSTs",
            lambda q: q["method"] == "POST" and "inventory" in q["path"],
            pi.get("calls"),
        ),
        (
            "confirm",
            "transaction GETs",
            lambda q: q["method"] == "GET" and "transaction" in q["path"],
            cf.get("polls"),
        ),
    ):
        row = rows.get(task_id) or {}
        if not row.get("ran"):
            continue
        v = sent_during(reqs, row, match)
        ideal = (n_ideal or 0) / rate
        seen = (v["n"] - 1) / v["span"] if v["span"] else float("nan")
        say(
            f"{task_id}: {row['dur']:.1f}s (work {fmt(row['work'], 1, 1).strip()}s) for {v['n']} {label} "
            f"in the simulator's log ({v['429']} answered 429); ideal {ideal:.1f}s = {n_ideal} / {rate:g} "
            f"per s, "
            f"{ideal / row['dur']:.0%} of the task; first request {fmt(v['first'], 1, 2).strip()}s after "
            f"the task started; {seen:.2f} req/s first to last"
        )
    wall = an["wall"]
    wo = wall - an["pc_saved"]
    wo2 = wo - an["cf_saved"]
    crit = an["crit"]
    overhead = sum(v for k, v in crit.items() if k != "work")
    say(
        f"wall {wall:.1f}s; without push_credits' rate-bound time ({an['pc_ideal']:.1f}s, "
        f"{an['pc_saved']:.1f}s of it on the critical path): {wo:.1f}s; also without confirm's "
        f"{cf.get('polls', 0)} polls at {rate:g}/s ({an['cf_saved']:.1f}s): {wo2:.1f}s"
    )
    say(
        f"whole bench {facts['bench_s']:.0f}s (cluster start {facts['cluster_ready_s']}s); at its end load "
        f"average {', '.join(f'{v:.2f}' for v in facts['load_end'])}"
    )
    now, code = tree_state(), facts["code"]
    if now != code:
        say(f"the code changed while the bench ran (shared working tree): now {now}")
    events = ext.get("delivered") if isinstance(ext.get("delivered"), int) else facts["day_deliveries"]
    floor_target(facts, r, an, reqs, events)
    say(
        f"BREAKDOWN daily run {day}: wall {wall:.1f}s = critical path work {crit['work']:.1f}s + scheduling, "
        f"hand-off, start-up and post-execute {overhead:.1f}s; push_credits rate-bound {an['pc_ideal']:.1f}s "
        f"({pc.get('calls', 0)} calls / {rate:g} per s), confirm rate-bound {an['cf_ideal']:.1f}s "
        f"({cf.get('polls', 0)} polls); without both {wo2:.1f}s; {loads_text(r['loads'])}"
    )


def amazon_floor(facts: dict, r: dict, reqs: list[dict]) -> dict:
    """Amazon's floor for D's run (issue 26, target 1), from the simulator's log of that run: max(notes /
    submit rate, transactions / status rate) plus one processing delay (each operation at its own rate;
    the inventory pair likewise), and the status checks per transaction."""
    start = parse_ts(r["run"].get("start_date") or r["run"].get("queued_at"))
    end = parse_ts(r["run"].get("end_date")) or datetime.now(UTC)
    mine = [q for q in reqs if start <= parse_ts(q["at"]) <= end]

    def n(method: str, part: str, status: int) -> int:
        return sum(1 for q in mine if q["method"] == method and part in q["path"] and q["status"] == status)

    notes = n("POST", "/invoices", 202)
    inventory = n("POST", "/items", 202)
    gets = [q for q in mine if q["method"] == "GET" and "/vendor/transactions/v1/transactions/" in q["path"]]
    rate = facts["rate"]
    delay = max(float(x) for x in str(facts.get("processing_s", "0")).split("-"))
    floor = max(notes / rate, inventory / rate) + delay  # one transaction per note: notes / status rate too
    times = sorted(parse_ts(q["at"]).timestamp() for q in gets)
    return {
        "notes": notes,
        "inventory": inventory,
        "checks": len(gets),
        "checks_per_tx": len(gets) / notes if notes else float("nan"),
        "checks_wall": (times[-1] - times[0]) if len(times) > 1 else 0.0,
        "delay": delay,
        "floor": floor,
        "first_check_after_start": (times[0] - start.timestamp()) if times else None,
    }


def floor_target(facts: dict, r: dict, an: dict, reqs: list[dict], events) -> None:
    f = amazon_floor(facts, r, reqs)
    cf, pc = an["cf"], an["pc"]
    wall, rate = an["wall"], facts["rate"]
    worker_s = float(cf.get("worker_s") or 0.0)
    share = worker_s / f["checks_wall"] if f["checks_wall"] else float("nan")
    beside = (pc.get("status_checks") or {}).get("polls", 0)
    limit = 1.15 * f["floor"] + 30
    say(
        f"Amazon's floor: max({f['notes']} notes = transactions, {f['inventory']} inventory "
        f"updates) / {rate:g} per s + one processing delay {f['delay']:g}s = {f['floor']:.1f}s; status "
        f"checks {f['checks']} ({beside} beside push_credits, {cf.get('polls', 0)} from the triggerer) over "
        f"{f['checks_wall']:.1f}s, the first {f['first_check_after_start'] or 0:.1f}s after the run "
        f"started; confirm held a worker slot {worker_s:.2f}s and waited "
        f"{float(cf.get('trigger_s') or 0):.1f}s in the triggerer"
    )
    report(
        "daily run at Amazon's floor",
        f"wall {wall:.1f}s for {day_text(facts)} ({events:,} deliveries, {facts['returns']:,} returns/month, "
        f"plan {rate:g} req/s learned by the client, processing {facts.get('processing_s')}s) vs floor "
        f"{f['floor']:.1f}s -> {wall / f['floor']:.2f}x; checks/transaction {f['checks_per_tx']:.2f}; "
        f"worker-slot seconds of the checks {worker_s:.1f}s = {share:.1%} of their wall "
        f"{f['checks_wall']:.1f}s",
        f"wall <= 1.15 x floor + 30 s = {limit:.1f}s, checks/transaction <= 1.3, worker-slot share <= 10%",
        wall <= limit and f["checks_per_tx"] <= 1.3 and share <= 0.10,
    )


def day_text(facts: dict) -> str:
    return str(facts["day"])


if __name__ == "__main__":
    sys.exit(main())
