"""Runs of this project's DAGs in-process (``dag.test``) for the demo: an isolated Airflow, the run
that covers a scenario day, and a failed run told as its failed tasks and cause.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from datetime import UTC, date, datetime
from pathlib import Path

from returnledger.store import db
from returnledger_dev import scratch_db
from returnledger_dev.demo.outputs import CLOSES_DIR
from returnledger_dev.local_airflow import ensure_database, init_metadata


def scenario_day(text: str) -> date:
    """A scenario file's day (YYYY-MM-DD)."""
    return date.fromisoformat(text)


def day_start(d: date) -> datetime:
    """00:00 UTC of a scenario day: where its daily run's window starts."""
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


def prepare_airflow(
    dsn: str, sandbox, home: Path, *, out_dir: Path, fresh: bool = True, smtp_port: int | None = None
) -> None:
    """Point an isolated Airflow (own home and metadata database) at this run's ledger, sandbox, mail sink."""
    from returnledger_dev.settings import apply_env, load_settings

    home.mkdir(parents=True, exist_ok=True)
    ledger_conn = json.loads(scratch_db.airflow_connection_json(dsn))
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
    # each close run writes <report base>/<period>/: OUT/closes/<period>/ (scenarios README, outputs)
    os.environ["AIRFLOW_VAR_RETURNLEDGER_REPORT_BASE"] = (out_dir / CLOSES_DIR).as_uri()
    # the object store is OUT itself: digests in OUT/digests, validation results in OUT/validation (the
    # exports and reports above keep the places the scenarios README names; make cluster-demo uses S3)
    os.environ["AIRFLOW_VAR_RETURNLEDGER_OBJECT_STORE"] = out_dir.as_uri()
    if "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" not in os.environ:
        name = _metadata_database(dsn)
        meta = scratch_db.with_database(dsn, name)
        ensure_database(dsn, name, fresh=fresh)
        os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = scratch_db.sqlalchemy_url(meta)
    init_metadata(settings["pools"])


def _metadata_database(dsn: str) -> str:
    """Airflow's metadata database beside the ledger: ``returnledger_airflow`` beside the default database,
    ``<ledger>_airflow`` beside any other, so demos on one shared server do not drop each other's."""
    import psycopg

    ledger = psycopg.conninfo.conninfo_to_dict(dsn).get("dbname") or "postgres"
    return "returnledger_airflow" if ledger == "postgres" else f"{ledger}_airflow"[:63]


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
    info = timetable.next_dagrun_info(
        last_automated_data_interval=None,
        restriction=TimeRestriction(earliest=day_start(day), latest=None, catchup=True),
    )
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


class TaskErrors(logging.Handler):
    """Keeps what returnledger.airflow.notifiers.log_failure logs when a task fails (dag.test runs tasks
    in-process)."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.messages.append(record.getMessage())

    def attach(self) -> TaskErrors:
        logger = logging.getLogger("returnledger.airflow.notifiers")
        logger.disabled = False  # Airflow's logging config may disable loggers that existed before it
        logger.addHandler(self)
        return self


def _failed_tasks(dag_id: str, run_id: str | None) -> list[str]:
    try:
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            rows = session.execute(
                select(TaskInstance.task_id, TaskInstance.map_index, TaskInstance.state).where(
                    TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id
                )
            ).all()
    except Exception:
        return []
    return sorted(
        f"{t}[{m}]" if m is not None and m >= 0 else t
        for t, m, s in rows
        if str(getattr(s, "value", s)) in ("failed", "upstream_failed")
    )


def run_checked(dag, day: date, errors: TaskErrors, conf: dict | None = None) -> None:
    """run_dag, raising DemoFailure (failed tasks, the task's exception) unless the run succeeded."""
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
