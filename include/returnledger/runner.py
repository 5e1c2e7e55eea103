"""The scenario runner behind ``make demo``: a whole month through Airflow itself.

Starts from a clean ledger (unless told to keep it), loads reference data from
the scenario, starts both simulators, then runs ``returns_sync`` with
``dag.test()`` for every day of the scenario (applying the scenario's manual
operations through the same commands an operator uses), then the month-end
close run of ``returns_reconciliation``, and writes the run outputs of
scenarios/README.md into the output folder.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import sys
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from returnledger.store import db, migrate

log = logging.getLogger(__name__)

EXCEPTION_COLUMNS = ["exception_id", "type", "owner", "status", "return_id", "line", "sku", "amazon_return_id",
                     "opened_at", "resolved_at", "detail"]


def _day(text: str) -> date:
    return date.fromisoformat(text)


def _utc(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=timezone.utc)


def prepare_airflow(dsn: str, sandbox, home: Path, *, out_dir: Path, fresh: bool = True) -> None:
    """Point an isolated Airflow (own home, own metadata database) at this run's ledger and sandbox."""
    from returnledger.settings import apply_env, load_settings

    home.mkdir(parents=True, exist_ok=True)
    ledger_conn = json.loads(db.airflow_connection_json(dsn))
    overrides = {
        "returns_db": ledger_conn,
        # a client timeout below the simulator's slow answers (3 s), so injected timeouts really time out
        "rebound_api": {"host": sandbox.rebound_url, "port": None, "extra": {"page_size": 500, "timeout": 2}},
        "amazon_sp_api": {"host": sandbox.amazon_url, "port": None, "extra": sandbox.amazon_extra},
    }
    settings = load_settings(overrides=overrides)
    apply_env(settings)
    os.environ["AIRFLOW_HOME"] = str(home)
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "false")
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(db.project_root() / "dags")
    os.environ.setdefault("AIRFLOW__CORE__PARALLELISM", "4")
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    os.environ["AIRFLOW_VAR_RETURNLEDGER_EXPORT_BASE"] = sandbox.landing_dir.as_uri()
    os.environ["AIRFLOW_VAR_RETURNLEDGER_REPORT_BASE"] = out_dir.as_uri()
    os.environ["AIRFLOW_VAR_RETURNLEDGER_DIGEST_DIR"] = str(out_dir / "digests")
    os.environ["RETURNLEDGER_VALIDATION_DIR"] = str(out_dir / "validation")
    if "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" not in os.environ:
        meta = db.with_database(dsn, "returnledger_airflow")
        _ensure_database(dsn, "returnledger_airflow", fresh=fresh)
        os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = db.sqlalchemy_url(meta)
    _airflow_db_migrate(settings["pools"])


def _ensure_database(dsn: str, name: str, *, fresh: bool) -> None:
    """Airflow's metadata database beside the ledger; a clean run starts it empty too (no old DAG runs)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        if fresh:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def _airflow_db_migrate(pools: list[dict]) -> None:
    """Create Airflow's own metadata tables (once per metadata database) and the project's pools."""
    from airflow import settings as af_settings
    from airflow.models.pool import Pool
    from airflow.utils import db as af_db

    af_settings.configure_orm()
    af_db.initdb()
    for pool in pools:
        Pool.create_or_update_pool(pool["name"], pool["slots"], pool["description"], include_deferred=False)


def load_dag(dag_id: str):
    """Parse one DAG file the way Airflow does (DagBag), failing loudly on import errors."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(db.project_root() / "dags" / f"{dag_id}.py"))
    if dag_id not in bag.dags:
        raise RuntimeError(f"DAG {dag_id} could not be loaded: {bag.import_errors}")
    return bag.dags[dag_id]


