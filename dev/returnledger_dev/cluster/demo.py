"""``make cluster-demo``: a whole scenario (one month or several) through the real scheduler on the local
Celery cluster.

What ``make demo`` does with ``dag.test()``, done the way a deployment runs it: a fresh ledger with
the scenario's reference data, both simulators, then ``returnledger_dev.cluster.processes``
(api-server, scheduler, dag-processor, triggerer, two Celery workers). Through Airflow's REST API, as
an operator would, the DAGs are unpaused and for every scenario day D (after the day's manual
``operations``) the ``returns_sync`` run listed under D is created: logical date D, data interval
[D, D+1) UTC, the run the scheduler itself makes for D (``--mode backfill`` asks for the same runs as
backfills instead, one per stretch of days between operator actions and closes). The scheduler queues
the tasks on Celery and the workers run them. On each close day of the scenario (``run.closes``, else
``close_period`` on ``to``) the close run of ``returns_reconciliation`` (conf ``close_period``) follows
that day's sync and writes ``closes/<period>/``; the top-level report is the last close's. Then one
day's ``push_credits`` is cleared through the REST API and runs again, and the outputs of
scenarios/README.md are written, plus ``cluster.json``: which worker ran what (task instance
hostnames), per-run timings, and what the rerun sent.

The scenario is a past month, so the cluster runs with ``[scheduler] use_job_schedule = False``: the
scheduler runs every run it is given but makes none from the clock (nor from asset events), which would
otherwise add a run for yesterday's real date that reads the whole month at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TextIO

from returnledger.store.objects import DIGESTS, EXPORTS, REPORTS
from returnledger_dev.cluster import hosts
from returnledger_dev.demo.airflow_run import day_start
from returnledger_dev.demo.mail import MailSink
from returnledger_dev.demo.month import closes_by_day
from returnledger_dev.demo.outputs import CLOSES_DIR, RUN_OUTPUTS, digest_counts, digests_of, publish_close

MAIL = "mail"

SYNC, RECON = "returns_sync", "returns_reconciliation"
CHECKS, WEEKLY = "returns_operating_checks", "returns_weekly_review"
OUTPUTS = (*RUN_OUTPUTS, "cluster.json")
FINISHED = {"success", "failed"}


def _iso(d: datetime) -> str:
    return d.isoformat().replace("+00:00", "Z")


def _parse(ts: str | None) -> datetime | None:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")) if ts else None


SUBMISSION_PATHS = ("/vendor/payments/v1/invoices", "/vendor/directFulfillment/inventory/v1/warehouses/")


def is_submission(r: dict) -> bool:
    """A request that hands Amazon something (credit notes, inventory updates): not a token request
    (``POST /auth/o2/token``, made whenever an access token has expired), a status check or the
    simulator's own ``/_sandbox/`` endpoints."""
    return r["method"] == "POST" and r["path"].startswith(SUBMISSION_PATHS)


def amazon_submissions(out_dir: Path, path_part: str = "") -> int:
    """Submissions the SP-API simulator has logged so far (amazon_requests.jsonl is written as requests
    arrive), those whose path holds ``path_part`` (``/invoices``: credit notes)."""
    try:
        lines = (out_dir / "amazon_requests.jsonl").read_text().splitlines()
    except OSError:
        return 0
    rows = (json.loads(line) for line in lines if line.strip())
    return sum(1 for r in rows if is_submission(r) and path_part in r["path"])


# --------------------------------------------------------------------------- runs through the REST API


def wait_dag_parsed(api, dag_ids, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    for dag_id in dag_ids:
        while True:
            r = api.http.get(f"/dags/{dag_id}")
            if r.status_code == 200:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"DAG {dag_id} not parsed after {timeout_s:.0f}s: {r.status_code} {r.text[:300]}"
                )
            time.sleep(1.0)


def unpause(api, dag_ids) -> None:
    for dag_id in dag_ids:
        api.patch(f"/dags/{dag_id}", {"is_paused": False})


