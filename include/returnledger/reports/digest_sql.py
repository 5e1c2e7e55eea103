"""The queries behind the operating digests, each computed as of the run date, and who gets which.

Every number is *as of* the run's date (the data interval end), never the wall clock: an exception
counts as open at ``as_of`` when it was opened before and not yet resolved then. It is *carried over*
when it was opened in a month before the month of ``as_of`` (the backlog from earlier months, counted
apart from the month's own).

Lists are in the order of what they are about (time, type, subject); the exception id, which only says
in which order exceptions were raised (answers polled concurrently arrive in any order), breaks ties
last, so the same ledger gives the same digest whichever worker raised what first.
"""

from __future__ import annotations

from datetime import datetime

import psycopg

from returnledger.exception_queue.sla import SLA_CTE, overdue_sql, sla_params
from returnledger.reference.owners import default_owners, owner_teams

#: every exception opened by ``as_of`` with its SLA, whether it was open then, its age and SLA breach
_EXCEPTIONS_AS_OF = (
    "WITH "
    + SLA_CTE
    + """,
e AS (
    SELECT x.*, sla.sla_days,
           (x.resolved_at IS NULL OR x.resolved_at > %(as_of)s) AS open_at,
           x.opened_at < date_trunc('month', %(as_of)s::timestamptz, 'UTC') AS carried_over,
           floor(extract(epoch FROM (%(as_of)s - x.opened_at)) / 86400)::int AS age_days,
           """
    + overdue_sql("x", "%(as_of)s")
    + """ AS over_sla
    FROM ledger.exception x JOIN sla ON sla.type = x.type
    WHERE x.opened_at <= %(as_of)s
)
"""
)

BY_TYPE_SQL = (
    _EXCEPTIONS_AS_OF
    + """
SELECT owner, type,
       count(*) FILTER (WHERE open_at) AS open,
       count(*) FILTER (WHERE open_at AND carried_over) AS carried_over,
       count(*) FILTER (WHERE opened_at > %(since)s) AS new,
       count(*) FILTER (WHERE NOT open_at AND resolved_at > %(since)s) AS resolved,
       count(*) FILTER (WHERE carried_over AND NOT open_at AND resolved_at > %(since)s)
           AS carried_over_resolved,
       count(*) FILTER (WHERE open_at AND over_sla) AS sla_breached,
       count(*) FILTER (WHERE open_at AND age_days >= 7) AS aged_over_7d,
       max(age_days) FILTER (WHERE open_at) AS oldest_days
FROM e
GROUP BY owner, type
HAVING count(*) FILTER (WHERE open_at OR opened_at > %(since)s OR resolved_at > %(since)s) > 0
ORDER BY owner, type
"""
)

OPEN_LIST_SQL = (
    _EXCEPTIONS_AS_OF
    + """, ranked AS (
    SELECT e.*, row_number() OVER (
        PARTITION BY owner ORDER BY over_sla DESC, opened_at, type, subject_key, exception_id
    ) AS rn
    FROM e WHERE open_at
)
SELECT exception_id, owner, type, subject_key, detail, opened_at, age_days, sla_days, over_sla, carried_over
FROM ranked WHERE rn <= %(limit)s
ORDER BY owner, over_sla DESC, opened_at, type, subject_key, exception_id
"""
)

NEW_LIST_SQL = (
    "SELECT exception_id, owner, type, subject_key, detail, opened_at"
    " FROM ledger.exception WHERE opened_at > %s AND opened_at <= %s"
    " ORDER BY opened_at, type, subject_key, exception_id"
)

TREND_SQL = """
WITH weeks AS (
    SELECT n, %(as_of)s - make_interval(days => 7 * (n + 1)) AS w_start,
           %(as_of)s - make_interval(days => 7 * n) AS w_end
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

#: per owner and type, the exceptions open at each of the last weeks' ends that were opened in a month
#: before that week end's month: the backlog from earlier months, week by week (falling = shrinking)
BACKLOG_TREND_SQL = """
WITH weeks AS (
    SELECT n, %(as_of)s - make_interval(days => 7 * n) AS w_end
    FROM generate_series(0, %(weeks)s - 1) AS n
)
SELECT x.owner, x.type, w.n, count(*) AS open
FROM ledger.exception x
JOIN weeks w ON x.opened_at < date_trunc('month', w.w_end, 'UTC')
            AND (x.resolved_at IS NULL OR x.resolved_at > w.w_end)
GROUP BY x.owner, x.type, w.n
ORDER BY x.owner, x.type, w.n
"""

UNDISPOSITIONED_SQL = """
SELECT l.return_id, l.line, o.returns_notice, l.sku, l.state, l.quantity_received, l.received_at,
       floor(extract(epoch FROM (%(as_of)s - l.received_at)) / 86400)::int AS days
FROM ledger.return_line l JOIN ledger.return_order o USING (return_id)
WHERE l.state IN ('RECEIVED', 'GRADED') AND l.received_at <= %(as_of)s - make_interval(days => %(days)s)
ORDER BY l.received_at, l.return_id, l.line
"""

TOP_SKUS_SQL = """
SELECT l.sku, s.asin, count(*) AS lines, sum(l.quantity_received) AS units
FROM ledger.return_line l LEFT JOIN ledger.sku s USING (sku)
WHERE l.received_at > %(since)s AND l.received_at <= %(as_of)s
GROUP BY l.sku, s.asin
ORDER BY units DESC, lines DESC, l.sku
LIMIT %(top)s
"""

TOP_REASONS_SQL = """
SELECT l.reason, m.amazon_reason, count(*) AS lines, sum(l.quantity_received) AS units
FROM ledger.return_line l LEFT JOIN ledger.reason_mapping m ON m.rebound_reason = l.reason AND m.active
WHERE l.received_at > %(since)s AND l.received_at <= %(as_of)s
GROUP BY l.reason, m.amazon_reason
ORDER BY units DESC, lines DESC, l.reason
LIMIT %(top)s
"""

STALE_MAPPINGS_SQL = """
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

DARK_RETURNS_SQL = (
    _EXCEPTIONS_AS_OF
    + """
SELECT e.exception_id, e.owner, e.amazon_return_id, a.returns_notice, a.sku, a.asin, a.quantity,
       a.returned_at, a.linked_return_id, e.age_days, e.over_sla
FROM e LEFT JOIN ledger.amazon_return a ON a.amazon_return_id = e.amazon_return_id
WHERE e.type = 'DARK_RETURN' AND e.open_at
ORDER BY e.opened_at, e.amazon_return_id, e.exception_id
"""
)


def owners_by_type(conn: psycopg.Connection) -> dict[str, str]:
    """exception type -> owner team (configuration first, design defaults second)."""
    owners = {t: o.owner for t, o in default_owners().items()}
    owners.update({t: o.owner for t, o in owner_teams(conn).items()})
    return owners


def digest_teams(conn: psycopg.Connection, as_of: datetime) -> list[str]:
    """Every team that gets a digest: each configured owner, and any owner of an exception by then."""
    teams = set(owners_by_type(conn).values())
    teams.update(
        r[0]
        for r in conn.execute("SELECT DISTINCT owner FROM ledger.exception WHERE opened_at <= %s", (as_of,))
    )
    return sorted(teams)


def query_params(as_of: datetime, **extra) -> dict:
    """The SLA parameters every exception query takes, the run date and the query's own."""
    return {**sla_params(), "as_of": as_of, **extra}
