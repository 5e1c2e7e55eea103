"""Daily and weekly operating checks: one digest per owner team, and SYNC_STALLED detection.

Every number is computed *as of* the run's date (the data interval end), never
the wall clock, so rerunning a past day's check gives that day's digest again:
an exception counts as open at ``as_of`` when it was opened before and not yet
resolved then. Thresholds are arguments (the DAG passes the defaults below).

Routing follows configuration: an exception goes to the owner team stored on
it (from owners.yaml at raise time); a section about one kind of problem (stale
reason mappings, dark returns, stalled flows) goes to the owner team of the
matching exception type in ``ledger.owner_team``.
"""
from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row

from returnledger.exception_queue.queue import (
    DEFAULT_OWNERS,
    DEFAULT_SLA_DAYS,
    NewException,
    raise_exceptions,
    resolve_open,
)
from returnledger.models import ExceptionType

Kind = Literal["daily", "weekly"]
CHECKER = "operating_checks"


@dataclass(frozen=True)
class Thresholds:
    """How long something may wait before it counts as stalled or stale."""
    pending_submission: timedelta = timedelta(hours=24)     # earned, not yet sent to Amazon
    submitted_unanswered: timedelta = timedelta(hours=48)   # sent, Amazon's transaction still not final
    held_event: timedelta = timedelta(days=3)               # an event waiting in quarantine
    sync_expected: timedelta = timedelta(hours=26)          # daily sync plus slack
    undispositioned_days: int = 5                           # received at the hub, no final disposition
    mapping_review_days: int = 90                           # reason mapping not looked at
    trend_weeks: int = 4
    top_n: int = 10
    list_limit: int = 50                                    # rows per list section in a mail


@dataclass
class Section:
    title: str
    columns: list[str]
    rows: list[list[Any]]
    note: str = ""
    empty: str = "Nothing to report."


@dataclass
class Digest:
    owner: str
    subject: str
    html: str
    counts: dict[str, int]
    kind: str = "daily"
    as_of: datetime | None = None
    sections: list[Section] = field(default_factory=list)

    def summary(self, path: str | None = None) -> dict:
        """Small, JSON-safe description (what a DAG passes through XCom)."""
        return {"owner": self.owner, "subject": self.subject, "counts": self.counts, "kind": self.kind,
                "as_of": self.as_of.isoformat() if self.as_of else None, "path": path}


# --- Stalled flows -----------------------------------------------------------------------------------

_STALLED_SUBMISSIONS_SQL = """
SELECT idempotency_key, kind, return_id, line, sku, document_id, attempts,
       CASE WHEN submitted_at IS NOT NULL AND submitted_at <= %(as_of)s THEN 'SUBMITTED' ELSE 'PENDING' END
           AS status_at,
       CASE WHEN submitted_at IS NOT NULL AND submitted_at <= %(as_of)s THEN submitted_at ELSE created_at END
           AS waiting_since
FROM ledger.amazon_submission
WHERE created_at <= %(as_of)s
  AND (resolved_at IS NULL OR resolved_at > %(as_of)s)
  AND ((submitted_at IS NULL OR submitted_at > %(as_of)s) AND created_at <= %(as_of)s - %(pending)s
       OR submitted_at <= %(as_of)s - %(submitted)s)
ORDER BY waiting_since, idempotency_key
"""

_STALLED_HELD_SQL = """
SELECT return_id, line, string_agg(DISTINCT reason, ', ' ORDER BY reason) AS reasons, count(*) AS events,
       min(held_at) AS held_since
FROM ledger.held_event
WHERE held_at <= %(as_of)s - %(held)s
GROUP BY return_id, line
ORDER BY held_since, return_id, line
"""


