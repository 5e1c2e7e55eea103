"""Where a reconciliation's rows live: one partition of ``ledger.recon_result`` per result key.

A key's first run writes its rows into a bare table, builds the primary key once and attaches the table
as the key's partition: for a million rows that costs a fraction of maintaining the index row by row. A
later run of the key finds the partition and writes only the rows that differ (returnledger.reconciliation
.match). Expired daily results go with their partition. Partition names come from
``ledger.recon_partition_name`` (migration 0015), the one definition.
"""

from __future__ import annotations

import re

from psycopg import sql

_PARTITIONS_SQL = """
SELECT c.relname, pg_get_expr(c.relpartbound, c.oid)
  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
 WHERE i.inhparent = 'ledger.recon_result'::regclass
"""
_BOUND = re.compile(r"^FOR VALUES IN \('((?:[^']|'')*)'\)$")


def partition_name(conn, key: str) -> str:
    return conn.execute("SELECT ledger.recon_partition_name(%s)", (key,)).fetchall()[0][0]


def partitions(conn) -> dict[str, str]:
    """The result keys that have a partition, with the partition's table name."""
    found = {}
    for table, bound in conn.execute(_PARTITIONS_SQL).fetchall():
        m = _BOUND.match(bound or "")
        if m:
            found[m.group(1).replace("''", "'")] = table
    return found


def has_partition(conn, key: str) -> bool:
    return key in partitions(conn)


def load_partition(conn, key: str, rows_sql: str, columns: str, params: dict) -> int:
    """Create the key's partition from ``rows_sql`` (a query producing ``columns``); returns the rows.

    The table is filled bare, then gets its primary key and a CHECK matching the partition bound (so
    ATTACH skips its validating scan), then is attached. All in the caller's transaction: a failure
    leaves no partition behind.
    """
    # the partition's DDL runs as the ledger's owner (migration 0018): the runtime role owns no table
    name = conn.execute("SELECT ledger.recon_partition_create(%s)", (key,)).fetchall()[0][0]
    table = sql.Identifier("ledger", name)
    rows = conn.execute(sql.SQL(f"INSERT INTO {{}} ({columns}) {rows_sql}").format(table), params).rowcount
    conn.execute("SELECT ledger.recon_partition_attach(%s)", (key,))
    return rows


def analyze_partition(conn, key: str) -> None:
    """Fresh statistics for one key's rows (ANALYZE of the parent would read every partition)."""
    analyze(conn, f"ledger.{partition_name(conn, key)}")


def analyze(conn, table: str) -> None:
    """ANALYZE a ledger table as its owner (the runtime role owns none; migration 0018)."""
    conn.execute("SELECT ledger.analyze_table(%s::regclass)", (table,))


def drop_partitions(conn, keys, existing: dict[str, str] | None = None) -> int:
    """Drop the partitions (and so the results) of ``keys``; returns how many were dropped.
    ``existing``: ``partitions(conn)`` when the caller has just read it."""
    existing = partitions(conn) if existing is None else existing
    dropped = 0
    for key in keys:
        if (
            key in existing
            and conn.execute("SELECT ledger.recon_partition_drop(%s)", (key,)).fetchall()[0][0]
        ):
            dropped += 1
    return dropped


def expire_daily(conn, oldest: str) -> int:
    """Drop the daily rolling-check results older than the key ``oldest`` ('daily:YYYY-MM-DD')."""
    existing = partitions(conn)
    return drop_partitions(conn, [k for k in existing if k.startswith("daily:") and k < oldest], existing)
