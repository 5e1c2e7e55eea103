"""From a run to what it did: the exceptions a run raised and the credit notes it sent, each with the task
instance that did it and a link back to that task's log in the Airflow UI.

The rows name their run in their ``run_*`` columns (migration 0022_run_links; written from the identity
the Airflow edge puts in the task's ledger DSN, ``returnledger.airflow.links``). Plain query functions on
an open psycopg connection (the page, the extra links and the bench call them):

* ``run_exceptions(conn, dag_id, run_id, task_id=None, limit=500)`` -> the exceptions the run (that task
  of it) opened, oldest first.
* ``run_credit_notes(conn, dag_id, run_id, task_id=None, limit=500)`` -> the credit notes the run sent:
  per note its attempts in the run, the last outcome and the note's Amazon status.
* ``recent_runs(conn, limit=50)`` -> the runs of the latest ``RECENT_ROWS`` exceptions and credit-note
  sends, newest first, with their counts among those rows.
* ``producer(conn, exception_id=None, credit_note_id=None)`` -> (dag_id, run_id, task_id) of the run that
  raised that exception / last sent that credit note, None when it names no run.
* ``task_did(conn, what, dag_id, run_id, task_id)`` -> whether that task of that run raised exceptions
  (``what="exceptions"``) or sent credit notes (``"credit_notes"``): the extra links ask it.
* ``task_log_url(dag_id, run_id, task_id, map_index, try_number)`` -> the Airflow 3 UI's page of that task
  instance (its log), ``/dags/<dag>/runs/<run>/tasks/<task>[/mapped/<i>]?try_number=<n>``.

Page: GET /runs (``?dag_id=&run_id=[&task_id=]``; ``?exception_id=`` or ``?credit_note_id=`` opens the run
that produced that row), readable by every role; it changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote, urlencode

import psycopg
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from psycopg.rows import dict_row

_RUN_COLUMNS = "run_dag_id, run_id, run_task_id, run_map_index, run_try_number"

_EXCEPTIONS_SQL = f"""
SELECT exception_id, type, owner, status, subject_key, return_id, line, sku, detail, opened_at,
       opened_by_batch, resolved_at, resolved_by, {_RUN_COLUMNS}
  FROM ledger.exception
 WHERE run_dag_id = %(dag_id)s AND run_id = %(run_id)s
   AND (%(task_id)s::text IS NULL OR run_task_id = %(task_id)s)
 ORDER BY opened_at, exception_id
 LIMIT %(limit)s
"""

# A note's attempts in this run (the send log is append-only, one row per HTTP attempt), the last one's
# outcome, and what Amazon said of the note since.
_CREDIT_NOTES_SQL = """
WITH sent AS (
    SELECT document_id, count(*) AS attempts,
           (array_agg(outcome ORDER BY attempt_id DESC))[1] AS last_outcome,
           (array_agg(http_status ORDER BY attempt_id DESC))[1] AS last_http_status,
           (array_agg(transaction_id ORDER BY attempt_id DESC))[1] AS transaction_id,
           min(at) AS at, max(batch_id) AS batch_id, min(attempt_id) AS first_attempt,
           run_dag_id, run_id, run_task_id, max(run_map_index) AS run_map_index,
           max(run_try_number) AS run_try_number
      FROM ledger.submission_attempt
     WHERE kind = 'CREDIT_NOTE' AND run_dag_id = %(dag_id)s AND run_id = %(run_id)s
       AND (%(task_id)s::text IS NULL OR run_task_id = %(task_id)s)
     GROUP BY document_id, run_dag_id, run_id, run_task_id
     ORDER BY min(attempt_id)
     LIMIT %(limit)s
)
SELECT s.document_id AS credit_note_id, n.return_id, s.attempts, s.last_outcome, s.last_http_status,
       s.transaction_id, s.at, s.batch_id, n.confirmed_by, n.confirmed_at,
       s.run_dag_id, s.run_id, s.run_task_id, s.run_map_index, s.run_try_number
  FROM sent s LEFT JOIN ledger.credit_note n ON n.credit_note_id = s.document_id
 ORDER BY s.first_attempt