def stalled_flows(conn: psycopg.Connection, *, as_of: datetime, thresholds: Thresholds = Thresholds()) -> dict:
    """What is stuck at ``as_of``: Amazon actions, held events, and the sync itself (read only)."""
    p = {"as_of": as_of, "pending": thresholds.pending_submission, "submitted": thresholds.submitted_unanswered,
         "held": thresholds.held_event}
    with conn.cursor(row_factory=dict_row) as cur:
        submissions = cur.execute(_STALLED_SUBMISSIONS_SQL, p).fetchall()
        held = cur.execute(_STALLED_HELD_SQL, p).fetchall()
        last = cur.execute("SELECT max(finished_at) AS last FROM ledger.sync_run WHERE finished_at <= %s",
                           (as_of,)).fetchone()["last"]
    sync_late = last is None or as_of - last > thresholds.sync_expected
    return {"submissions": submissions, "held": held, "last_sync": last, "sync_late": sync_late}


def _held_subject(rid: str, line: int | None) -> str:
    return f"held:{rid}|{line}" if line is not None else f"held:{rid}"


def check_stalled_flows(dsn_or_conn, *, as_of: datetime, thresholds: Thresholds = Thresholds()) -> dict:
    """Raise SYNC_STALLED for what is stuck (idempotent) and resolve the ones that got moving again."""
    from returnledger.exception_queue.queue import _unit_of_work

    batch = f"{CHECKER}:{as_of:%Y-%m-%dT%H:%M}"
    with _unit_of_work(dsn_or_conn) as conn:
        found = stalled_flows(conn, as_of=as_of, thresholds=thresholds)
        items = [NewException(type=ExceptionType.SYNC_STALLED, subject_key=f"submission:{s['idempotency_key']}",
                              detail=f"{s['kind']} {s['status_at']} since {s['waiting_since']:%Y-%m-%d %H:%M} UTC"
                                     f" (attempts {s['attempts']})",
                              return_id=s["return_id"], line=s["line"], sku=s["sku"])
                 for s in found["submissions"]]
        items += [NewException(type=ExceptionType.SYNC_STALLED, subject_key=_held_subject(h["return_id"], h["line"]),
                               detail=f"{h['events']} event(s) held ({h['reasons']}) since"
                                      f" {h['held_since']:%Y-%m-%d %H:%M} UTC",
                               return_id=h["return_id"], line=h["line"])
                  for h in found["held"]]
        if found["sync_late"]:
            last = f"{found['last_sync']:%Y-%m-%d %H:%M} UTC" if found["last_sync"] else "never"
            items.append(NewException(type=ExceptionType.SYNC_STALLED, subject_key="sync:returns_sync",
                                      detail=f"no successful returns_sync run since {last}"))
        raised = raise_exceptions(conn, items, at=as_of, batch_id=batch)
        current = {i.subject_key for i in items}
        open_mine = [r[0] for r in conn.execute(
            "SELECT subject_key FROM ledger.exception WHERE type = 'SYNC_STALLED' AND status = 'open'"
            " AND opened_at <= %s AND (subject_key LIKE 'submission:%%' OR subject_key LIKE 'held:%%'"
            " OR subject_key LIKE 'sync:%%')", (as_of,))]
        cleared = [s for s in open_mine if s not in current]
        resolved = resolve_open(conn, ExceptionType.SYNC_STALLED, cleared, at=as_of, actor=CHECKER,
                                resolution="cleared: no longer stalled at the operating check")
    return {"stalled_submissions": len(found["submissions"]), "stalled_held_lines": len(found["held"]),
            "sync_late": int(found["sync_late"]), "raised": raised, "resolved": resolved}


# --- Queries for the digests ---------------------------------------------------------------------------

_SLA_CTE = """
sla AS (
    SELECT d.type, COALESCE(o.sla_days, d.sla_days) AS sla_days
    FROM unnest(%(dtype)s::text[], %(dsla)s::int[]) AS d(type, sla_days)
    LEFT JOIN ledger.owner_team o ON o.exception_type = d.type
),
e AS (
    SELECT x.*, sla.sla_days,
           (x.resolved_at IS NULL OR x.resolved_at > %(as_of)s) AS open_at,
           floor(extract(epoch FROM (%(as_of)s - x.opened_at)) / 86400)::int AS age_days,
           %(as_of)s > x.opened_at + make_interval(days => sla.sla_days) AS over_sla
    FROM ledger.exception x JOIN sla ON sla.type = x.type
    WHERE x.opened_at <= %(as_of)s
)
"""

