"""From a run to what it did: the run's identity in the ledger, and the tasks' extra links to the console.

**Identity.** Inside a running task, ``run_dsn(dsn)`` adds the task instance's identity (dag_id, run_id,
task_id, map_index, try_number) to the ledger DSN as libpq startup options (``-c returnledger.run_id=...``).
``returnledger.airflow.hooks.ledger_dsn`` calls it, so every connection a task opens carries its run,
whatever business code opens it, and the ``run_*`` columns of ``ledger.exception``, ``ledger.credit_note``
and ``ledger.submission_attempt`` take it by default (migration 0022_run_links). Outside a task (the
api-server, the CLI) the DSN is returned as it is.

**Extra links.** ``RaisedExceptionsLink`` ("exceptions raised by this run") and ``SentCreditNotesLink``
("credit notes sent by this run") are global operator extra links (the console plugin registers them): the
api-server asks them for the URL of a task instance of ``returns_sync`` or ``returns_reconciliation``; they
answer the console's run page filtered to that task instance's run and task
(``/returnledger/runs?dag_id=..&run_id=..&task_id=..``) when the ledger records that task raising an
exception (sending a credit note) in that run, and nothing otherwise, so the UI shows the link only on the
tasks that did.
"""

from __future__ import annotations

import logging
from urllib.parse import urlencode

from airflow.sdk import BaseOperatorLink

log = logging.getLogger(__name__)

#: the DAGs whose tasks raise exceptions and send credit notes
RUN_DAGS = ("returns_sync", "returns_reconciliation")
#: the session settings a task's connections carry, in the order of the run_* columns
SETTINGS = ("dag_id", "run_id", "task_id", "map_index", "try_number")
#: where the console is mounted on the api-server (plugins/returnledger_console.py)
CONSOLE_PREFIX = "/returnledger"


def _escape(value: str) -> str:
    """A value inside libpq's ``options``: backslash and space escaped by a backslash."""
    return value.replace("\\", "\\\\").replace(" ", "\\ ")


def identity_options(identity: dict) -> str:
    """``-c returnledger.<name>=<value>`` for each known part of ``identity``."""
    return " ".join(
        f"-c returnledger.{name}={_escape(str(identity[name]))}"
        for name in SETTINGS
        if identity.get(name) is not None
    )


def current_identity() -> dict | None:
    """The running task instance's identity, None outside a task."""
    try:
        from airflow.sdk import get_current_context

        ti = get_current_context()["ti"]
    except Exception:  # no task is running here (api-server, CLI, tests)
        return None
    return {name: getattr(ti, name, None) for name in SETTINGS}


def run_dsn(dsn: str, identity: dict | None = None) -> str:
    """``dsn`` with the task's identity as startup options (kept beside any options it had)."""
    import psycopg

    identity = identity if identity is not None else current_identity()
    if not identity or not identity.get("run_id"):
        return dsn
    parts = psycopg.conninfo.conninfo_to_dict(dsn)
    parts["options"] = " ".join(str(p) for p in (parts.get("options"), identity_options(identity)) if p)
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in parts.items()})


def console_run_url(dag_id: str, run_id: str, task_id: str | None = None, what: str | None = None) -> str:
    """The console's page of what a run (one task of it, when given) did."""
    query = {"dag_id": dag_id, "run_id": run_id}
    if task_id:
        query["task_id"] = task_id
    if what:
        query["show"] = what
    return f"{CONSOLE_PREFIX}/runs?{urlencode(query)}"


def _did(what: str, dag_id: str, run_id: str, task_id: str) -> bool:
    """Whether the ledger records this task of this run raising exceptions / sending credit notes."""
    from returnledger.console.app import default_dsn
    from returnledger.console.runs import task_did
    from returnledger.store.db import connect

    with connect(default_dsn()) as conn:
        conn.execute("SET LOCAL statement_timeout = '2s'")
        return task_did(conn, what, dag_id, run_id, task_id)


class _RunLink(BaseOperatorLink):
    what = ""

    def get_link(self, operator, *, ti_key) -> str:
        dag_id = getattr(ti_key, "dag_id", None) or getattr(operator, "dag_id", None)
        if dag_id not in RUN_DAGS:
            return ""
        try:
            if not _did(self.what, dag_id, ti_key.run_id, ti_key.task_id):
                return ""
        except Exception as exc:  # the task page never breaks because of the ledger
            log.warning("%s: the ledger could not be read (%s: %s)", self.name, type(exc).__name__, exc)
            return ""
        return console_run_url(dag_id, ti_key.run_id, ti_key.task_id, self.what)


class RaisedExceptionsLink(_RunLink):
    name = "exceptions raised by this run"
    what = "exceptions"


class SentCreditNotesLink(_RunLink):
    name = "credit notes sent by this run"
    what = "credit_notes"