"""

#: how many of the latest exceptions and credit-note sends the runs listing reads
RECENT_ROWS = 5000
# The runs of the latest rows (newest first by primary key, so the listing reads a few thousand index
# entries, not every row a run ever wrote); their counts are those among these rows.
_RECENT_SQL = """
WITH slice AS (
    (SELECT run_dag_id, run_id, opened_at AS at, 1 AS exceptions, 0 AS sends FROM ledger.exception
      WHERE run_id IS NOT NULL ORDER BY exception_id DESC LIMIT %(rows)s)
    UNION ALL
    (SELECT run_dag_id, run_id, at, 0, 1 FROM ledger.submission_attempt
      WHERE run_id IS NOT NULL AND kind = 'CREDIT_NOTE' ORDER BY attempt_id DESC LIMIT %(rows)s)
)
SELECT run_dag_id, run_id, max(at) AS at, sum(exceptions)::int AS exceptions, sum(sends)::int AS sends
  FROM slice
 GROUP BY run_dag_id, run_id
 ORDER BY max(at) DESC, run_id DESC
 LIMIT %(limit)s
"""

# the run that raised one exception, the latest run that sent one credit note
_PRODUCER_SQL = {
    "exception_id": "SELECT run_dag_id, run_id, run_task_id FROM ledger.exception WHERE exception_id = %s",
    "credit_note_id": "SELECT run_dag_id, run_id, run_task_id FROM ledger.submission_attempt"
    " WHERE document_id = %s AND kind = 'CREDIT_NOTE' ORDER BY attempt_id DESC LIMIT 1",
}

_DID_SQL = {
    "exceptions": "SELECT EXISTS (SELECT 1 FROM ledger.exception"
    " WHERE run_dag_id = %s AND run_id = %s AND run_task_id = %s)",
    "credit_notes": "SELECT EXISTS (SELECT 1 FROM ledger.submission_attempt"
    " WHERE run_dag_id = %s AND run_id = %s AND run_task_id = %s AND kind = 'CREDIT_NOTE')",
}


def task_log_url(
    dag_id: str, run_id: str, task_id: str, map_index: int | None = None, try_number: int | None = None
) -> str:
    """The Airflow 3 UI's page of one task instance, which opens on its log."""
    url = f"/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}/tasks/{quote(task_id, safe='')}"
    if map_index is not None and map_index >= 0:
        url += f"/mapped/{map_index}"
    return url + (f"?try_number={try_number}" if try_number else "")


def run_url(dag_id: str, run_id: str) -> str:
    """The Airflow 3 UI's page of one DAG run."""
    return f"/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


def _with_links(rows: list[dict]) -> list[dict]:
    for r in rows:
        if r.get("run_id"):
            r["log_url"] = task_log_url(
                r["run_dag_id"], r["run_id"], r["run_task_id"], r["run_map_index"], r["run_try_number"]
            )
    return rows


def _params(dag_id: str, run_id: str, task_id: str | None, limit: int) -> dict:
    return {"dag_id": dag_id, "run_id": run_id, "task_id": task_id or None, "limit": limit}


def run_exceptions(
    conn: psycopg.Connection, dag_id: str, run_id: str, task_id: str | None = None, limit: int = 500
) -> list[dict]:
    """The exceptions the run (or that task of it) opened, oldest first, each with its task's log link."""
    with conn.cursor(row_factory=dict_row) as cur:
        return _with_links(cur.execute(_EXCEPTIONS_SQL, _params(dag_id, run_id, task_id, limit)).fetchall())


def run_credit_notes(
    conn: psycopg.Connection, dag_id: str, run_id: str, task_id: str | None = None, limit: int = 500
) -> list[dict]:
    """The credit notes the run (or that task of it) sent, each with its task's log link."""
    with conn.cursor(row_factory=dict_row) as cur:
        return _with_links(cur.execute(_CREDIT_NOTES_SQL, _params(dag_id, run_id, task_id, limit)).fetchall())


