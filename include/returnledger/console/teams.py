"""Each owner team's queue: its open exceptions by SLA, overdue first, so a team's morning check is one page.

Plain query functions taking an open psycopg connection (the console's routes, the navigation's counts,
tests and the bench call them):

* ``team_queue(conn, team, as_of, limit=500)`` -> the team's open exceptions, overdue first, then by SLA
  due time (the soonest first); each row has ``sla_days``, ``sla_due_at``, ``age_days``, ``overdue`` and
  ``what_to_do``.
* ``team_counts(conn, as_of)`` -> ``{team: {"open": n, "overdue": m}}`` for every owner team (teams with
  nothing open count 0).
* ``owner_teams(conn)`` -> the owner teams (owners.yaml and ledger.owner_team), sorted.

The team of an exception is ``ledger.exception.owner``; the SLA is ``ledger.owner_team.sla_days`` (else
owners.yaml), the one definition in ``returnledger.exception_queue.sla``. Both queries read the open
exceptions of a team through ``exception_open_team_idx`` (migration 0021_console_lookup).

The pages: GET /teams (every team with its counts) and GET /teams/{team} (the queue), readable by every
role; acting on an exception is on its own page (Op/Admin).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import psycopg
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse
from psycopg.rows import dict_row

from returnledger.exception_queue.sla import SLA_CTE, overdue_sql, sla_params
from returnledger.reference.owners import default_owners

_QUEUE_SQL = f"""
WITH {SLA_CTE}
SELECT e.exception_id, e.type, e.owner, e.status, e.subject_key, e.return_id, e.line, e.sku, e.detail,
       e.opened_at, e.opened_by_batch,
       sla.sla_days, sla.what_to_do,
       e.opened_at + make_interval(days => sla.sla_days) AS sla_due_at,
       GREATEST(floor(extract(epoch FROM (%(as_of)s - e.opened_at)) / 86400), 0)::int AS age_days,
       {overdue_sql("e", "%(as_of)s")} AS overdue
  FROM sla
 CROSS JOIN LATERAL (
       SELECT * FROM ledger.exception x
        WHERE x.owner = %(team)s AND x.status = 'open' AND x.type = sla.type
        ORDER BY x.opened_at, x.exception_id
        LIMIT %(limit)s) e
 ORDER BY sla_due_at, e.exception_id
 LIMIT %(limit)s
"""
#: Overdue first, then the soonest due, is one order: the due time (an exception is overdue when its due
#: time has passed). Within one type the due time follows the opening time, so each type's first
#: ``limit`` open exceptions come straight from ``exception_open_team_idx`` (owner, type, opened_at) and
#: only those are merged: the page reads at most ``limit`` rows per type, not the team's whole backlog.

_COUNTS_SQL = f"""
WITH {SLA_CTE}
SELECT e.owner, count(*) AS open, count(*) FILTER (WHERE {overdue_sql("e", "%(as_of)s")}) AS overdue
  FROM ledger.exception e JOIN sla ON sla.type = e.type
 WHERE e.status = 'open'
 GROUP BY e.owner
"""


def owner_teams(conn: psycopg.Connection) -> list[str]:
    """Every owner team: owners.yaml's and those ledger.owner_team names."""
    rows = conn.execute("SELECT DISTINCT owner FROM ledger.owner_team").fetchall()
    return sorted({o.owner for o in default_owners().values()} | {r[0] for r in rows})


def team_queue(conn: psycopg.Connection, team: str, as_of: datetime, limit: int = 500) -> list[dict]:
    """The team's open exceptions at ``as_of``: overdue first, then the soonest SLA due first."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            _QUEUE_SQL, {**sla_params(), "team": team, "as_of": as_of, "limit": limit}
        ).fetchall()


def team_counts(conn: psycopg.Connection, as_of: datetime) -> dict[str, dict[str, int]]:
    """Open and overdue exceptions of every owner team at ``as_of``."""
    counts = {team: {"open": 0, "overdue": 0} for team in owner_teams(conn)}
    for owner, open_, overdue in conn.execute(_COUNTS_SQL, {**sla_params(), "as_of": as_of}).fetchall():
        counts[owner] = {"open": open_, "overdue": overdue}
    return counts


def add_team_pages(
    app: FastAPI,
    *,
    connect: Callable[[], psycopg.Connection],
    moment: Callable[[str | None], datetime],
    list_limit: int,
) -> None:
    """GET /teams and GET /teams/{team} on ``app`` (read only)."""
    from returnledger.console.glossary import say
    from returnledger.console.pages import render_page

    @app.get("/teams", response_class=HTMLResponse)
    def teams_page(request: Request, as_of: str | None = None):
        """Every owner team with its open and overdue exceptions, linking to its queue."""
        when = moment(as_of)
        with connect() as conn:
            counts = team_counts(conn, when)
        return render_page(
            request, "teams", caller=request.state.caller, counts=counts, as_of=when, as_of_day=as_of or ""
        )

    @app.get("/teams/{team}", response_class=HTMLResponse)
    def team_page(request: Request, team: str, as_of: str | None = None):
        """One team's queue: its open exceptions, overdue first."""
        when = moment(as_of)
        with connect() as conn:
            teams = owner_teams(conn)
            if team not in teams:
                raise HTTPException(404, f"no owner team {team!r}; the teams are {', '.join(teams)}")
            rows = team_queue(conn, team, when, limit=list_limit)
            counts = team_counts(conn, when)
        return render_page(
            request,
            "team",
            caller=request.state.caller,
            team=team,
            rows=rows,
            counts=counts,
            as_of=when,
            as_of_day=as_of or "",
            limit=list_limit,
            say=say,
        )
