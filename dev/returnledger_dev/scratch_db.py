"""Scratch databases for demos, benches and tests: made on a server, marked as scratch, wiped or dropped
only when the mark is there; and the same database as Airflow's metadata URL or an Airflow connection.

Dev tooling, not the product: the ledger itself is reached through ``returnledger.store.db``.
"""

from __future__ import annotations

import os
import re
import uuid

import psycopg
import psycopg.sql

from returnledger.store.db import database_name


def with_database(dsn: str, dbname: str) -> str:
    """The same server DSN pointed at another database."""
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    info["dbname"] = dbname
    return psycopg.conninfo.make_conninfo("", **info)


#: how the comment starts that a demo or test run writes on the database it creates for itself: only a
#: database carrying it may be wiped or reused by a demo or a test (``require_scratch``)
SCRATCH_MARK = "returnledger scratch database"


class NotScratchDatabase(RuntimeError):
    """A demo or test was pointed at a database it did not create (it may be a real ledger)."""


def create_scratch_database(
    server_dsn: str,
    prefix: str = "returnledger_test",
    *,
    created_by: str = "a test run",
    template: str | None = None,
) -> str:
    """A fresh, empty database on the server, uniquely named and marked as a scratch database (a COMMENT
    naming who made it); returns its DSN. Two runs at once never get the same one. With ``template`` (a
    scratch database's DSN) it is a file-level copy of that one instead: its other sessions are ended first,
    as PostgreSQL copies only a database nobody is connected to."""
    from datetime import UTC, datetime

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    assert re.fullmatch(r"[a-z0-9_]+", name)
    mark = (
        f"{SCRATCH_MARK}: created by {created_by} (pid {os.getpid()}, {datetime.now(UTC):%Y-%m-%d %H:%M}"
        " UTC); demos and tests may wipe it, nothing else lives here"
    )
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        if template is None:
            conn.execute(f'CREATE DATABASE "{name}"')
        else:
            require_scratch(template, action="copy")
            source = database_name(template)
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (source,),
            )
            conn.execute(
                psycopg.sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    psycopg.sql.Identifier(name), psycopg.sql.Identifier(source)
                )
            )
        conn.execute(
            psycopg.sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                psycopg.sql.Identifier(name), psycopg.sql.Literal(mark)
            )
        )
    return with_database(server_dsn, name)


def require_scratch(dsn: str, *, action: str) -> None:
    """Refuse (NotScratchDatabase, saying which database and why) unless a demo or test created it."""
    name = database_name(dsn)
    host = psycopg.conninfo.conninfo_to_dict(dsn).get("host") or "the default server"
    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            row = conn.execute(
                "SELECT shobj_description(oid, 'pg_database') FROM pg_database"
                " WHERE datname = current_database()"
            ).fetchone()
    except psycopg.OperationalError as exc:
        raise NotScratchDatabase(
            f"refusing to {action} database {name!r} on {host}: cannot reach it ({exc})"
        ) from exc
    mark = row[0] if row else None
    if not (mark or "").startswith(SCRATCH_MARK):
        raise NotScratchDatabase(
            f"refusing to {action} database {name!r} on {host}: no demo or test created it (its comment"
            f" {'is ' + repr(mark[:120]) if mark else 'is empty'}, not {SCRATCH_MARK!r}), so it may be a real"
            " ledger. A demo creates a database of its own and only ever wipes that one"
        )


def drop_database(server_dsn: str, dsn: str) -> None:
    name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _params(dsn: str) -> dict[str, str]:
    """The DSN's parameters; parsed from text, every value is a string."""
    return {k: str(v) for k, v in psycopg.conninfo.conninfo_to_dict(dsn).items() if v is not None}


def sqlalchemy_url(dsn: str) -> str:
    """The same database as a SQLAlchemy URL (Airflow's metadata DB), Unix sockets included."""
    from urllib.parse import quote

    i = _params(dsn)
    host, port = i.get("host") or "127.0.0.1", i.get("port") or 5432
    auth = quote(i.get("user") or "postgres") + (":" + quote(i["password"]) if i.get("password") else "")
    if host.startswith("/"):  # embedded server: a socket folder, passed as a query parameter
        return f"postgresql+psycopg2://{auth}@/{i.get('dbname')}?host={quote(host)}&port={port}"
    return f"postgresql+psycopg2://{auth}@{host}:{port}/{i.get('dbname')}"


def airflow_connection_json(dsn: str) -> str:
    """The same database as an Airflow connection in JSON form (for AIRFLOW_CONN_RETURNS_DB)."""
    import json

    i = _params(dsn)
    conn: dict[str, str | int] = {
        "conn_type": "postgres",
        "host": i.get("host") or "127.0.0.1",
        "port": int(i.get("port") or 5432),
        "login": i.get("user") or "postgres",
        "schema": i.get("dbname") or "postgres",
    }
    if i.get("password"):
        conn["password"] = i["password"]
    return json.dumps(conn)
