"""Versioned schema migrations: ordered plain SQL files, each applied once.

``schema_migrations`` records what ran; running ``migrate`` twice changes
nothing. An advisory lock keeps two processes from migrating at once.

Deployments reach the ledger as a least-privilege role (``LEDGER_ROLE``): a login role with no
superuser, CREATEDB or CREATEROLE right that owns the ``ledger`` schema and everything in it, and
nothing else. ``migrate(dsn, owner=...)`` (``returnledger migrate --owner``, run by an administrator)
creates it and hands it the schema and every object the migrations create (CREATE SCHEMA needs a right
on the database that the role does not get, so migrations run as the administrator and ownership moves
after). Later runs without ``owner`` hand new objects to the schema's owner as well.
"""

from __future__ import annotations

import hashlib
from importlib import resources

import psycopg
from psycopg import sql

from returnledger.store.db import SCHEMA, connect, resolve_dsn

_LOCK_ID = 0x5E7B0D  # advisory lock id for migrations
#: the role the DAGs use for the ledger in the compose file and the local cluster
LEDGER_ROLE = "returnledger"


def migration_files() -> list[tuple[str, str]]:
    folder = resources.files("returnledger.store") / "migrations"
    files = sorted((p for p in folder.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name)
    return [(p.name, p.read_text()) for p in files]


def migrate(
    dsn: str | None = None, *, owner: str | None = None, owner_password: str | None = None
) -> list[str]:
    """Apply pending migrations; returns the names applied now.

    ``owner``: the role that owns the ledger (created if missing, see ``ensure_role``): it gets the schema
    and everything the migrations create in it. Without it, a schema owned by another role the connecting
    user may act as (an earlier ``owner``) keeps that owner for what the migrations add.
    """
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
            if owner:
                ensure_role(conn, owner, owner_password)
                hand_over(conn, owner)
                conn.commit()
            run_as = owner or _acting_owner(conn)
            done = {r[0]: r[1] for r in conn.execute(f"SELECT name, sha256 FROM {SCHEMA}.schema_migrations")}
            for name, sql_text in migration_files():
                digest = hashlib.sha256(sql_text.encode()).hexdigest()
                if name in done:
                    if done[name] != digest:
                        raise RuntimeError(
                            f"migration {name} changed after it was applied; add a new file instead"
                        )
                    continue
                with conn.transaction():
                    conn.execute(sql_text)
                    conn.execute(
                        f"INSERT INTO {SCHEMA}.schema_migrations (name, sha256) VALUES (%s, %s)",
                        (name, digest),
                    )
                applied_now.append(name)
            if run_as and applied_now:  # what the migrations created belongs to the ledger's owner too
                hand_over(conn, run_as)
            conn.commit()
        finally:
            conn.rollback()  # nothing after the commit above; a failed migration's transaction otherwise
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))
            conn.commit()
    return applied_now


def _acting_owner(conn: psycopg.Connection) -> str | None:
    """The ledger schema's owner when it is another role the connecting user may SET ROLE to."""
    row = conn.execute(
        """SELECT pg_get_userbyid(nspowner), pg_get_userbyid(nspowner) <> current_user
                                 AND pg_has_role(current_user, nspowner, 'MEMBER')
                            FROM pg_namespace WHERE nspname = %s""",
        (SCHEMA,),
    ).fetchone()
    return row[0] if row and row[1] else None


def ensure_role(conn: psycopg.Connection, role: str, password: str | None = None) -> None:
    """A login role without superuser, CREATEDB, CREATEROLE, replication or RLS bypass (created if missing).

    Roles belong to the whole server, so two databases being migrated at once may both try to create it.
    """
    ident = sql.Identifier(role)
    if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
        try:
            with conn.transaction():
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(ident))
        except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
            pass  # created meanwhile by a migration of another database on the same server
    conn.execute(
        sql.SQL("ALTER ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS").format(
            ident
        )
    )
    if password:
        conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(ident, sql.Literal(password)))
    conn.execute(
        sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(
            sql.Identifier(conn.info.dbname), ident
        )
    )


_OWNED_ELSEWHERE_SQL = """
SELECT CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'S' THEN 'SEQUENCE'
                      ELSE 'TABLE' END, c.relname
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p', 'f', 'v', 'm', 'S')
   AND pg_get_userbyid(c.relowner) <> %(role)s
   -- sequences of serial/identity columns follow their table
   AND NOT (c.relkind = 'S' AND EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                                         AND d.objid = c.oid AND d.deptype IN ('a', 'i')))
"""
_FUNCTIONS_SQL = """
SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = %(schema)s AND pg_get_userbyid(p.proowner) <> %(role)s
"""
_TYPES_SQL = """
SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
 WHERE n.nspname = %(schema)s AND t.typtype IN ('e', 'd') AND pg_get_userbyid(t.typowner) <> %(role)s
"""


def hand_over(conn: psycopg.Connection, role: str) -> int:
    """Make ``role`` the owner of the ledger schema and of every table, view, sequence, function and type
    in it (idempotent); returns how many objects changed owner."""
    args = {"schema": SCHEMA, "role": role}
    to = sql.Identifier(role)
    conn.execute(sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(sql.Identifier(SCHEMA), to))
    n = 0
    for kind, name in conn.execute(_OWNED_ELSEWHERE_SQL, args).fetchall():
        conn.execute(
            sql.SQL("ALTER {} {}.{} OWNER TO {}").format(
                sql.SQL(kind), sql.Identifier(SCHEMA), sql.Identifier(name), to
            )
        )
        n += 1
    for (signature,) in conn.execute(_FUNCTIONS_SQL, args).fetchall():
        conn.execute(sql.SQL("ALTER FUNCTION {} OWNER TO {}").format(sql.SQL(signature), to))
        n += 1
    for (name,) in conn.execute(_TYPES_SQL, args).fetchall():
        conn.execute(
            sql.SQL("ALTER TYPE {}.{} OWNER TO {}").format(sql.Identifier(SCHEMA), sql.Identifier(name), to)
        )
        n += 1
    return n


def ensure_database(dsn: str | None = None) -> bool:
    """Create the DSN's database when the server does not have it yet (a fresh server, e.g. in compose);
    True when it was created. Connects to the server's ``postgres`` database to do so."""
    dsn = resolve_dsn(dsn)
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    name = str(info.get("dbname") or "postgres")
    server = psycopg.conninfo.make_conninfo("", **{**info, "dbname": "postgres"})
    with psycopg.connect(server, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return False
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.errors.DuplicateDatabase:
            return False
    return True


def reset(dsn: str | None = None) -> None:
    """Drop the ledger schema (demo runs start clean)."""
    with connect(dsn) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        conn.commit()


__all__ = [
    "LEDGER_ROLE",
    "ensure_database",
    "ensure_role",
    "hand_over",
    "migrate",
    "migration_files",
    "psycopg",
    "reset",
]
