"""A whole scenario through Airflow (see ``run_scenario``): the days, the weekly reviews and the
month-end closes (one month or several), in the order the scheduler would run them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from datetime import date, timedelta
from pathlib import Path

from returnledger.store import db, migrate
from returnledger_dev.demo.airflow_run import (
    TaskErrors,
    covering_interval,
    day_start,
    load_dag,
    prepare_airflow,
    run_checked,
    scenario_day,
)
from returnledger_dev.demo.ledger_db import own_ledger
from returnledger_dev.demo.mail import MailSink
from returnledger_dev.demo.outputs import (
    CLOSES_DIR,
    RUN_OUTPUTS,
    day_line,
    digest_counts,
    digests_of,
    export_exceptions,
    ledger_counts,
    publish_close,
    shown,
    summary,
)

log = logging.getLogger(__name__)


def weekly_reviews(first: date, last: date) -> list[date]:
    """The Mondays W whose weekly review the demo runs: weeks [W 07:00, W+7 07:00) the scenario covers.

    W must be on or after the first scenario day (a week the scenario starts in the middle of happened
    partly before the ledger existed) and its Sunday W+6, whose sync closes the week's data, on or before
    the last. The run starts, like the scheduler's, on Monday W+7 at 07:00: before that Monday's sync.
    """
    w = first + timedelta(days=(7 - first.weekday()) % 7)
    weeks = []
    while w + timedelta(days=6) <= last:
        weeks.append(w)
        w += timedelta(days=7)
    return weeks


def closes_by_day(run: dict, start: date, end: date) -> dict[date, list[str]]:
    """The periods closed on each day from ``start`` to ``end``, in the scenario's order.

    A close of ``run.closes`` (or the one close of ``close_period`` on ``to``) runs on its day ``on``, after
    that day's sync; a close on a day outside the days run is not made.
    """
    from returnledger_dev.sandbox.scenario import close_runs

    out: dict[date, list[str]] = {}
    for period, on in close_runs(run):
        if start <= on <= end:
            out.setdefault(on, []).append(period)
    return out


def run_scenario(
    scenario_path: Path,
    out_dir: Path,
    *,
    dsn: str | None = None,
    keep_db: bool = False,
    faults: bool = True,
    days: tuple[date, date] | None = None,
    close: bool = True,
    progress=print,
    stage=None,
) -> dict:
    """Run a whole scenario; returns the summary. Output files land in ``out_dir``.

    ``progress(text)`` gets the screen lines (one per day); ``stage(kind, **info)``, when given, hears where
    the run is ("start-up", "day" with day/n/of, "close" with day/period). Each close of the scenario runs
    after its day's sync and writes OUT/closes/<period>/; the top-level report is the last close's.
    """
    from returnledger.reference import load as reference
    from returnledger_dev.sandbox.harness import run_sandbox
    from returnledger_dev.sandbox.scenario import load_scenario_dict
    from returnledger_dev.scenarios import reference as scenario_reference

    stage = stage or (lambda kind, **info: None)
    stage("start-up")
    t0 = time.monotonic()
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in RUN_OUTPUTS:
        (out_dir / name).unlink(missing_ok=True)
    digest_dir, mail_dir = out_dir / "digests", out_dir / "mail"
    for folder in (digest_dir, mail_dir, out_dir / CLOSES_DIR):  # this run's digests, mail and closes only
        shutil.rmtree(folder, ignore_errors=True)
    # the DSN names the server only: this demo creates a ledger database of its own there (or, with keep_db,
    # continues the one an earlier demo into this OUT created) and never wipes one it did not create
    dsn = own_ledger(
        db.resolve_dsn(dsn), out_dir, keep=keep_db, created_by="make demo", prefix="returnledger_demo"
    )
    migrate.migrate(dsn)
    scenario = load_scenario_dict(scenario_path)
    first, last = scenario_day(scenario["run"]["from"]), scenario_day(scenario["run"]["to"])
    start, end = days or (first, last)
    if not keep_db:
        reference.load_reference(dsn, at=day_start(first))
        scenario_reference.load_scenario_reference(dsn, scenario, at=day_start(first))
    n_days = (end - start).days + 1
    progress(
        f"  scenario {scenario.get('name')}: {len(scenario['rebound']['returns'])} returns, "
        f"{len(scenario['rebound']['events'])} events, {n_days} days {start}..{end}"
    )
    ops_by_day: dict[str, list[dict]] = {}
    for op in scenario.get("operations") or []:
        ops_by_day.setdefault(op["on"], []).append(op)
    weeks = weekly_reviews(first, last)
    closes = closes_by_day(scenario["run"], start, end) if close else {}
    with run_sandbox(scenario_path, out_dir, faults=faults) as sandbox, MailSink(mail_dir) as sink:
        home = Path(os.environ.get("RETURNLEDGER_AIRFLOW_HOME") or db.local_dir() / "airflow-demo")
        prepare_airflow(dsn, sandbox, home, out_dir=out_dir, fresh=not keep_db, smtp_port=sink.port)
        sync_dag, checks_dag, weekly_dag = (
            load_dag(d) for d in ("returns_sync", "returns_operating_checks", "returns_weekly_review")
        )
        errors = TaskErrors().attach()
        for chatty in ("mail.log", "great_expectations._docs_decorators"):  # per message / per import noise
            logging.getLogger(chatty).setLevel(logging.WARNING)
        progress(
            f"  ready in {time.monotonic() - t0:.0f}s: ledger, simulators, mail sink on "
            f"127.0.0.1:{sink.port}, Airflow"
        )

        recon_dag = load_dag("returns_reconciliation") if closes else None

        def review(week: date) -> int:
            run_checked(weekly_dag, week, errors)
            return digests_of(digest_dir, "weekly", covering_interval(weekly_dag, week)[1])

        def close_month(period: str, day: date) -> tuple[str, bool]:
            """The close run of ``period`` on ``day``; its report is the top-level one until the next."""
            stage("close", day=day.isoformat(), period=period)
            run_checked(recon_dag, day, errors, {"close_period": period})
            written = publish_close(out_dir, period)
            log.info("%s: close of %s, report %s", day, period, "written" if written else "NOT written")
            return period, written

        day = start
        while day <= end:
            stage("day", day=day.isoformat(), n=(day - start).days + 1, of=n_days)
            t, before = time.monotonic(), ledger_counts(dsn)
            ops = ops_by_day.get(day.isoformat(), [])
            refused = scenario_reference.apply_operations(
                dsn, ops, at=day_start(day), actor="operator (scenario)"
            )
            for op in ops:
                log.info("%s: operator %s %s", day, op["action"], scenario_reference.operation_subject(op))
            for op, why in refused:
                log.warning("%s: operator %s REFUSED: %s", day, op["action"], why)
            weekly = None
            for week in weeks:  # the review of the week that ended last night starts Monday 07:00
                if week + timedelta(days=7) == day:
                    weekly = review(week)
            run_checked(sync_dag, day, errors)
            closed = [close_month(period, day) for period in closes.get(day, [])]
            run_checked(checks_dag, day, errors)
            digests = digests_of(digest_dir, "daily", covering_interval(checks_dag, day)[1])
            for week in weeks:  # the scenario ends on a Sunday: its last week's review starts right after
                if day == end and week + timedelta(days=6) == day:
                    weekly = review(week)
            after = ledger_counts(dsn)
            stage("day-done", day=day.isoformat(), n=(day - start).days + 1, of=n_days)  # before its line
            progress(
                day_line(
                    day,
                    tuple(a - b for a, b in zip(after, before)),
                    digests=digests,
                    weekly=weekly,
                    operator=len(ops),
                    refused=len(refused),
                    seconds=time.monotonic() - t,
                    closes=closed,
                )
            )
            day += timedelta(days=1)
        report = out_dir / "month_end_report.html"
        report = report if closes and report.exists() else None
        sandbox.dump()
    export_exceptions(dsn, out_dir)
    s = summary(dsn)
    s["digests"] = digest_counts(digest_dir)
    s["mail"] = sink.summary()
    s["seconds"] = round(time.monotonic() - t0, 1)
    s["outputs"] = {
        "report": shown(report) if report else None,
        "closes": [period for periods in closes.values() for period in periods],
        "closes_dir": shown(out_dir / CLOSES_DIR),
        "digests": shown(digest_dir),
        "mail": shown(mail_dir),
        "log": shown(out_dir / "demo.log"),
    }
    (out_dir / "summary.json").write_text(json.dumps(s, indent=1, default=str))
    return s
