"""The console's entries in Airflow's navigation (Browse menu): "Find a return", and one queue per owner
team whose name carries the team's overdue and open counts ("Queue: operations (3 overdue / 7 open)").

Airflow's UI reads the plugin's ``external_views`` from /api/v2/plugins when it loads; the plugin
(plugins/returnledger_console.py) asks ``nav_views`` each time, so the counts are those of the moment
(kept ``CACHE_SECONDS`` so a busy UI does not query the ledger on every page load). When the ledger
cannot be read the entries stay, without counts: the navigation never breaks because of the ledger.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)

#: how long the navigation's counts are kept before the ledger is asked again
CACHE_SECONDS = 30.0
_cache: dict[str, Any] = {"at": None, "counts": None}


def _ledger_counts() -> dict[str, dict[str, int]]:
    from returnledger.console.app import default_dsn
    from returnledger.console.teams import team_counts
    from returnledger.store.db import connect

    with connect(default_dsn(), connect_timeout=3) as conn:  # a ledger that does not answer: no counts
        conn.execute("SET LOCAL statement_timeout = '2s'")
        return team_counts(conn, datetime.now(UTC))


def counts(
    read: Callable[[], dict] = _ledger_counts, now: Callable[[], float] = time.monotonic
) -> dict | None:
    """The teams' counts, at most ``CACHE_SECONDS`` old; None when the ledger cannot be read."""
    at = _cache["at"]
    if at is not None and now() - at < CACHE_SECONDS:
        return _cache["counts"]
    try:
        found = read()
    except Exception as exc:  # the navigation must never break because of the ledger
        log.warning("returns console navigation: no counts (%s: %s)", type(exc).__name__, exc)
        found = None
    _cache.update(at=now(), counts=found)
    return found


def queue_label(team: str, c: dict[str, int] | None) -> str:
    if c is None:
        return f"Queue: {team}"
    return f"Queue: {team} ({c['overdue']} overdue / {c['open']} open)"


def nav_views(url_prefix: str, read: Callable[[], dict] = _ledger_counts) -> list[dict[str, Any]]:
    """The Browse-menu entries: Find a return, Team queues, then each team's queue with its counts."""
    from returnledger.reference.owners import default_owners

    found = counts(read)
    teams = sorted(found) if found else sorted({o.owner for o in default_owners().values()})
    views = [
        {
            "name": "Find a return",
            "href": f"{url_prefix}/returns",
            "url_route": "find-a-return",
            "destination": "nav",
            "category": "browse",
        }
    ]
    for team in teams:
        views.append(
            {
                "name": queue_label(team, found.get(team) if found else None),
                "href": f"{url_prefix}/teams/{team}",
                "url_route": f"returns-queue-{team}",
                "destination": "nav",
                "category": "browse",
            }
        )
    return views