_BY_TYPE_SQL = "WITH " + _SLA_CTE + """
SELECT owner, type,
       count(*) FILTER (WHERE open_at) AS open,
       count(*) FILTER (WHERE opened_at > %(since)s) AS new,
       count(*) FILTER (WHERE NOT open_at AND resolved_at > %(since)s) AS resolved,
       count(*) FILTER (WHERE open_at AND over_sla) AS sla_breached,
       count(*) FILTER (WHERE open_at AND age_days >= 7) AS aged_over_7d,
       max(age_days) FILTER (WHERE open_at) AS oldest_days
FROM e
GROUP BY owner, type
HAVING count(*) FILTER (WHERE open_at OR opened_at > %(since)s OR resolved_at > %(since)s) > 0
ORDER BY owner, type
"""

_OPEN_LIST_SQL = "WITH " + _SLA_CTE + """, ranked AS (
    SELECT e.*, row_number() OVER (PARTITION BY owner ORDER BY over_sla DESC, opened_at, exception_id) AS rn
    FROM e WHERE open_at
)
SELECT exception_id, owner, type, subject_key, detail, opened_at, age_days, sla_days, over_sla
FROM ranked WHERE rn <= %(limit)s
ORDER BY owner, over_sla DESC, opened_at, exception_id
"""

_TREND_SQL = """
WITH weeks AS (
    SELECT n, %(as_of)s - make_interval(days => 7 * (n + 1)) AS w_start, %(as_of)s - make_interval(days => 7 * n) AS w_end
    FROM generate_series(0, %(weeks)s - 1) AS n
)
SELECT x.owner, x.type, w.n,
       count(*) FILTER (WHERE x.opened_at > w.w_start AND x.opened_at <= w.w_end) AS opened,
       count(*) FILTER (WHERE x.resolved_at > w.w_start AND x.resolved_at <= w.w_end) AS resolved
FROM ledger.exception x CROSS JOIN weeks w
WHERE x.opened_at <= %(as_of)s
  AND (x.opened_at > %(as_of)s - make_interval(days => 7 * %(weeks)s)
       OR x.resolved_at > %(as_of)s - make_interval(days => 7 * %(weeks)s))
GROUP BY x.owner, x.type, w.n
ORDER BY x.owner, x.type, w.n
"""

_UNDISPOSITIONED_SQL = """
SELECT l.return_id, l.line, o.returns_notice, l.sku, l.state, l.quantity_received, l.received_at,
       floor(extract(epoch FROM (%(as_of)s - l.received_at)) / 86400)::int AS days
FROM ledger.return_line l JOIN ledger.return_order o USING (return_id)
WHERE l.state IN ('RECEIVED', 'GRADED') AND l.received_at <= %(as_of)s - make_interval(days => %(days)s)
ORDER BY l.received_at, l.return_id, l.line
"""

_TOP_SKUS_SQL = """
SELECT l.sku, s.asin, count(*) AS lines, sum(l.quantity_received) AS units
FROM ledger.return_line l LEFT JOIN ledger.sku s USING (sku)
WHERE l.received_at > %(since)s AND l.received_at <= %(as_of)s
GROUP BY l.sku, s.asin
ORDER BY units DESC, lines DESC, l.sku
LIMIT %(top)s
"""

_TOP_REASONS_SQL = """
SELECT l.reason, m.amazon_reason, count(*) AS lines, sum(l.quantity_received) AS units
FROM ledger.return_line l LEFT JOIN ledger.reason_mapping m ON m.rebound_reason = l.reason AND m.active
WHERE l.received_at > %(since)s AND l.received_at <= %(as_of)s
GROUP BY l.reason, m.amazon_reason
ORDER BY units DESC, lines DESC, l.reason
LIMIT %(top)s
"""