def covering_interval(dag, day: date) -> tuple[datetime, datetime]:
    """The data interval of the scheduled run that covers ``day``: the first period starting on that day.

    For the daily DAGs that is [D 00:00, D+1 00:00); for the operating checks [D 07:00, D+1 07:00).
    """
    from airflow.serialization.encoders import coerce_to_core_timetable
    from airflow.timetables.base import TimeRestriction

    timetable = coerce_to_core_timetable(dag.timetable)
    info = timetable.next_dagrun_info(last_automated_data_interval=None,
                                      restriction=TimeRestriction(earliest=_utc(day), latest=None, catchup=True))
    if info is None or info.data_interval is None:
        raise RuntimeError(f"{dag.dag_id} has no scheduled run covering {day}")
    return info.data_interval.start, info.data_interval.end


def run_dag(dag, day: date, conf: dict | None = None) -> str:
    """Run, in-process, the run of ``dag`` that covers ``day``; returns the final state.

    ``dag.test()`` infers a manual run's data interval as the last complete period before its
    logical date, so the run that covers day D (data interval [D, D+1)) is asked for by its
    interval end, D+1: the same interval, and so the same window and batch, as the scheduler's
    run listed under D.
    """
    start, end = covering_interval(dag, day)
    dr = dag.test(logical_date=end, run_conf=conf or None)
    got = (getattr(dr, "data_interval_start", None), getattr(dr, "data_interval_end", None))
    if got[0] is not None and (got[0], got[1]) != (start, end):
        raise RuntimeError(f"{dag.dag_id} for {day}: expected interval {start}..{end}, the run got {got}")
    return str(getattr(dr, "state", "unknown"))