def day_run_body(day: date, conf: dict | None, now: datetime) -> dict:
    """The REST body of the run listed under ``day``: logical date D, data interval [D, D+1), as the
    scheduler would make it. ``run_after`` (the scheduler starts no run before it) is D+1, or ``now`` for a
    day that has not ended on this machine's clock: a scenario may reach past it (a quarter from October)."""
    period = (conf or {}).get("close_period")
    start = day_start(day)
    return {
        "dag_run_id": f"close__{period}__{day.isoformat()}" if period else f"day__{day.isoformat()}",
        "logical_date": _iso(start),
        "data_interval_start": _iso(start),
        "data_interval_end": _iso(start + timedelta(days=1)),
        "run_after": _iso(min(start + timedelta(days=1), now.astimezone(UTC))),
        "conf": conf or {},
        "note": "scenario day, created by make cluster-demo",
    }


def future_days_problem(last: date, now: datetime) -> str | None:
    """Why the scenario cannot run on the real scheduler today, or None.

    Airflow's scheduler starts no task whose run's logical date is after the clock (its "Logical Date"
    dependency; Airflow 3 has no setting to lift it), so a scenario whose days reach past today (a
    generated quarter from October run in early December) would wait forever on its first such day."""
    now = now.astimezone(UTC)
    if day_start(last) <= now:
        return None
    first_blocked = now.date() + timedelta(days=1)  # today's run may start: its run_after is now
    return (
        f"the scenario runs to {last}, but this machine's clock is at {now:%Y-%m-%d %H:%M} UTC: Airflow's "
        f"scheduler starts no task whose logical date is in the future, so the runs from {first_blocked} on "
        "would never start. Run it with make demo (dag.test), or on the cluster once its last day has begun."
    )


def period_run_body(kind: str, start: datetime, length: timedelta, now: datetime) -> dict:
    """The REST body of a scheduled run of the digest DAGs: data interval [start, start + length), listed
    under ``start`` (their cron is 07:00: the operating check of day D covers [D 07:00, D+1 07:00), the
    weekly review of Monday W [W 07:00, W+7 07:00))."""
    end = start + length
    return {
        "dag_run_id": f"{kind}__{start:%Y-%m-%dT%H%M}",
        "logical_date": _iso(start),
        "data_interval_start": _iso(start),
        "data_interval_end": _iso(end),
        "run_after": _iso(min(end, now.astimezone(UTC))),
        "conf": {},
        "note": "scenario day, created by make cluster-demo",
    }


def trigger_day(api, dag_id: str, day: date, conf: dict | None = None) -> str:
    """Create the run listed under ``day`` (day_run_body); returns its run id."""
    body = day_run_body(day, conf, datetime.now(UTC))
    api.post(f"/dags/{dag_id}/dagRuns", body)
    return body["dag_run_id"]


def wait_run(api, dag_id: str, run_id: str, timeout_s: float = 1800, poll_s: float = 0.5) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        run = api.get(f"/dags/{dag_id}/dagRuns/{run_id}")
        if run["state"] in FINISHED:
            return run
        if time.monotonic() > deadline:
            raise RuntimeError(f"{dag_id} {run_id} still {run['state']} after {timeout_s:.0f}s")
        time.sleep(poll_s)


def task_instances(api, dag_id: str, run_id: str = "~") -> list[dict]:
    out, offset = [], 0
    while True:
        page = api.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", limit=100, offset=offset)
        out += page["task_instances"]
        offset += len(page["task_instances"])
        if not page["task_instances"] or offset >= page["total_entries"]:
            return out