_STALE_MAPPINGS_SQL = """
WITH m AS (  -- a review recorded after the run date does not count for that date
    SELECT *, CASE WHEN reviewed_at <= %(as_of)s THEN reviewed_at END AS reviewed_then
    FROM ledger.reason_mapping WHERE active
)
SELECT rebound_reason, amazon_reason, updated_at, updated_by, reviewed_then AS reviewed_at,
       floor(extract(epoch FROM (%(as_of)s - COALESCE(reviewed_then, updated_at))) / 86400)::int AS days
FROM m
WHERE COALESCE(reviewed_then, updated_at) <= %(as_of)s - make_interval(days => %(days)s)
ORDER BY COALESCE(reviewed_then, updated_at), rebound_reason
"""

_DARK_RETURNS_SQL = "WITH " + _SLA_CTE + """
SELECT e.exception_id, e.owner, e.amazon_return_id, a.returns_notice, a.sku, a.asin, a.quantity, a.returned_at,
       a.linked_return_id, e.age_days, e.over_sla
FROM e LEFT JOIN ledger.amazon_return a ON a.amazon_return_id = e.amazon_return_id
WHERE e.type = 'DARK_RETURN' AND e.open_at
ORDER BY e.opened_at, e.exception_id
"""


def _owners(conn: psycopg.Connection) -> dict[str, str]:
    """exception type -> owner team (configuration first, design defaults second)."""
    owners = dict(DEFAULT_OWNERS)
    owners.update(dict(conn.execute("SELECT exception_type, owner FROM ledger.owner_team").fetchall()))
    return owners


def _teams(conn: psycopg.Connection, as_of: datetime) -> list[str]:
    teams = set(_owners(conn).values())
    teams.update(r[0] for r in conn.execute("SELECT DISTINCT owner FROM ledger.exception WHERE opened_at <= %s",
                                            (as_of,)))
    return sorted(teams)


# --- Rendering ------------------------------------------------------------------------------------------

def _cell(v: Any) -> str:
    if v is None:
        text = ""
    elif isinstance(v, datetime):
        text = f"{v:%Y-%m-%d %H:%M}"
    elif isinstance(v, bool):
        text = "yes" if v else ""
    else:
        text = str(v)
    # braces as entities: the mail body goes through Airflow's Jinja rendering of notifier fields
    return html.escape(text).replace("{", "&#123;").replace("}", "&#125;")


def render_html(title: str, intro: str, counts: dict[str, int], sections: list[Section]) -> str:
    """Plain HTML that reads well in any mail client: a heading, the counts, one table per section."""
    css = ("body{font-family:Arial,Helvetica,sans-serif;font-size:14px;color:#222}"
           "table{border-collapse:collapse;margin:6px 0 18px}th,td{border:1px solid #bbb;padding:4px 8px;"
           "text-align:left;vertical-align:top}th{background:#eee}td.n{text-align:right}")
    out = [f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{_cell(title)}</title>"
           f"<style>{css}</style></head><body>", f"<h1>{_cell(title)}</h1>", f"<p>{_cell(intro)}</p>",
           "<h2>Counts</h2><table id=\"counts\"><tr><th>what</th><th>count</th></tr>"]
    out += [f"<tr><td>{_cell(k.replace('_', ' '))}</td><td class=\"n\" data-count=\"{_cell(k)}\">{v}</td></tr>"
            for k, v in counts.items()]
    out.append("</table>")
    for s in sections:
        out.append(f"<h2>{_cell(s.title)}</h2>")
        if s.note:
            out.append(f"<p>{_cell(s.note)}</p>")
        if not s.rows:
            out.append(f"<p><i>{_cell(s.empty)}</i></p>")
            continue
        out.append("<table><tr>" + "".join(f"<th>{_cell(c)}</th>" for c in s.columns) + "</tr>")
        for row in s.rows:
            out.append("<tr>" + "".join(
                f"<td class=\"n\">{_cell(v)}</td>" if isinstance(v, int) and not isinstance(v, bool)
                else f"<td>{_cell(v)}</td>" for v in row) + "</tr>")
        out.append("</table>")
    out.append("<p style=\"color:#666\">Sent by returnledger's operating checks. Work the queue in Airflow"
               " (Returns exceptions page) or with <code>returnledger exceptions list --owner TEAM</code>."
               " See docs/operating-guide.md.</p></body></html>")
    return "\n".join(out)


# --- Digests -------------------------------------------------------------------------------------------

