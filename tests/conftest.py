"""Shared fixtures: one fresh PostgreSQL database per test session.

The server comes from RETURNLEDGER_TEST_SERVER_DSN, else RETURNLEDGER_DSN,
else the embedded PostgreSQL under .local/ (started on demand). The session
database is created empty, migrated, and dropped at the end.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "false")

ROOT = Path(__file__).resolve().parents[1]
#: the shipped scenario months (small-month, small-month-faults) with their expected outcomes
SCENARIOS = ROOT / "scenarios"
#: generated months with their expected outcomes, committed (see tests/fixtures/scenarios/README.md)
GENERATED = ROOT / "tests" / "fixtures" / "scenarios"


@pytest.fixture(autouse=True)
def _fresh_airflow_token_keys():
    """Each test signs and checks console tokens under the JWT secret it sets: Airflow's auth manager caches
    its token signer and validator per class (``functools.cache``), so one built under an earlier test's
    secret would refuse this test's tokens ("Invalid JWT token", depending on the order of the tests).
    Cleared only where Airflow's auth manager is already imported (no import for the other tests)."""
    import sys

    def clear() -> None:
        base = sys.modules.get("airflow.api_fastapi.auth.managers.base_auth_manager")
        if base is not None:
            base.BaseAuthManager._get_token_signer.cache_clear()
            base.BaseAuthManager._get_token_validator.cache_clear()

    clear()
    yield
    clear()


def _server_dsn() -> str:
    from returnledger.store import db

    return os.environ.get("RETURNLEDGER_TEST_SERVER_DSN") or os.environ.get(db.ENV_DSN) or db.embedded_dsn()


@pytest.fixture(scope="session")
def pg_server():
    from returnledger.store import db

    yield _server_dsn()
    # while pytest's streams are open: pgserver's own atexit hook would log to closed ones
    db.release_embedded()


def _migrated_scratch_database(pg_server: str) -> Iterator[str]:
    """DSN of a fresh scratch database on the server, migrated (dropped when the fixture ends)."""
    from returnledger.store import migrate
    from returnledger_dev import scratch_db

    dsn = scratch_db.create_scratch_database(pg_server)
    migrate.migrate(dsn)
    yield dsn
    scratch_db.drop_database(pg_server, dsn)


@pytest.fixture(scope="session")
def db_dsn(pg_server):
    """DSN of this session's own fresh, migrated database (dropped afterwards)."""
    yield from _migrated_scratch_database(pg_server)


@pytest.fixture
def fresh_db(pg_server):
    """A database of its own for a test that needs an empty ledger."""
    yield from _migrated_scratch_database(pg_server)


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
def scenarios_dir() -> Path:
    """The repository's scenarios/ folder: small-month(-faults).json and their .expected.json."""
    return SCENARIOS


def _read_gz(path: Path) -> dict:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="session")
def generated_month():
    """generated_month(returns, seed, faults=False, shared_notices=False) -> (scenario, expected).

    A generated month from tests/fixtures/scenarios (fresh dicts on each call: a test may change them).
    """

    def load(
        returns: int, seed: int, faults: bool = False, shared_notices: bool = False
    ) -> tuple[dict, dict]:
        name = (
            f"gen-{returns}-{seed}"
            + ("-faults" if faults else "")
            + ("-shared-notices" if shared_notices else "")
        )
        path = GENERATED / f"{name}.json.gz"
        if not path.exists():
            raise FileNotFoundError(f"no generated month {name} in {GENERATED} (see its README.md)")
        return _read_gz(path), _read_gz(GENERATED / f"{name}.expected.json.gz")

    return load