def export_exceptions(dsn: str, out_dir: Path) -> int:
    with db.connect(dsn) as conn:
        # a line's exception is keyed by return id and line; the Amazon record it cites stays in the detail,
        # so amazon_return_id names only exceptions about an Amazon record itself (e.g. DARK_RETURN)
        cols = [("CASE WHEN return_id IS NULL THEN amazon_return_id END" if c == "amazon_return_id" else c)
                for c in EXCEPTION_COLUMNS]
        rows = conn.execute(f"SELECT {', '.join(cols)} FROM ledger.exception ORDER BY exception_id").fetchall()
    with (out_dir / "exceptions.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(EXCEPTION_COLUMNS)
        for r in rows:
            w.writerow(["" if v is None else (v.isoformat() if isinstance(v, datetime) else v) for v in r])
    return len(rows)


def summary(dsn: str) -> dict:
    with db.connect(dsn) as conn:
        states = dict(conn.execute("SELECT state, count(*) FROM ledger.return_line GROUP BY 1 ORDER BY 1").fetchall())
        exc = conn.execute("""SELECT type, owner, status, count(*) FROM ledger.exception
                              GROUP BY 1, 2, 3 ORDER BY 1, 2, 3""").fetchall()
        credits = conn.execute("""SELECT count(DISTINCT document_id), COALESCE(sum(quantity), 0),
                                         COALESCE(sum(quantity * unit_amount), 0)
                                  FROM ledger.amazon_submission WHERE kind = 'CREDIT_NOTE'
                                  AND status IN ('SUBMITTED', 'ACCEPTED', 'FAILED')""").fetchone()
        accepted = conn.execute("""SELECT COALESCE(sum(quantity * unit_amount), 0) FROM ledger.amazon_submission
                                   WHERE kind = 'CREDIT_NOTE' AND status = 'ACCEPTED'""").fetchone()[0]
        recon = dict(conn.execute("""SELECT recon_status, count(*) FROM ledger.recon_result
                                     WHERE period NOT LIKE 'daily:%%' GROUP BY 1 ORDER BY 1""").fetchall())
    return {"lines_by_state": states,
            "exceptions": [{"type": t, "owner": o, "status": s, "count": n} for t, o, s, n in exc],
            "credit_notes_sent": credits[0], "units_credited": int(credits[1]),
            "credited_gbp": str(credits[2]), "accepted_gbp": str(accepted), "recon": recon}


def print_summary(s: dict, out=sys.stdout) -> None:
    p = lambda *a: print(*a, file=out)  # noqa: E731
    p("\n== returnledger run summary ==")
    p("Lines by state:")
    for k, v in s["lines_by_state"].items():
        p(f"  {k:<18}{v:>6}")
    p("Exceptions by type / owner / status:")
    for e in s["exceptions"]:
        p(f"  {e['type']:<22}{e['owner']:<13}{e['status']:<10}{e['count']:>5}")
    p(f"Credit notes sent: {s['credit_notes_sent']}  units credited: {s['units_credited']}  "
      f"£ credited: {s['credited_gbp']}  £ accepted by Amazon: {s['accepted_gbp']}")
    if s["recon"]:
        p("Month-end reconciliation: " + ", ".join(f"{k} {v}" for k, v in s["recon"].items()))


def run_scenario(scenario_path: Path, out_dir: Path, *, dsn: str | None = None, keep_db: bool = False,
                 faults: bool = True, days: tuple[date, date] | None = None, close: bool = True,
                 progress=print) -> dict:
    """Run a whole scenario; returns the summary. Output files land in ``out_dir``."""
    from returnledger import reference
    from returnledger.sandbox.harness import run_sandbox
    from returnledger.sandbox.scenario import load_scenario_dict

    t0 = time.monotonic()
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("amazon_requests.jsonl", "rebound_created_returns.jsonl", "exceptions.csv",
                 "month_end_report.csv", "month_end_report.html", "amazon_inventory.csv"):
        (out_dir / name).unlink(missing_ok=True)
    dsn = db.resolve_dsn(dsn)
    if not keep_db:
        migrate.reset(dsn)
    migrate.migrate(dsn)
    scenario = load_scenario_dict(scenario_path)
    first, last = _day(scenario["run"]["from"]), _day(scenario["run"]["to"])
    start, end = days or (first, last)
    if not keep_db:
        reference.load_reference(dsn, at=_utc(first))
        reference.load_scenario_reference(dsn, scenario, at=_utc(first))
    progress(f"scenario {scenario.get('name')}: {len(scenario['rebound']['returns'])} returns, "
             f"{len(scenario['rebound']['events'])} events, days {start}..{end}")
    ops_by_day: dict[str, list[dict]] = {}
    for op in scenario.get("operations") or []:
        ops_by_day.setdefault(op["on"], []).append(op)
    with run_sandbox(scenario_path, out_dir, faults=faults) as sandbox:
        home = Path(os.environ.get("RETURNLEDGER_AIRFLOW_HOME") or db.local_dir() / "airflow-demo")
        prepare_airflow(dsn, sandbox, home, out_dir=out_dir, fresh=not keep_db)
        sync_dag = load_dag("returns_sync")
        day = start
        while day <= end:
            for op in ops_by_day.get(day.isoformat(), []):
                reference.apply_operation(dsn, op, at=_utc(day), actor="operator (scenario)")
                progress(f"  {day}: operator {op['action']} {op.get('rebound_reason') or op.get('sku')}")
            t = time.monotonic()
            state = run_dag(sync_dag, day)
            progress(f"  {day}: returns_sync {state} ({time.monotonic() - t:.1f}s)")
            if "success" not in state:
                raise RuntimeError(f"returns_sync failed for {day}; see the task logs above")
            day += timedelta(days=1)
        period = scenario["run"]["close_period"]
        if close:
            recon_dag = load_dag("returns_reconciliation")
            state = run_dag(recon_dag, last, {"close_period": period})
            progress(f"  {last}: returns_reconciliation close {period} {state}")
            if "success" not in state:
                raise RuntimeError("returns_reconciliation failed; see the task logs above")
            for name in ("month_end_report.csv", "month_end_report.html"):
                report = out_dir / period / name  # the close run writes <report base>/<period>/
                if report.exists():
                    shutil.copyfile(report, out_dir / name)
        sandbox.dump()
    export_exceptions(dsn, out_dir)
    s = summary(dsn)
    s["seconds"] = round(time.monotonic() - t0, 1)
    (out_dir / "summary.json").write_text(json.dumps(s, indent=1, default=str))
    return s
