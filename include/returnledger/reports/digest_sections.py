"""What each operating digest says: its sections per owner team, daily and weekly.

A section about one kind of problem (stale reason mappings, dark returns, stalled flows) goes to the
owner team of the matching exception type; the queries are in returnledger.reports.digest_sql.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from returnledger.exception_queue.stalled import StallLimits, held_line, stalled_flows
from returnledger.render import cell, render
from returnledger.reports.digest_sql import (
    BY_TYPE_SQL,
    NEW_LIST_SQL,
    OPEN_LIST_SQL,
    UNDISPOSITIONED_SQL,
    digest_teams,
    owners_by_type,
    query_params,
)


@dataclass(frozen=True)
class Thresholds(StallLimits):
    """How long something may wait before it counts as stalled (StallLimits) or stale."""

    undispositioned_days: int = 5  # received at the hub, no final disposition
    mapping_review_days: int = 90  # reason mapping not looked at
    trend_weeks: int = 4
    top_n: int = 10
    list_limit: int = 50  # rows per list section in a mail


@dataclass
class Section:
    """One table of a digest; ``empty`` is said instead of an empty table."""

    title: str
    columns: list[str]
    rows: list[list[Any]]
    note: str = ""
    empty: str = "Nothing to report."


@dataclass
class Digest:
    """One owner team's digest for one run date, rendered as HTML for the mail."""

    owner: str
    subject: str
    html: str
    counts: dict[str, int]
    kind: str = "daily"
    as_of: datetime | None = None
    sections: list[Section] = field(default_factory=list)

    def summary(self, path: str | None = None) -> dict:
        """Small, JSON-safe description (what a DAG passes through XCom)."""
        return {
            "owner": self.owner,
            "subject": self.subject,
            "counts": self.counts,
            "kind": self.kind,
            "as_of": self.as_of.isoformat() if self.as_of else None,
            "path": path,
        }


def render_html(title: str, intro: str, counts: dict[str, int], sections: list[Section]) -> str:
    """Plain HTML that reads well in any mail client: a heading, the counts, one table per section.

    Rendered for mail: the body goes through Airflow's Jinja rendering of notifier fields, so braces in
    values are written as entities.
    """
    return render("digest.html", mail=True, title=title, intro=intro, counts=counts, sections=sections)


def team_digest(
    team: str,
    subject: str,
    intro: str,
    counts: dict[str, int],
    kind: str,
    as_of: datetime,
    sections: list[Section],
) -> Digest:
    """One team's digest, its HTML titled by the subject without the ``[returnledger]`` tag."""
    html = render_html(subject[len("[returnledger] ") :], intro, counts, sections)
    return Digest(team, subject, html, counts, kind, as_of, sections)


