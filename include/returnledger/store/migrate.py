"""Versioned schema migrations: ordered plain SQL files, each applied once.

``schema_migrations`` records what ran; running ``migrate`` twice changes
nothing. An advisory lock keeps two processes from migrating at once.
"""
from __future__ import annotations

import hashlib
from importlib import resources

import psycopg

from returnledger.store.db import SCHEMA, connect

_LOCK_ID = 0x5E7B0D  # advisory lock id for migrations


def migration_files() -> list[tuple[str, str]]:
    folder = resources.files("returnledger.store") / "migrations"
    files = sorted(p for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(p.name, p.read_text()) for p in files]


def migrate(dsn: str | None = None) -> list[str]:
    """Apply pending migrations; returns the names applied now."""
    applied_now: list[str] = []
    with connect(dsn) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_ID,))
        try:
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {SCHEMA}.schema_migrations ("
                " name text PRIMARY KEY, sha256 text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            conn.commit()
            done = {r[0]: r[1] for r in conn.execute(f"SELECT name, sha256 FROM {SCHEMA}.schema_migrations")}
            for name, sql in migration_files():
                digest = hashlib.sha256(sql.encode()).hexdigest()
                if name in done:
                    if done[name] != digest:
                        raise RuntimeError(f"migration {name} changed after it was applied; add a new file instead")
                    continue
                with conn.transaction():
                    conn.execute(sql)
                    conn.execute(f"INSERT INTO {SCHEMA}.schema_migrations (name, sha256) VALUES (%s, %s)",
                                 (name, digest))
                applied_now.append(name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))
            conn.commit()
    return applied_now


def reset(dsn: str | None = None) -> None:
    """Drop the ledger schema (demo runs start clean)."""
    with connect(dsn) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        conn.commit()


__all__ = ["migrate", "reset", "migration_files", "psycopg"]
