"""Versioned schema migrations: ordered plain SQL files, each applied once.

``schema_migrations`` records what ran; running ``migrate`` twice changes
nothing. An advisory lock keeps two processes from migrating at once.

Two roles, neither with a server power (superuser, CREATEDB, CREATEROLE, replication, RLS bypass):

- the owner (``OWNER_ROLE``, ``returnledger migrate --owner``): owns the ``ledger`` schema and every
  object in it. Nobody logs in as it: migrations run as an administrator and hand what they create to it
  (CREATE SCHEMA needs a right on the database the owner does not get), so only the migration job, which
  holds the administrator's credentials, ever changes the schema.
- the runtime role (``LEDGER_ROLE``, ``--runtime-role``, password from RETURNLEDGER_LEDGER_PASSWORD):
  what the DAGs, the workers and the console log in as. It reads and writes rows and owns nothing, so it
  cannot alter or drop a table nor disable or drop the append-only triggers; the few schema changes the
  runs make (reconciliation partitions, statistics) go through the owner's functions of migration 0018.

Later runs without roles hand new objects to the schema's owner and grant the runtime roles (those with
USAGE on the schema) their rights on them.
"""

from __future__ import annotations

import hashlib
from importlib import resources

import psycopg
from psycopg import sql

from returnledger.store.db import SCHEMA, connect, resolve_dsn

_LOCK_ID = 0x5E7B0D  # advisory lock id for migrations
#: the runtime role: the DAGs, workers and console use it for the ledger (compose file, local cluster)
LEDGER_ROLE = "returnledger"
#: the role that owns the ledger schema and everything in it; nobody logs in as it
OWNER_ROLE = "returnledger_owner"


def migration_files() -> list[tuple[str, str]]:
    folder = resources.files("returnledger.store") / "migrations"
    files = sorted((p for p in folder.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name)
    return [(p.name, p.read_text()) for p in files]


def migrate(
    dsn: str | None = None,
    *,
    owner: str | None = None,
    runtime: str | None = None,
    runtime_password: str | None = None,
) -> list[str]:
    """Apply pending migrations; returns the names applied now.

    ``owner``: the role that owns the ledger (created NOLOGIN if missing; ``OWNER_ROLE`` when only
    ``runtime`` is given): it gets the schema and everything the migrations create in it. ``runtime``:
    the login role the runs use (created if missing, see ``ensure_role``): rows only, no ownership.
    Without them, a schema owned by another role the connecting user may act as (an earlier ``owner``)
    keeps that owner for what the migrations add, and its runtime roles get their rights on it.
    """
    if runtime and owner is None:
        owner = OWNER_ROLE
    if runtime and runtime == owner:
        raise ValueError(
            f"the runtime role {runtime!r} cannot also own the ledger: a role that owns the tables can "
            "drop them and their append-only triggers"
        )
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
                ensure_owner_role(conn, owner)
                if runtime:
                    ensure_role(conn, runtime, runtime_password)
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
            seed_exception_types(conn)
            if run_as and applied_now:  # what the migrations created belongs to the ledger's owner too
                hand_over(conn, run_as)
            for role in sorted({*([runtime] if runtime else []), *_runtime_roles(conn)}):
                grant_runtime(conn, role)
            conn.commit()
        finally:
            conn.rollback()  # nothing after the commit above; a failed migration's transaction otherwise
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))
            conn.commit()
    return applied_now


def seed_exception_types(conn: psycopg.Connection) -> int:
    """Upsert the exception-type registry (returnledger.exception_types) into ``ledger.exception_type``,
    whose rows the exception tables' foreign keys name (migration 0020); idempotent, run by every
    ``migrate``. Returns the rows added or changed. A type removed from the registry keeps its row (old
    exceptions still name it)."""
    from returnledger.exception_types import KINDS

    (table,) = conn.execute("SELECT to_regclass(%s)", (f"{SCHEMA}.exception_type",)).fetchone() or (None,)
    if table is None:
        return 0
    rows = [(k.code, k.subject.value, k.holds.value, k.released_by.value, k.summary) for k in KINDS.values()]
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            f"""INSERT INTO {SCHEMA}.exception_type AS t (code, subject, holds, released_by, summary)
                VALUES (%s, %s, %s, %s, %s)
                ON CONFLICT (code) DO UPDATE SET subject = EXCLUDED.subject, holds = EXCLUDED.holds,
                       released_by = EXCLUDED.released_by, summary = EXCLUDED.summary
                WHERE (t.subject, t.holds, t.released_by, t.summary)
                      IS DISTINCT FROM (EXCLUDED.subject, EXCLUDED.holds, EXCLUDED.released_by,
                                        EXCLUDED.summary)""",
            rows,
        )
        changed = cur.rowcount
    return max(changed, 0)