def _params(as_of: datetime, **extra) -> dict:
    return {"dtype": list(DEFAULT_SLA_DAYS), "dsla": list(DEFAULT_SLA_DAYS.values()), "as_of": as_of, **extra}


def _daily(conn: psycopg.Connection, as_of: datetime, t: Thresholds) -> list[Digest]:
    since = as_of - timedelta(days=1)
    owners = _owners(conn)
    with conn.cursor(row_factory=dict_row) as cur:
        by_type = cur.execute(_BY_TYPE_SQL, _params(as_of, since=since)).fetchall()
        open_list = cur.execute(_OPEN_LIST_SQL, _params(as_of, limit=t.list_limit)).fetchall()
        new_list = cur.execute("SELECT exception_id, owner, type, subject_key, detail, opened_at"
                               " FROM ledger.exception WHERE opened_at > %s AND opened_at <= %s"
                               " ORDER BY opened_at, exception_id", (since, as_of)).fetchall()
        undispositioned = cur.execute(_UNDISPOSITIONED_SQL, {"as_of": as_of, "days": t.undispositioned_days}
                                      ).fetchall()
    stalled = stalled_flows(conn, as_of=as_of, thresholds=t)
    stalled_owner = owners["SYNC_STALLED"]
    warehouse = owners["QUANTITY_MISMATCH"]  # the team that runs the hub owns received-but-unprocessed lines
    digests = []
    for team in _teams(conn, as_of):
        mine = [r for r in by_type if r["owner"] == team]
        counts = {k: sum(r[k] or 0 for r in mine) for k in ("open", "new", "resolved", "sla_breached",
                                                             "aged_over_7d")}
        counts.update(stalled_submissions=len(stalled["submissions"]) if team == stalled_owner else 0,
                      stalled_held_lines=len(stalled["held"]) if team == stalled_owner else 0,
                      sync_late=int(stalled["sync_late"]) if team == stalled_owner else 0,
                      lines_not_dispositioned=len(undispositioned) if team == warehouse else 0)
        sections = [
            Section("Open exceptions by type", ["type", "open", "new since yesterday", "resolved since yesterday",
                                                "over SLA", "open 7+ days", "oldest (days)"],
                    [[r["type"], r["open"], r["new"], r["resolved"], r["sla_breached"], r["aged_over_7d"],
                      r["oldest_days"]] for r in mine], empty="No exceptions for this team."),
            Section("Open exceptions, over SLA first", ["id", "type", "subject", "opened", "age (days)",
                                                        "SLA (days)", "over SLA", "detail"],
                    [[r["exception_id"], r["type"], r["subject_key"], r["opened_at"], r["age_days"], r["sla_days"],
                      r["over_sla"], r["detail"]] for r in open_list if r["owner"] == team],
                    note=f"At most {t.list_limit} shown; the full queue is on the Returns exceptions page."),
            Section("New since yesterday", ["id", "type", "subject", "opened", "detail"],
                    [[r["exception_id"], r["type"], r["subject_key"], r["opened_at"], r["detail"]]
                     for r in new_list if r["owner"] == team][: t.list_limit]),
        ]
        if team == stalled_owner:
            last = stalled["last_sync"]
            sections.append(Section(
                "Stalled flows", ["what", "key", "line", "status", "waiting since"],
                [["Amazon action", s["idempotency_key"], f"{s['return_id']}|{s['line']}", s["status_at"],
                  s["waiting_since"]] for s in stalled["submissions"]][: t.list_limit]
                + [["held events", f"{h['events']} event(s): {h['reasons']}", _held_subject(h["return_id"],
                    h["line"])[5:], "HELD", h["held_since"]] for h in stalled["held"]][: t.list_limit]
                + ([["returns_sync", "last successful run", "", "LATE", last]] if stalled["sync_late"] else []),
                note=(f"Last successful returns_sync run: {_cell(last) or 'never'}. Pending actions older than "
                      f"{t.pending_submission}, unanswered ones older than {t.submitted_unanswered} and events held"
                      f" longer than {t.held_event} raise SYNC_STALLED.")))
        if team == warehouse:
            sections.append(Section(
                f"Received but not dispositioned for {t.undispositioned_days}+ days",
                ["return", "line", "returns notice", "SKU", "state", "qty received", "received", "days"],
                [[r["return_id"], r["line"], r["returns_notice"], r["sku"], r["state"], r["quantity_received"],
                  r["received_at"], r["days"]] for r in undispositioned][: t.list_limit]))
        late = counts["sla_breached"]
        subject = (f"[returnledger] daily digest {as_of:%Y-%m-%d} for {team}: {counts['open']} open, "
                   f"{counts['new']} new, {late} over SLA")
        intro = (f"Owner team {team}, as of {as_of:%Y-%m-%d %H:%M} UTC (yesterday = the 24 hours before).")
        digests.append(Digest(team, subject, render_html(subject[len('[returnledger] '):], intro, counts, sections),
                              counts, "daily", as_of, sections))
    return digests


