"""The weekly review's digest per owner team: the week's trend per type, the backlog carried from earlier
months, top SKUs and reasons, stale mappings and dark returns (the daily digest is in digest_sections)."""

from __future__ import annotations

from datetime import datetime, timedelta

import psycopg
from psycopg.rows import dict_row

from returnledger.exception_types import offering
from returnledger.reports.digest_sections import Digest, Section, Thresholds, team_digest
from returnledger.reports.digest_sql import (
    BACKLOG_TREND_SQL,
    BY_TYPE_SQL,
    DARK_RETURNS_SQL,
    STALE_MAPPINGS_SQL,
    TOP_REASONS_SQL,
    TOP_SKUS_SQL,
    TREND_SQL,
    digest_teams,
    owners_by_type,
    query_params,
)


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
    mapping_owner = owners[min(offering("map"))]  # who adds reason mappings: the type the map action fixes
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
        digests.append(team_digest(team, subject, intro, counts, "weekly", as_of, sections))
    return digests
