"""Shared fixtures: one fresh PostgreSQL database per test session.

The server comes from RETURNLEDGER_TEST_SERVER_DSN, else RETURNLEDGER_DSN,
else the embedded PostgreSQL under .local/ (started on demand). The session
database is created empty, migrated, and dropped at the end.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def _server_dsn() -> str:
    from returnledger.store import db

    return (os.environ.get("RETURNLEDGER_TEST_SERVER_DSN") or os.environ.get(db.ENV_DSN)
            or db.embedded_dsn())


@pytest.fixture(scope="session")
def pg_server() -> str:
    return _server_dsn()


@pytest.fixture(scope="session")
def db_dsn(pg_server):
    """DSN of this session's own fresh, migrated database (dropped afterwards)."""
    from returnledger.store import db, migrate

    dsn = db.create_scratch_database(pg_server)
    migrate.migrate(dsn)
    yield dsn
    db.drop_database(pg_server, dsn)


@pytest.fixture
def fresh_db(pg_server):
    """A database of its own for a test that needs an empty ledger."""
    from returnledger.store import db, migrate

    dsn = db.create_scratch_database(pg_server)
    migrate.migrate(dsn)
    yield dsn
    db.drop_database(pg_server, dsn)


@pytest.fixture
def conn(db_dsn):
    """A connection to the session database, rolled back after the test."""
    from returnledger.store import db

    c = db.connect(db_dsn)
    try:
        yield c
    finally:
        c.rollback()
        c.close()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.exists():
        pytest.skip("../shared is not beside the checkout")
    return SHARED