def run_timing(run: dict, tis: list[dict]) -> dict:
    """Wall time of a run (running -> done) and how much of it tasks were running (union of their running
    intervals, each task process's start-up included): the rest is scheduling, Celery hand-off and the
    workers picking tasks up. ``waited_s``: queued -> running (a backfill queues all its runs at once)."""
    queued, start, end = (_parse(run.get(k)) for k in ("queued_at", "start_date", "end_date"))
    start = start or queued
    spans = sorted(
        (_parse(t["start_date"]), _parse(t["end_date"]))
        for t in tis
        if t.get("start_date") and t.get("end_date")
    )
    busy, cur_s, cur_e = 0.0, None, None
    for s, e in spans:
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                busy += (cur_e - cur_s).total_seconds()
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        busy += (cur_e - cur_s).total_seconds()
    waits = [
        (_parse(t["start_date"]) - _parse(t["queued_when"])).total_seconds()
        for t in tis
        if t.get("start_date") and t.get("queued_when")
    ]
    wall = (end - start).total_seconds() if start and end else None
    return {
        "queued_at": run.get("queued_at"),
        "start_date": run.get("start_date"),
        "end_date": run.get("end_date"),
        "waited_s": round((start - queued).total_seconds(), 2) if start and queued else None,
        "wall_s": round(wall, 2) if wall is not None else None,
        "tasks_running_s": round(busy, 2),
        "between_tasks_s": round(wall - busy, 2) if wall is not None else None,
        "task_queue_wait_s": round(sum(waits), 2),
        "tasks": len(tis),
        "task_seconds": round(sum(t.get("duration") or 0 for t in tis), 2),
    }


def backfill(api, dag_id: str, first: date, last: date, timeout_s: float = 3600) -> list[str]:
    """A backfill of the runs listed under ``first``..``last`` (one at a time, oldest first); run ids."""
    bf = api.post(
        "/backfills",
        {
            "dag_id": dag_id,
            "from_date": _iso(day_start(first)),
            "to_date": _iso(day_start(last)),
            "run_backwards": False,
            "dag_run_conf": {},
            "reprocess_behavior": "none",
            "max_active_runs": 1,
        },
    )
    deadline = time.monotonic() + timeout_s
    while True:
        b = api.get(f"/backfills/{bf['id']}")
        if b.get("completed_at"):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"backfill {bf['id']} of {dag_id} not complete after {timeout_s:.0f}s")
        time.sleep(1.0)
    runs = api.get(
        f"/dags/{dag_id}/dagRuns",
        run_type="backfill",
        limit=100,
        logical_date_gte=_iso(day_start(first)),
        logical_date_lte=_iso(day_start(last)),
    )["dag_runs"]
    return [r["dag_run_id"] for r in sorted(runs, key=lambda r: r["logical_date"])]


def clear_task(api, dag_id: str, run_id: str, task_id: str) -> None:
    """Clear one task of one run (as "Clear" in the UI does): it runs again, its run goes back to queued."""
    api.post(
        f"/dags/{dag_id}/clearTaskInstances",
        {
            "dry_run": False,
            "dag_run_id": run_id,
            "task_ids": [task_id],
            "only_failed": False,
            "reset_dag_runs": True,
            "include_upstream": False,
            "include_downstream": False,
        },
    )


# --------------------------------------------------------------------------- the scenario


