"""The exception queue: raise once, with the owner team from configuration.

Owners and SLAs come from ``ledger.owner_team`` (loaded from
include/reference/owners.yaml). The partial unique index
``exception_open_once`` guarantees one open exception per type and subject,
so raising is idempotent: a rerun or a second detector adds nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg

from returnledger.models import ExceptionType

DEFAULT_OWNERS = {  # used only when owners.yaml has not been loaded (design.md defaults)
    "UNMAPPED_REASON_CODE": "operations", "SKU_MISMATCH": "operations", "INVALID_EVENT": "integration",
    "OUT_OF_SEQUENCE": "integration", "QUANTITY_MISMATCH": "warehouse", "AMAZON_REJECTED": "integration",
    "CREDIT_MISSING": "finance", "DARK_RETURN": "warehouse", "CREDIT_MISMATCH": "finance",
    "SYNC_STALLED": "integration",
}


@dataclass(frozen=True)
class NewException:
    type: ExceptionType
    subject_key: str          # 'RID|LINE', an amazon_return_id, or 'raw:<raw_id>'
    detail: str
    return_id: str | None = None
    line: int | None = None
    sku: str | None = None
    amazon_return_id: str | None = None
    raw_id: int | None = None


def line_subject(return_id: str, line: int) -> str:
    return f"{return_id}|{line}"


_RAISE_SQL = """
INSERT INTO ledger.exception (type, owner, subject_key, return_id, line, sku, amazon_return_id, raw_id,
                              detail, opened_at, opened_by_batch)
SELECT x.type, COALESCE(o.owner, x.default_owner), x.subject_key, x.return_id, x.line, x.sku,
       x.amazon_return_id, x.raw_id, x.detail, %(at)s, %(batch)s
FROM unnest(%(type)s::text[], %(default_owner)s::text[], %(subject_key)s::text[], %(return_id)s::text[],
            %(line)s::int[], %(sku)s::text[], %(amazon_return_id)s::text[], %(raw_id)s::bigint[],
            %(detail)s::text[])
     AS x(type, default_owner, subject_key, return_id, line, sku, amazon_return_id, raw_id, detail)
LEFT JOIN ledger.owner_team o ON o.exception_type = x.type
ON CONFLICT (type, subject_key) WHERE status = 'open' DO NOTHING
"""


def raise_exceptions(conn: psycopg.Connection, items: list[NewException], *, at: datetime,
                     batch_id: str) -> int:
    """Open the exceptions that are not already open; returns how many were opened."""
    if not items:
        return 0
    cols = {
        "type": [str(i.type) for i in items],
        "default_owner": [DEFAULT_OWNERS[str(i.type)] for i in items],
        "subject_key": [i.subject_key for i in items],
        "return_id": [i.return_id for i in items],
        "line": [i.line for i in items],
        "sku": [i.sku for i in items],
        "amazon_return_id": [i.amazon_return_id for i in items],
        "raw_id": [i.raw_id for i in items],
        "detail": [i.detail for i in items],
    }
    cur = conn.execute(_RAISE_SQL, {**cols, "at": at, "batch": batch_id})
    return cur.rowcount


def open_exception_ids(conn: psycopg.Connection, type_: ExceptionType, subject_keys: list[str]) -> dict[str, int]:
    """subject_key -> exception_id of the open exceptions of one type."""
    rows = conn.execute(
        "SELECT subject_key, exception_id FROM ledger.exception"
        " WHERE status = 'open' AND type = %s AND subject_key = ANY(%s)",
        (str(type_), subject_keys),
    ).fetchall()
    return dict(rows)


def resolve_open(conn: psycopg.Connection, type_: ExceptionType, subject_keys: list[str], *, at: datetime,
                 actor: str, resolution: str) -> int:
    """Mark open exceptions of one type and subjects resolved (system resolutions, e.g. a hold released)."""
    if not subject_keys:
        return 0
    cur = conn.execute(
        "UPDATE ledger.exception SET status = 'resolved', resolved_at = %s, resolved_by = %s, resolution = %s"
        " WHERE status = 'open' AND type = %s AND subject_key = ANY(%s)",
        (at, actor, resolution, str(type_), subject_keys),
    )
    return cur.rowcount