def _weekly(conn: psycopg.Connection, as_of: datetime, t: Thresholds) -> list[Digest]:
    since = as_of - timedelta(days=7)
    owners = _owners(conn)
    with conn.cursor(row_factory=dict_row) as cur:
        by_type = cur.execute(_BY_TYPE_SQL, _params(as_of, since=since)).fetchall()
        trend = cur.execute(_TREND_SQL, {"as_of": as_of, "weeks": t.trend_weeks}).fetchall()
        top_skus = cur.execute(_TOP_SKUS_SQL, {"as_of": as_of, "since": since, "top": t.top_n}).fetchall()
        top_reasons = cur.execute(_TOP_REASONS_SQL, {"as_of": as_of, "since": since, "top": t.top_n}).fetchall()
        stale = cur.execute(_STALE_MAPPINGS_SQL, {"as_of": as_of, "days": t.mapping_review_days}).fetchall()
        dark = cur.execute(_DARK_RETURNS_SQL, _params(as_of)).fetchall()
    mapping_owner = owners["UNMAPPED_REASON_CODE"]
    dark_owner = owners["DARK_RETURN"]
    week_ends = [as_of - timedelta(days=7 * n) for n in range(t.trend_weeks - 1, -1, -1)]
    digests = []
    for team in _teams(conn, as_of):
        mine = [r for r in by_type if r["owner"] == team]
        trend_rows: dict[str, dict[int, tuple[int, int]]] = {}
        for r in trend:
            if r["owner"] == team:
                trend_rows.setdefault(r["type"], {})[r["n"]] = (r["opened"], r["resolved"])
        counts = {"opened_this_week": sum(r["new"] for r in mine),
                  "resolved_this_week": sum(r["resolved"] for r in mine),
                  "open": sum(r["open"] for r in mine), "sla_breached": sum(r["sla_breached"] for r in mine),
                  "top_skus": len(top_skus) if team == mapping_owner else 0,
                  "stale_mappings": len(stale) if team == mapping_owner else 0,
                  "dark_returns_open": sum(1 for d in dark if d["owner"] == team) if team == dark_owner else 0}
        sections = [
            Section("Exceptions opened / resolved per week", ["type"] + [f"week to {w:%Y-%m-%d}" for w in week_ends],
                    [[typ] + [f"{cells.get(n, (0, 0))[0]} / {cells.get(n, (0, 0))[1]}"
                              for n in range(t.trend_weeks - 1, -1, -1)]
                     for typ, cells in sorted(trend_rows.items())],
                    note="Each cell: opened / resolved (or dismissed) in that week."),
            Section("Open at week end", ["type", "open", "over SLA", "oldest (days)"],
                    [[r["type"], r["open"], r["sla_breached"], r["oldest_days"]] for r in mine if r["open"]]),
        ]
        if team == mapping_owner:
            sections += [
                Section(f"Top {t.top_n} returned SKUs this week", ["SKU", "ASIN", "lines", "units received"],
                        [[r["sku"], r["asin"], r["lines"], r["units"]] for r in top_skus]),
                Section(f"Top {t.top_n} return reasons this week", ["ReBound reason", "Amazon reason", "lines",
                                                                     "units received"],
                        [[r["reason"], r["amazon_reason"] or "(unmapped)", r["lines"], r["units"]]
                         for r in top_reasons]),
                Section(f"Reason mappings not reviewed in {t.mapping_review_days} days",
                        ["ReBound reason", "Amazon reason", "last changed", "by", "last reviewed", "days"],
                        [[r["rebound_reason"], r["amazon_reason"], r["updated_at"], r["updated_by"], r["reviewed_at"],
                          r["days"]] for r in stale]),
            ]
        if team == dark_owner:
            sections.append(Section(
                "Unresolved dark returns", ["id", "Amazon return", "returns notice", "SKU", "ASIN", "qty",
                                            "returned", "post-hoc ReBound return", "age (days)", "over SLA"],
                [[d["exception_id"], d["amazon_return_id"], d["returns_notice"], d["sku"], d["asin"], d["quantity"],
                  d["returned_at"], d["linked_return_id"], d["age_days"], d["over_sla"]]
                 for d in dark if d["owner"] == team][: t.list_limit]))
        subject = (f"[returnledger] weekly review to {as_of:%Y-%m-%d} for {team}: {counts['opened_this_week']} opened,"
                   f" {counts['resolved_this_week']} resolved, {counts['open']} open")
        intro = f"Owner team {team}, the 7 days to {as_of:%Y-%m-%d %H:%M} UTC."
        digests.append(Digest(team, subject, render_html(subject[len('[returnledger] '):], intro, counts, sections),
                              counts, "weekly", as_of, sections))
    return digests