def run_cluster_scenario(
    scenario_path: Path,
    out_dir: Path,
    *,
    dsn: str | None = None,
    faults: bool = True,
    port: int | None = None,
    workers: int = 2,
    root: Path | None = None,
    redis_url: str | None = None,
    mode: str = "runs",
    rerun: bool = True,
    name: str = "demo",
    progress=print,
) -> dict:
    """Run a whole scenario on a fresh local cluster; returns the summary (outputs land in ``out_dir``).

    ``name`` names the cluster's Celery queue and workers: clusters sharing one Redis need different names."""
    from returnledger.reference import load as reference
    from returnledger.store import db, migrate
    from returnledger_dev.cluster.api import AirflowAPI
    from returnledger_dev.cluster.processes import start, stop
    from returnledger_dev.cluster.spec import DEFAULT_REDIS_URL, ClusterSpec, free_port
    from returnledger_dev.demo.ledger_db import own_ledger
    from returnledger_dev.demo.outputs import export_exceptions, summary
    from returnledger_dev.sandbox.harness import run_sandbox
    from returnledger_dev.sandbox.scenario import load_scenario_dict
    from returnledger_dev.scenarios import reference as scenario_reference

    t0 = time.monotonic()
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    for output in OUTPUTS:
        (out_dir / output).unlink(missing_ok=True)
    shutil.rmtree(out_dir / CLOSES_DIR, ignore_errors=True)  # this run's closes only
    scenario = load_scenario_dict(scenario_path)
    first, last = date.fromisoformat(scenario["run"]["from"]), date.fromisoformat(scenario["run"]["to"])
    closes = closes_by_day(scenario["run"], first, last)
    problem = future_days_problem(last, datetime.now(UTC))
    if problem:
        raise RuntimeError(f"cluster-demo of {scenario_path}: {problem}")
    # the DSN names the server only: this cluster demo creates a ledger database of its own there
    dsn = own_ledger(
        db.resolve_dsn(dsn), out_dir, keep=False, created_by="make cluster-demo", prefix="returnledger_cdemo"
    )
    migrate.migrate(
        dsn, runtime=ClusterSpec.ledger_role, runtime_password=os.environ.get("RETURNLEDGER_LEDGER_PASSWORD")
    )
    reference.load_reference(dsn, at=day_start(first))
    scenario_reference.load_scenario_reference(dsn, scenario, at=day_start(first))
    ops_by_day: dict[str, list[dict]] = {}
    for op in scenario.get("operations") or []:
        ops_by_day.setdefault(op["on"], []).append(op)
    progress(
        f"scenario {scenario.get('name')}: {len(scenario['rebound']['returns'])} returns, "
        f"{len(scenario['rebound']['events'])} events, days {first}..{last}, mode {mode}, {workers} worker(s)"
    )
    report: dict = {"mode": mode, "workers": workers, "runs": {}, "rerun": None}
    for folder in (DIGESTS, MAIL, "validation"):  # this run's digests, mail and results only
        shutil.rmtree(out_dir / folder, ignore_errors=True)
    with run_sandbox(scenario_path, out_dir, faults=faults) as sandbox, MailSink(out_dir / MAIL) as sink:
        spec = ClusterSpec(
            root=root or db.local_dir() / "cluster-demo",
            ledger_dsn=dsn,
            name=name,
            fresh=True,
            redis_url=redis_url or os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL,
            api_port=port or free_port(),
            workers=workers,
            load_reference=False,
            conn_overrides={
                # as runner.prepare_airflow: a client timeout below the simulator's slow answers (3 s)
                "rebound_api": {
                    "host": sandbox.rebound_url,
                    "port": None,
                    "extra": {"page_size": 500, "timeout": 2},
                },
                "amazon_sp_api": {"host": sandbox.amazon_url, "port": None, "extra": sandbox.amazon_extra},
                "smtp_default": {"host": "127.0.0.1", "port": sink.port},  # the demo's mail sink
            },
            # no local folder of this machine: every file the tasks share is in the cluster's S3 store
            # (exports/, reports/, digests/, validation/), each worker on a disk of its own (hosts.py)
            extra_env={"AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "false"},
        )
        state = start(spec, progress=progress)
        report["cluster_ready_s"] = state.get("ready_s")
        report["object_store"] = {"url": state["s3_url"], "bucket": hosts.BUCKET}
        # Vendor Central's exports land in the store, where the close run reads them
        for export in sorted(sandbox.landing_dir.glob("*.csv")):
            hosts.upload(state["s3_url"], export, f"{EXPORTS}/{export.name}")
        api = None
        try:
            api = AirflowAPI(state)
            t = time.monotonic()
            dag_ids = [SYNC, RECON, CHECKS, WEEKLY]
            wait_dag_parsed(api, dag_ids)
            unpause(api, dag_ids)
            progress(f"DAGs parsed and unpaused ({time.monotonic() - t:.0f}s)")

            def close_day(day: date) -> None:
                """The close runs of ``day``, after its sync: each writes reports/<period>/ in the store,
                copied to OUT/closes/<period>/."""
                for period in closes.get(day, []):
                    _close(api, day, period, out_dir, report, progress, state)

            if mode == "backfill":
                _month_by_backfill(api, first, last, ops_by_day, dsn, report, progress, (closes, close_day))
            else:
                digests = _Digests(api, state, out_dir, report, first, last)
                _month_by_runs(api, first, last, ops_by_day, dsn, report, progress, close_day, digests)
            report["closes"] = [period for periods in closes.values() for period in periods]
            if rerun:
                report["rerun"] = _rerun_push_credits(api, out_dir, progress)
            tis = task_instances(api, SYNC) + task_instances(api, RECON)
            ran = [t for t in tis if t.get("hostname")]  # the rest were skipped (branch, short-circuit)
            report["task_instances_by_hostname"] = dict(Counter(t["hostname"] for t in ran))
            report["task_instances_by_queue"] = dict(Counter(t.get("queue") or "?" for t in ran))
            report["task_instances_skipped"] = len(tis) - len(ran)
            progress(
                "task instances by worker (hostname): "
                + ", ".join(f"{h} {n}" for h, n in sorted(report["task_instances_by_hostname"].items()))
            )
            hosts.download(state["s3_url"], "validation/", out_dir / "validation")
        finally:
            if api is not None:
                api.close()
            stop(spec.root, progress=progress)
        sandbox.dump()
    export_exceptions(dsn, out_dir)
    s = summary(dsn)
    s["digests"] = digest_counts(out_dir / DIGESTS)
    s["mail"] = sink.summary()
    s["seconds"] = round(time.monotonic() - t0, 1)
    s["cluster"] = report
    (out_dir / "summary.json").write_text(json.dumps(s, indent=1, default=str))
    (out_dir / "cluster.json").write_text(json.dumps(report, indent=1, default=str))
    return s


def _apply_operations(dsn: str, day: date, ops_by_day: dict, progress) -> None:
    from returnledger_dev.scenarios import reference as scenario_reference

    ops = ops_by_day.get(day.isoformat(), [])
    refused = scenario_reference.apply_operations(dsn, ops, at=day_start(day), actor="operator (scenario)")
    for op in ops:
        progress(f"  {day}: operator {op['action']} {scenario_reference.operation_subject(op)}")
    for op, why in refused:
        progress(f"  {day}: operator {op['action']} REFUSED: {why}")


def _close(api, day: date, period: str, out_dir: Path, report: dict, progress, state: dict) -> None:
    """The close run of ``period`` listed under ``day``; its report (reports/<period>/ in the store, copied
    to OUT/closes/<period>/) becomes the top-level one."""
    log_dir = state["log_dir"]
    t = time.monotonic()
    run_id = trigger_day(api, RECON, day, {"close_period": period})
    run = wait_run(api, RECON, run_id)
    report["runs"][f"{RECON}:{run_id}"] = run_timing(run, task_instances(api, RECON, run_id))
    progress(f"  {day}: {RECON} close {period} {run['state']} ({time.monotonic() - t:.1f}s)")
    if run["state"] != "success":
        raise RuntimeError(f"{RECON} close run {run_id} failed; logs under {log_dir}")
    hosts.download(state["s3_url"], f"{REPORTS}/{period}/", out_dir / CLOSES_DIR / period)
    if not publish_close(out_dir, period):
        raise RuntimeError(
            f"{RECON} close run {run_id} wrote no report under {out_dir / CLOSES_DIR / period}"
        )


def _run_day(api, day: date, report: dict, progress, digests: str = "") -> None:
    """The returns_sync run listed under ``day``, created through the REST API and waited for."""
    t = time.monotonic()
    run_id = trigger_day(api, SYNC, day)
    run = wait_run(api, SYNC, run_id)
    timing = run_timing(run, task_instances(api, SYNC, run_id))
    report["runs"][f"{SYNC}:{run_id}"] = timing
    progress(
        f"  {day}: {SYNC} {run['state']} ({time.monotonic() - t:.1f}s; tasks running "
        f"{timing['tasks_running_s']}s of {timing['wall_s']}s){digests}"
    )
    if run["state"] != "success":
        raise RuntimeError(f"{SYNC} for {day} failed")


class _Digests:
    """The digest runs of make demo, in its order: the operating check after each day's sync (and close),
    the weekly review of a week on the Monday after it (before that day's sync), the last week's right
    after its Sunday. Their files are read back from the store's digests/ into OUT/digests/."""

    def __init__(self, api, state: dict, out_dir: Path, report: dict, first: date, last: date):
        from returnledger_dev.demo.month import weekly_reviews

        self.api, self.state, self.out, self.report = api, state, out_dir / DIGESTS, report
        self.weeks, self.last = weekly_reviews(first, last), last

    def _run(self, dag_id: str, kind: str, start: datetime, length: timedelta) -> int:
        body = period_run_body(kind, start, length, datetime.now(UTC))
        self.api.post(f"/dags/{dag_id}/dagRuns", body)
        run = wait_run(self.api, dag_id, body["dag_run_id"])
        self.report["runs"][f"{dag_id}:{body['dag_run_id']}"] = run_timing(
            run, task_instances(self.api, dag_id, body["dag_run_id"])
        )
        if run["state"] != "success":
            raise RuntimeError(f"{dag_id} {body['dag_run_id']} failed; logs under {self.state['log_dir']}")
        as_of = start + length
        prefix = f"{DIGESTS}/{'daily' if kind == 'checks' else 'weekly'}-{as_of:%Y-%m-%d}"
        hosts.download(self.state["s3_url"], prefix, self.out, relative_to=f"{DIGESTS}/")
        return digests_of(self.out, "daily" if kind == "checks" else "weekly", as_of)

    def weekly_before(self, day: date) -> int | None:
        got = None
        for week in self.weeks:  # the review of the week that ended last night starts Monday 07:00
            if week + timedelta(days=7) == day:
                got = self._run(WEEKLY, "weekly", day_start(week) + timedelta(hours=7), timedelta(days=7))
        return got

    def after(self, day: date) -> tuple[int, int | None]:
        """The operating check of ``day`` (after its sync and closes), then, on the last day, the review
        of the week that ends with it; (daily digests, weekly reviews or None)."""
        n = self._run(CHECKS, "checks", day_start(day) + timedelta(hours=7), timedelta(days=1))
        weekly = None
        for week in self.weeks:  # the scenario ends on a Sunday: its last week's review starts right after
            if day == self.last and week + timedelta(days=6) == day:
                weekly = self._run(WEEKLY, "weekly", day_start(week) + timedelta(hours=7), timedelta(days=7))
        return n, weekly


def _month_by_runs(api, first, last, ops_by_day, dsn, report, progress, close_day, digests=None) -> None:
    day = first
    while day <= last:
        _apply_operations(dsn, day, ops_by_day, progress)
        weekly = digests.weekly_before(day) if digests else None
        t = time.monotonic()
        _run_day(api, day, report, progress if digests is None else (lambda _text: None))
        close_day(day)
        if digests is not None:
            n, last_weekly = digests.after(day)
            weekly = last_weekly if last_weekly is not None else weekly
            run = report["runs"][f"{SYNC}:day__{day.isoformat()}"]
            progress(
                f"  {day}: {SYNC} success ({run['wall_s']}s wall, tasks running {run['tasks_running_s']}s), "
                f"{n} digests"
                + (f", weekly review {weekly}" if weekly is not None else "")
                + f" ({time.monotonic() - t:.1f}s)"
            )
        day += timedelta(days=1)


def backfill_plan(
    first: date, last: date, op_days, close_days, now: datetime
) -> list[tuple[date, date, bool]]:
    """The stretches of days ``(start, end, by_backfill)`` of a backfill-mode run, in order.

    A stretch starts on the first day, on each day with operator actions (applied before its run) and on
    the day after each close (a close follows its day's run). Airflow backfills only runs whose data
    interval has ended by ``now``; the days after that, which a scenario may reach, are runs made one by one.
    """
    after_close = [d + timedelta(days=1) for d in close_days if first <= d < last]
    starts = sorted({first, *(d for d in op_days if first <= d <= last), *after_close})
    last_ended = now.astimezone(UTC).date() - timedelta(days=1)  # D's interval ends at D+1 00:00
    plan = []
    for i, start in enumerate(starts):
        end = (starts[i + 1] - timedelta(days=1)) if i + 1 < len(starts) else last
        if start <= last_ended < end:
            plan += [(start, last_ended, True), (last_ended + timedelta(days=1), end, False)]
        else:
            plan.append((start, end, end <= last_ended))
    return plan


def _month_by_backfill(api, first, last, ops_by_day, dsn, report, progress, closing) -> None:
    """Backfills between operator actions and closes (backfill_plan): an operation for day D is applied
    before the run for D starts, and a close made on day D follows the run for D."""
    op_days = [date.fromisoformat(d) for d in ops_by_day]
    closes, close_day = closing  # {day: periods closed}, and what closes them
    for seg_start, seg_end, by_backfill in backfill_plan(first, last, op_days, closes, datetime.now(UTC)):
        _apply_operations(dsn, seg_start, ops_by_day, progress)
        if not by_backfill:  # not ended yet on this machine's clock: no backfill takes these days
            day = seg_start
            while day <= seg_end:
                if day > seg_start:
                    _apply_operations(dsn, day, ops_by_day, progress)
                _run_day(api, day, report, progress)
                close_day(day)
                day += timedelta(days=1)
            continue
        t = time.monotonic()
        run_ids = backfill(api, SYNC, seg_start, seg_end)
        for run_id in run_ids:
            run = api.get(f"/dags/{SYNC}/dagRuns/{run_id}")
            report["runs"][f"{SYNC}:{run_id}"] = run_timing(run, task_instances(api, SYNC, run_id))
            if run["state"] != "success":
                raise RuntimeError(f"{SYNC} {run_id} failed")
        progress(
            f"  {seg_start}..{seg_end}: backfill of {len(run_ids)} {SYNC} run(s) "
            f"({time.monotonic() - t:.1f}s)"
        )
        close_day(seg_end)


def credit_posts_by_run(api, out_dir: Path) -> dict[str, int]:
    """Credit-note POSTs the simulator logged while each returns_sync run's push_credits was running."""
    try:
        rows = [
            json.loads(x) for x in (out_dir / "amazon_requests.jsonl").read_text().splitlines() if x.strip()
        ]
    except OSError:
        rows = []
    posts = [_parse(r["at"]) for r in rows if is_submission(r) and "/invoices" in r["path"]]
    out = {}
    for ti in task_instances(api, SYNC):
        if ti["task_id"] == "push_credits" and ti.get("start_date") and ti.get("end_date"):
            s, e = _parse(ti["start_date"]), _parse(ti["end_date"])
            out[ti["dag_run_id"]] = sum(1 for at in posts if s <= at <= e)
    return out


def _rerun_push_credits(api, out_dir: Path, progress) -> dict:
    """Clear ``push_credits`` of the day that sent the most credit notes and let it run again: no new
    submission (a token request it may make is not one)."""
    credit_posts = credit_posts_by_run(api, out_dir)
    if not credit_posts:
        raise RuntimeError("no returns_sync run has a finished push_credits to clear")
    run_id = max(sorted(credit_posts), key=lambda r: credit_posts[r])
    ti = api.get(f"/dags/{SYNC}/dagRuns/{run_id}/taskInstances/push_credits")
    before_all, before_credits = amazon_submissions(out_dir), amazon_submissions(out_dir, "/invoices")
    clear_task(api, SYNC, run_id, "push_credits")
    deadline = time.monotonic() + 600
    while True:
        again = api.get(f"/dags/{SYNC}/dagRuns/{run_id}/taskInstances/push_credits")
        if again["try_number"] > ti["try_number"] and again["state"] in ("success", "failed"):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"push_credits of {run_id} did not run again: {again['state']}")
        time.sleep(0.5)
    run = wait_run(api, SYNC, run_id)
    result = {
        "run_id": run_id,
        "credit_posts_first_time": credit_posts.get(run_id),
        "try_number": [ti["try_number"], again["try_number"]],
        "state": again["state"],
        "hostname": [ti.get("hostname"), again.get("hostname")],
        "run_state": run["state"],
        "new_submissions": amazon_submissions(out_dir) - before_all,
        "new_credit_posts": amazon_submissions(out_dir, "/invoices") - before_credits,
    }
    progress(
        f"  rerun: cleared push_credits of {run_id} (first run sent {result['credit_posts_first_time']} "
        f"credit POSTs) -> try {result['try_number'][1]} {result['state']} on {result['hostname'][1]}: "
        f"{result['new_submissions']} new submission(s) to Amazon"
    )
    if again["state"] != "success" or result["new_submissions"]:
        raise RuntimeError(f"the rerun of push_credits was not a no-op: {result}")
    return result