def recent_runs(conn: psycopg.Connection, limit: int = 50) -> list[dict]:
    """The latest runs that raised exceptions or sent credit notes."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(_RECENT_SQL, {"limit": limit, "rows": RECENT_ROWS}).fetchall()


def producer(conn: psycopg.Connection, exception_id: int | None = None, credit_note_id: str | None = None):
    """(dag_id, run_id, task_id) of the run that raised the exception / last sent the credit note; None
    when it names no run (written outside Airflow, or never sent)."""
    what, value = (
        ("exception_id", exception_id) if exception_id is not None else ("credit_note_id", credit_note_id)
    )
    row = conn.execute(_PRODUCER_SQL[what], (value,)).fetchone()
    return tuple(row) if row and row[1] else None


def task_did(conn: psycopg.Connection, what: str, dag_id: str, run_id: str, task_id: str) -> bool:
    """Whether that task of that run raised exceptions / sent credit notes (``what``)."""
    if what not in _DID_SQL:
        raise ValueError(f"what must be one of {sorted(_DID_SQL)}, not {what!r}")
    row = conn.execute(_DID_SQL[what], (dag_id, run_id, task_id)).fetchone()
    return bool(row and row[0])


def add_run_pages(app: FastAPI, *, dsn_provider: Callable[[], str], list_limit: int) -> None:
    """GET /runs on ``app`` (read only)."""
    from returnledger.console.pages import render_page

    @app.get("/runs", response_class=HTMLResponse)
    def runs_page(
        request: Request,
        dag_id: str | None = None,
        run_id: str | None = None,
        task_id: str | None = None,
        show: str | None = None,
        exception_id: int | None = None,
        credit_note_id: str | None = None,
    ):
        """What one run (one task of it) did; without a run, the latest runs that did anything."""
        from returnledger.console.pages import base_of
        from returnledger.store.db import connect

        if exception_id is not None or credit_note_id:
            with connect(dsn_provider()) as conn:
                found = producer(conn, exception_id, credit_note_id)
            what = (
                f"exception {exception_id}" if exception_id is not None else f"credit note {credit_note_id}"
            )
            if found is None:
                raise HTTPException(
                    404, f"{what} names no Airflow run (written outside Airflow, or never sent)"
                )
            query = {"dag_id": found[0], "run_id": found[1], "task_id": found[2]}
            query["show"] = "exceptions" if exception_id is not None else "credit_notes"
            return RedirectResponse(f"{base_of(request)}/runs?{urlencode(query)}", status_code=303)

        if bool(dag_id) != bool(run_id):
            raise HTTPException(400, "give both dag_id and run_id (or neither, for the latest runs)")
        if show not in (None, "", "exceptions", "credit_notes"):
            raise HTTPException(400, "show must be exceptions or credit_notes")
        with connect(dsn_provider()) as conn:
            if not dag_id or not run_id:  # neither (checked above): the latest runs
                runs = recent_runs(conn)
                for r in runs:
                    r["console_url"] = "runs?" + urlencode({"dag_id": r["run_dag_id"], "run_id": r["run_id"]})
                    r["airflow_url"] = run_url(r["run_dag_id"], r["run_id"])
                return render_page(
                    request, "runs", caller=request.state.caller, run=None, runs=runs, recent_rows=RECENT_ROWS
                )
            exceptions = run_exceptions(conn, dag_id, run_id, task_id, limit=list_limit)
            notes = run_credit_notes(conn, dag_id, run_id, task_id, limit=list_limit)
        return render_page(
            request,
            "runs",
            caller=request.state.caller,
            run={
                "dag_id": dag_id,
                "run_id": run_id,
                "task_id": task_id or "",
                "airflow_url": run_url(dag_id, run_id),
                "whole_run": "runs?" + urlencode({"dag_id": dag_id, "run_id": run_id}),
            },
            show=show or "",
            exceptions=exceptions,
            notes=notes,
            limit=list_limit,
        )