def build_digests(dsn, *, as_of: datetime, kind: Kind, thresholds: Thresholds = Thresholds()) -> list[Digest]:
    """One digest per owner team for the run date ``as_of`` (read only: call check_stalled_flows first)."""
    from returnledger.store.db import connect

    if kind not in ("daily", "weekly"):
        raise ValueError(f"kind must be 'daily' or 'weekly', not {kind!r}")
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware (the run's data interval end)")
    conn_ctx = connect(dsn) if not isinstance(dsn, psycopg.Connection) else None
    conn = conn_ctx if conn_ctx is not None else dsn
    try:
        return _daily(conn, as_of, thresholds) if kind == "daily" else _weekly(conn, as_of, thresholds)
    finally:
        if conn_ctx is not None:
            conn_ctx.close()


def digest_filename(d: Digest) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in d.owner)
    return f"{d.kind}-{d.as_of:%Y-%m-%d}-{safe}.html"


def write_digests(digests: list[Digest], out_dir) -> list[Path]:
    """Write each digest as HTML plus one JSON index of subjects and counts; returns the HTML paths.

    Same run date, same file names: a rerun overwrites its own files.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for d in digests:
        p = out / digest_filename(d)
        p.write_text(d.html, encoding="utf-8")
        paths.append(p)
    if digests:
        d0 = digests[0]
        index = out / f"{d0.kind}-{d0.as_of:%Y-%m-%d}.json"
        index.write_text(json.dumps([d.summary(str(p)) for d, p in zip(digests, paths, strict=True)], indent=2), encoding="utf-8")
    return paths


def digest_from_file(summary: dict) -> Digest:
    """Rebuild a Digest from write_digests' index entry (the send task reads what the build task wrote)."""
    as_of = datetime.fromisoformat(summary["as_of"]) if summary.get("as_of") else None
    return Digest(summary["owner"], summary["subject"], Path(summary["path"]).read_text(encoding="utf-8"),
                  dict(summary["counts"]), summary.get("kind", "daily"), as_of)


__all__ = ["Digest", "Section", "Thresholds", "build_digests", "write_digests", "check_stalled_flows",
           "stalled_flows", "digest_from_file", "render_html", "build_and_write", "mark_mappings_reviewed",
           "register_cli"]


def build_and_write(dsn, *, as_of: datetime, kind: Kind, out_dir, thresholds: Thresholds = Thresholds()) -> list[dict]:
    """The DAG's build step: digests for the run date, written to ``out_dir``; returns their summaries."""
    digests = build_digests(dsn, as_of=as_of, kind=kind, thresholds=thresholds)
    paths = write_digests(digests, out_dir)
    return [d.summary(str(p)) for d, p in zip(digests, paths, strict=True)]


