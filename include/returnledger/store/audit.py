"""The audit log: the one writer of ``ledger.audit_log`` (who did what to which subject, and when).

Every human action and every automatic change that finance may ask about goes through here, so the
row shape (and its JSON detail encoding) is defined once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import psycopg

#: one entry: (action, subject, detail)
Entry = tuple[str, str, dict[str, Any]]


def detail_json(detail: dict[str, Any]) -> str:
    """The stored form of an entry's detail: sorted keys, anything else as its text."""
    return json.dumps(detail, default=str, sort_keys=True)


def record(conn: psycopg.Connection, entries: Iterable[Entry], *, at: datetime, actor: str) -> int:
    """Append entries, all by ``actor`` at ``at``, in one statement; returns how many."""
    rows = list(entries)
    if rows:
        conn.execute(
            "INSERT INTO ledger.audit_log (at, actor, action, subject, detail)"
            " SELECT %(at)s, %(actor)s, x.action, x.subject, x.detail::jsonb"
            " FROM unnest(%(action)s::text[], %(subject)s::text[], %(detail)s::text[])"
            " AS x(action, subject, detail)",
            {
                "at": at,
                "actor": actor,
                "action": [e[0] for e in rows],
                "subject": [e[1] for e in rows],
                "detail": [detail_json(e[2]) for e in rows],
            },
        )
    return len(rows)


def record_one(
    conn: psycopg.Connection, *, at: datetime, actor: str, action: str, subject: str, detail: dict[str, Any]
) -> None:
    """Append one entry."""
    record(conn, [(action, subject, detail)], at=at, actor=actor)