def _acting_owner(conn: psycopg.Connection) -> str | None:
    """The ledger schema's owner when it is another role the connecting user may SET ROLE to."""
    row = conn.execute(
        """SELECT pg_get_userbyid(nspowner), pg_get_userbyid(nspowner) <> current_user
                                 AND pg_has_role(current_user, nspowner, 'MEMBER')
                            FROM pg_namespace WHERE nspname = %s""",
        (SCHEMA,),
    ).fetchone()
    return row[0] if row and row[1] else None


def _runtime_roles(conn: psycopg.Connection) -> list[str]:
    """Roles other than the owner that may use the ledger schema (the runtime roles an earlier run set)."""
    return [
        r[0]
        for r in conn.execute(
            """SELECT DISTINCT pg_get_userbyid(a.grantee) FROM pg_namespace n, aclexplode(n.nspacl) a
                WHERE n.nspname = %s AND a.privilege_type = 'USAGE' AND a.grantee <> n.nspowner
                  AND a.grantee <> 0""",
            (SCHEMA,),
        )
    ]


def ensure_owner_role(conn: psycopg.Connection, role: str) -> None:
    """The ledger's owner: a role nobody logs in as, without any server power (created if missing)."""
    ident = sql.Identifier(role)
    found = conn.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    if found and found[0]:
        # roles belong to the whole server: turning a login role into the owner would lock out whoever
        # uses it (an earlier deployment's runtime role, say); refuse and name it
        raise ValueError(
            f"role {role!r} can log in, so it cannot be the ledger's owner (nobody logs in as the owner); "
            f"give another --owner, e.g. {OWNER_ROLE}, and {role!r} as --runtime-role"
        )
    if not found:
        try:
            with conn.transaction():
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(ident))
        except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
            pass  # created meanwhile by a migration of another database on the same server
    conn.execute(
        sql.SQL(
            "ALTER ROLE {} NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
            " PASSWORD NULL"
        ).format(ident)
    )


def grant_runtime(conn: psycopg.Connection, role: str) -> None:
    """The runtime role's rights: use the schema, read and write rows, use the sequences, call the
    functions; never CREATE in the schema, TRUNCATE, REFERENCES or TRIGGER (idempotent)."""
    args = {"schema": sql.Identifier(SCHEMA), "role": sql.Identifier(role)}
    for statement in (
        "GRANT USAGE ON SCHEMA {schema} TO {role}",
        "REVOKE CREATE ON SCHEMA {schema} FROM {role}",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}",
        "REVOKE TRUNCATE, REFERENCES, TRIGGER ON ALL TABLES IN SCHEMA {schema} FROM {role}",
        "GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {schema} TO {role}",
        "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {schema} TO {role}",
    ):
        conn.execute(sql.SQL(statement).format(**args))


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


def reset(dsn: str | None = None, *, database: str) -> None:
    """Drop the ledger schema of ``database`` and everything in it. The caller names the database (there
    is no default): a reset aimed at a DSN it did not mean refuses instead of wiping that ledger."""
    from returnledger.store.db import database_name

    actual = database_name(resolve_dsn(dsn))
    if not database or database != actual:
        raise ValueError(
            f"reset drops every ledger row of database {actual!r}: name that database to confirm"
            f" (--database {actual}); {database!r} was given"
        )
    with connect(dsn) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        conn.commit()


__all__ = [
    "LEDGER_ROLE",
    "OWNER_ROLE",
    "ensure_database",
    "ensure_owner_role",
    "ensure_role",
    "grant_runtime",
    "hand_over",
    "migrate",
    "migration_files",
    "psycopg",
    "reset",
]