def mark_mappings_reviewed(dsn_or_conn, rebound_reasons: list[str], *, actor: str, at: datetime,
                           why: str | None = None) -> list[str]:
    """Record that operations reviewed these reason mappings (clears them from the weekly 'not reviewed' list).

    Unknown or inactive reasons are refused and nothing is recorded.
    """
    import json as _json

    from returnledger.exception_queue.queue import ExceptionActionError, _require, _unit_of_work

    actor = _require(actor, "actor")
    reasons = sorted({_require(r, "rebound_reason") for r in rebound_reasons})
    if not reasons:
        raise ExceptionActionError("name at least one ReBound reason")
    with _unit_of_work(dsn_or_conn) as conn:
        done = conn.execute(
            "UPDATE ledger.reason_mapping SET reviewed_at = %s WHERE active AND rebound_reason = ANY(%s)"
            " RETURNING rebound_reason, amazon_reason", (at, reasons)).fetchall()
        missing = sorted(set(reasons) - {r[0] for r in done})
        if missing:
            raise ExceptionActionError(f"no active reason mapping for {', '.join(missing)}")
        conn.execute(
            "INSERT INTO ledger.audit_log (at, actor, action, subject, detail)"
            " SELECT %s, %s, 'reason_mapping.review', 'reason:' || x.r, x.d::jsonb"
            " FROM unnest(%s::text[], %s::text[]) AS x(r, d)",
            (at, actor, [r[0] for r in done],
             [_json.dumps({"amazon_reason": r[1], **({"why": why} if why else {})}) for r in done]))
    return [r[0] for r in done]


# --- CLI -------------------------------------------------------------------------------------------------

def _cli_digest(args) -> int:
    from returnledger.store.db import local_dir, resolve_dsn

    as_of = datetime.fromisoformat(args.as_of)
    if as_of.tzinfo is None:  # a date or a naive time on the command line means UTC
        from datetime import timezone

        as_of = as_of.replace(tzinfo=timezone.utc)
    dsn = resolve_dsn(args.dsn)
    if args.check and args.kind == "daily":
        print(json.dumps(check_stalled_flows(dsn, as_of=as_of)))
    out_dir = args.out or str(local_dir() / "digests")
    for s in build_and_write(dsn, as_of=as_of, kind=args.kind, out_dir=out_dir):
        print(f"{s['path']}: {s['subject']}")
    return 0


def _cli_review(args) -> int:
    import getpass
    from datetime import timezone

    from returnledger.exception_queue.queue import ExceptionActionError
    from returnledger.store.db import resolve_dsn

    try:  # an operator's review happens now: wall-clock time is right at this edge
        done = mark_mappings_reviewed(resolve_dsn(args.dsn), args.reasons, actor=args.actor or getpass.getuser(),
                                      at=datetime.now(timezone.utc), why=args.why)
    except ExceptionActionError as exc:
        print(f"refused: {exc}")
        return 2
    print(f"reviewed: {', '.join(done)}")
    return 0


def register_cli(subparsers) -> None:
    """``returnledger digest`` (build the daily/weekly digests for a date) and ``returnledger review-mappings``."""
    p = subparsers.add_parser("digest", help="build the owner-team digests for a date into a folder")
    p.add_argument("--kind", choices=["daily", "weekly"], default="daily")
    p.add_argument("--as-of", required=True, help="the run's moment, e.g. 2026-10-10 or 2026-10-10T07:00+00:00")
    p.add_argument("--out", default=None, help="folder (default .local/digests)")
    p.add_argument("--check", action="store_true", help="daily: also raise SYNC_STALLED for stalled flows first")
    p.add_argument("--dsn", default=None)
    p.set_defaults(func=_cli_digest)
    r = subparsers.add_parser("review-mappings", help="record that reason mappings were reviewed")
    r.add_argument("reasons", nargs="+", help="ReBound reasons")
    r.add_argument("--why", default=None)
    r.add_argument("--actor", default=None)
    r.add_argument("--dsn", default=None)
    r.set_defaults(func=_cli_review)