LOG_NAME = "cluster-demo.log"


@contextlib.contextmanager
def quiet_screen(log_path: Path) -> Iterator[TextIO]:
    """``make demo``'s quiet screen: what is written to the yielded stream goes to the screen; everything
    else written to stdout/stderr (logging with the REST request lines, the embedded server's start-up,
    child processes) goes to ``log_path``. Redirected at the file descriptors, so handlers made earlier
    and subprocesses follow too."""
    import logging

    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    screen = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", encoding="utf-8") as log:
        root, level = logging.getLogger(), logging.getLogger().level
        streams = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
        # handlers that print to the terminal give way to one into the log (no line twice in the log)
        to_screen = [h for h in root.handlers if type(h) is logging.StreamHandler and h.stream in streams]
        into_log = logging.StreamHandler(log)
        into_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        for h in to_screen:
            root.removeHandler(h)
        root.addHandler(into_log)
        root.setLevel(logging.INFO)
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield screen
        finally:
            root.removeHandler(into_log)
            root.setLevel(level)
            for h in to_screen:
                root.addHandler(h)
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            screen.close()


def _cmd_cluster_demo(a) -> int:
    from returnledger_dev.demo.outputs import print_summary

    out = Path(a.out).resolve()
    log_path = out / LOG_NAME
    log_path.unlink(missing_ok=True)
    with quiet_screen(log_path) as screen:
        say = lambda text: print(text, file=screen)  # noqa: E731
        say(f"returnledger cluster-demo: {a.scenario} -> {out}/  (everything but this screen: {log_path})")
        try:
            s = run_cluster_scenario(
                Path(a.scenario),
                Path(a.out),
                faults=not a.no_faults,
                port=a.port,
                workers=a.workers,
                mode=a.mode,
                rerun=not a.no_rerun,
                root=Path(a.root) if a.root else None,
                name=a.name,
                progress=say,
            )
        except Exception as e:
            say(f"cluster-demo failed: {type(e).__name__}: {e}\n(the full log: {log_path})")
            raise
        print_summary(s, out=screen)
        say(f"\noutputs in {out} ({s['seconds']} s); cluster facts in cluster.json; log: {log_path}")
    return 0


def register(subparsers) -> None:
    """``returnledger cluster-demo``: a scenario through the real scheduler on a fresh local cluster."""
    p = subparsers.add_parser(
        "cluster-demo",
        help="a whole scenario month through the real scheduler on the local "
        "Celery cluster (make cluster-demo)",
    )
    p.add_argument("--scenario", required=True)
    p.add_argument("--out", default="out-cluster")
    p.add_argument("--no-faults", action="store_true")
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--mode", choices=["runs", "backfill"], default="runs")
    p.add_argument("--no-rerun", action="store_true")
    p.add_argument("--root", default=None, help="the cluster's state folder (default .local/cluster-demo)")
    p.add_argument(
        "--name",
        default="demo",
        help="names the cluster's Celery queue and workers (clusters sharing one Redis need different names)",
    )
    p.set_defaults(func=_cmd_cluster_demo)