def daily_digests(conn: psycopg.Connection, as_of: datetime, t: Thresholds) -> list[Digest]:
    """Each team's day: its queue by type, what is over SLA, what is new, stalled flows, idle lines."""
    since = as_of - timedelta(days=1)
    owners = owners_by_type(conn)
    with conn.cursor(row_factory=dict_row) as cur:
        by_type = cur.execute(BY_TYPE_SQL, query_params(as_of, since=since)).fetchall()
        open_list = cur.execute(OPEN_LIST_SQL, query_params(as_of, limit=t.list_limit)).fetchall()
        new_list = cur.execute(NEW_LIST_SQL, (since, as_of)).fetchall()
        undispositioned = cur.execute(
            UNDISPOSITIONED_SQL, {"as_of": as_of, "days": t.undispositioned_days}
        ).fetchall()
    stalled = stalled_flows(conn, as_of=as_of, thresholds=t)
    stalled_owner = owners["SYNC_STALLED"]
    warehouse = owners["QUANTITY_MISMATCH"]  # the team that runs the hub owns received-but-unprocessed lines
    digests = []
    for team in digest_teams(conn, as_of):
        mine = [r for r in by_type if r["owner"] == team]
        counts = {
            k: sum(r[k] or 0 for r in mine)
            for k in ("open", "carried_over", "new", "resolved", "sla_breached", "aged_over_7d")
        }
        counts.update(
            stalled_submissions=len(stalled["submissions"]) if team == stalled_owner else 0,
            stalled_held_lines=len(stalled["held"]) if team == stalled_owner else 0,
            uncredited_lines=len(stalled["uncredited"]) if team == stalled_owner else 0,
            sync_late=int(stalled["sync_late"]) if team == stalled_owner else 0,
            lines_not_dispositioned=len(undispositioned) if team == warehouse else 0,
        )
        sections = [
            Section(
                "Open exceptions by type",
                [
                    "type",
                    "open",
                    "carried over from earlier months",
                    "new since yesterday",
                    "resolved since yesterday",
                    "over SLA",
                    "open 7+ days",
                    "oldest (days)",
                ],
                [
                    [
                        r["type"],
                        r["open"],
                        r["carried_over"],
                        r["new"],
                        r["resolved"],
                        r["sla_breached"],
                        r["aged_over_7d"],
                        r["oldest_days"],
                    ]
                    for r in mine
                ],
                note="Carried over: opened in a month before this one and still open.",
                empty="No exceptions for this team.",
            ),
            Section(
                "Open exceptions, over SLA first",
                [
                    "id",
                    "type",
                    "subject",
                    "opened",
                    "age (days)",
                    "SLA (days)",
                    "over SLA",
                    "carried over",
                    "detail",
                ],
                [
                    [
                        r["exception_id"],
                        r["type"],
                        r["subject_key"],
                        r["opened_at"],
                        r["age_days"],
                        r["sla_days"],
                        r["over_sla"],
                        r["carried_over"],
                        r["detail"],
                    ]
                    for r in open_list
                    if r["owner"] == team
                ],
                note=f"At most {t.list_limit} shown; the full queue is on the Returns exceptions page.",
            ),
            Section(
                "New since yesterday",
                ["id", "type", "subject", "opened", "detail"],
                [
                    [r["exception_id"], r["type"], r["subject_key"], r["opened_at"], r["detail"]]
                    for r in new_list
                    if r["owner"] == team
                ][: t.list_limit],
            ),
        ]
        if team == stalled_owner:
            last = stalled["last_sync"]
            sections.append(
                Section(
                    "Stalled flows",
                    ["what", "key", "line", "status", "waiting since"],
                    [
                        [
                            "Amazon action",
                            s["idempotency_key"],
                            f"{s['return_id']}|{s['line']}",
                            s["status_at"],
                            s["waiting_since"],
                        ]
                        for s in stalled["submissions"]
                    ][: t.list_limit]
                    + [
                        [
                            "held events",
                            f"{h['events']} event(s): {h['reasons']}",
                            held_line(h["return_id"], h["line"]),
                            "HELD",
                            h["held_since"],
                        ]
                        for h in stalled["held"]
                    ][: t.list_limit]
                    + [
                        [
                            "credit owed, never sent",
                            f"{u['units']} unit(s), {u['disposition']}",
                            f"{u['return_id']}|{u['line']}",
                            "NO CREDIT NOTE",
                            u["waiting_since"],
                        ]
                        for u in stalled["uncredited"]
                    ][: t.list_limit]
                    + (
                        [["returns_sync", "last successful run", "", "LATE", last]]
                        if stalled["sync_late"]
                        else []
                    ),
                    note=(
                        f"Last successful returns_sync run: {cell(last) or 'never'}."
                        f" Pending actions older than {t.pending_submission},"
                        f" unanswered ones older than {t.submitted_unanswered}"
                        f" and events held longer than {t.held_event} raise SYNC_STALLED, as does a"
                        " dispositioned line owed a credit that no note carries and no exception explains."
                    ),
                )
            )
        if team == warehouse:
            sections.append(
                Section(
                    f"Received but not dispositioned for {t.undispositioned_days}+ days",
                    ["return", "line", "returns notice", "SKU", "state", "qty received", "received", "days"],
                    [
                        [
                            r["return_id"],
                            r["line"],
                            r["returns_notice"],
                            r["sku"],
                            r["state"],
                            r["quantity_received"],
                            r["received_at"],
                            r["days"],
                        ]
                        for r in undispositioned
                    ][: t.list_limit],
                )
            )
        late = counts["sla_breached"]
        subject = (
            f"[returnledger] daily digest {as_of:%Y-%m-%d} for {team}: {counts['open']} open, "
            f"{counts['new']} new, {late} over SLA"
        )
        intro = f"Owner team {team}, as of {as_of:%Y-%m-%d %H:%M} UTC (yesterday = the 24 hours before)."
        digests.append(team_digest(team, subject, intro, counts, "daily", as_of, sections))
    return digests
