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
    BACKLOG_TREND_SQL,
    BY_TYPE_SQL,
    DARK_RETURNS_SQL,
    NEW_LIST_SQL,
    OPEN_LIST_SQL,
    STALE_MAPPINGS_SQL,
    TOP_REASONS_SQL,
    TOP_SKUS_SQL,
    TREND_SQL,
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


def _digest(
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
        digests.append(_digest(team, subject, intro, counts, "daily", as_of, sections))
    return digests


def weekly_digests(conn: psycopg.Connection, as_of: datetime, t: Thresholds) -> list[Digest]:
    """Each team's week: the trend per type, top SKUs and reasons, stale mappings, dark returns."""
    since = as_of - timedelta(days=7)
    owners = owners_by_type(conn)
    with conn.cursor(row_factory=dict_row) as cur:
        by_type = cur.execute(BY_TYPE_SQL, query_params(as_of, since=since)).fetchall()
        trend = cur.execute(TREND_SQL, {"as_of": as_of, "weeks": t.trend_weeks}).fetchall()
        backlog = cur.execute(BACKLOG_TREND_SQL, {"as_of": as_of, "weeks": t.trend_weeks}).fetchall()
        top_skus = cur.execute(TOP_SKUS_SQL, {"as_of": as_of, "since": since, "top": t.top_n}).fetchall()
        top_reasons = cur.execute(
            TOP_REASONS_SQL, {"as_of": as_of, "since": since, "top": t.top_n}
        ).fetchall()
        stale = cur.execute(STALE_MAPPINGS_SQL, {"as_of": as_of, "days": t.mapping_review_days}).fetchall()
        dark = cur.execute(DARK_RETURNS_SQL, query_params(as_of)).fetchall()
    mapping_owner = owners["UNMAPPED_REASON_CODE"]
    dark_owner = owners["DARK_RETURN"]
    week_ends = [as_of - timedelta(days=7 * n) for n in range(t.trend_weeks - 1, -1, -1)]
    digests = []
    for team in digest_teams(conn, as_of):
        mine = [r for r in by_type if r["owner"] == team]
        trend_rows: dict[str, dict[int, tuple[int, int]]] = {}
        for r in trend:
            if r["owner"] == team:
                trend_rows.setdefault(r["type"], {})[r["n"]] = (r["opened"], r["resolved"])
        backlog_rows: dict[str, dict[int, int]] = {}
        for r in backlog:
            if r["owner"] == team:
                backlog_rows.setdefault(r["type"], {})[r["n"]] = r["open"]
        counts = {
            "opened_this_week": sum(r["new"] for r in mine),
            "resolved_this_week": sum(r["resolved"] for r in mine),
            "open": sum(r["open"] for r in mine),
            "carried_over_open": sum(r["carried_over"] for r in mine),
            "carried_over_resolved": sum(r["carried_over_resolved"] for r in mine),
            "sla_breached": sum(r["sla_breached"] for r in mine),
            "top_skus": len(top_skus) if team == mapping_owner else 0,
            "stale_mappings": len(stale) if team == mapping_owner else 0,
            "dark_returns_open": sum(1 for d in dark if d["owner"] == team) if team == dark_owner else 0,
        }
        sections = [
            Section(
                "Exceptions opened / resolved per week",
                ["type"] + [f"week to {w:%Y-%m-%d}" for w in week_ends],
                [
                    [typ]
                    + [
                        f"{cells.get(n, (0, 0))[0]} / {cells.get(n, (0, 0))[1]}"
                        for n in range(t.trend_weeks - 1, -1, -1)
                    ]
                    for typ, cells in sorted(trend_rows.items())
                ],
                note="Each cell: opened / resolved (or dismissed) in that week.",
            ),
            Section(
                "Open from earlier months at each week end",
                ["type"] + [f"week to {w:%Y-%m-%d}" for w in week_ends],
                [
                    [typ] + [cells.get(n, 0) for n in range(t.trend_weeks - 1, -1, -1)]
                    for typ, cells in sorted(backlog_rows.items())
                ],
                note=(
                    "The backlog carried over: exceptions open at each week end that were opened in a month"
                    " before that week end's month. Falling numbers: the backlog is shrinking (a month end"
                    " adds the month's open exceptions to it)."
                ),
                empty="No exceptions carried over from earlier months.",
            ),
            Section(
                "Open at week end",
                ["type", "open", "over SLA", "oldest (days)"],
                [[r["type"], r["open"], r["sla_breached"], r["oldest_days"]] for r in mine if r["open"]],
            ),
        ]
        if team == mapping_owner:
            sections += [
                Section(
                    f"Top {t.top_n} returned SKUs this week",
                    ["SKU", "ASIN", "lines", "units received"],
                    [[r["sku"], r["asin"], r["lines"], r["units"]] for r in top_skus],
                ),
                Section(
                    f"Top {t.top_n} return reasons this week",
                    ["ReBound reason", "Amazon reason", "lines", "units received"],
                    [
                        [r["reason"], r["amazon_reason"] or "(unmapped)", r["lines"], r["units"]]
                        for r in top_reasons
                    ],
                ),
                Section(
                    f"Reason mappings not reviewed in {t.mapping_review_days} days",
                    ["ReBound reason", "Amazon reason", "last changed", "by", "last reviewed", "days"],
                    [
                        [
                            r["rebound_reason"],
                            r["amazon_reason"],
                            r["updated_at"],
                            r["updated_by"],
                            r["reviewed_at"],
                            r["days"],
                        ]
                        for r in stale
                    ],
                ),
            ]
        if team == dark_owner:
            sections.append(
                Section(
                    "Unresolved dark returns",
                    [
                        "id",
                        "Amazon return",
                        "returns notice",
                        "SKU",
                        "ASIN",
                        "qty",
                        "returned",
                        "post-hoc ReBound return",
                        "age (days)",
                        "over SLA",
                    ],
                    [
                        [
                            d["exception_id"],
                            d["amazon_return_id"],
                            d["returns_notice"],
                            d["sku"],
                            d["asin"],
                            d["quantity"],
                            d["returned_at"],
                            d["linked_return_id"],
                            d["age_days"],
                            d["over_sla"],
                        ]
                        for d in dark
                        if d["owner"] == team
                    ][: t.list_limit],
                )
            )
        subject = (
            f"[returnledger] weekly review to {as_of:%Y-%m-%d} for {team}:"
            f" {counts['opened_this_week']} opened, {counts['resolved_this_week']} resolved,"
            f" {counts['open']} open"
        )
        intro = f"Owner team {team}, the 7 days to {as_of:%Y-%m-%d %H:%M} UTC."
        digests.append(_digest(team, subject, intro, counts, "weekly", as_of, sections))
    return digests
