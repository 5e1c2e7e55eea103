"""Issue 21, finding 9: demos never destroy data they did not create.

A real ledger (a database no demo created) sits at the DSN both demos are given. ``make demo`` and ``make
cluster-demo`` each start (stopped right after they chose their ledger, before any simulator or Airflow):
the real ledger keeps every row, each demo got a database of its own, two demos never share one, and
continuing (--keep-db) or resetting a database no demo created is refused, naming it and saying why.
"""

from __future__ import annotations

import psycopg
import pytest

from returnledger.store import db, migrate
from returnledger_dev import scratch_db

pytestmark = pytest.mark.integration

SCENARIO = db.project_root() / "scenarios" / "small-month.json"


class _Stopped(Exception):
    """Raised where the demo would start its simulators: what it did to the databases is done by then."""


@pytest.fixture
def real_ledger(pg_server):
    """A ledger nobody's demo created: plain CREATE DATABASE, migrated, one row of money in it."""
    import uuid

    name = f"rl_real_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    dsn = scratch_db.with_database(pg_server, name)
    try:
        migrate.migrate(dsn)
        with psycopg.connect(dsn) as c:
            c.execute(
                "INSERT INTO ledger.return_order (return_id, order_reference, created_at, returns_notice)"
                " VALUES ('RB-REAL-1', 'o', now(), 'RN-REAL')"
            )
        yield dsn
    finally:
        scratch_db.drop_database(pg_server, dsn)


def _rows(dsn: str) -> int:
    with psycopg.connect(dsn) as c:
        return c.execute("SELECT count(*) FROM ledger.return_order WHERE return_id = 'RB-REAL-1'").fetchone()[
            0
        ]


def _stop_at_the_sandbox(monkeypatch):
    import returnledger_dev.sandbox.harness as harness

    def stopped(*args, **kwargs):
        raise _Stopped

    monkeypatch.setattr(harness, "run_sandbox", stopped)


def test_demo_refuses_a_ledger_it_did_not_create(real_ledger, pg_server, tmp_path, monkeypatch):
    from returnledger_dev.cluster.demo import run_cluster_scenario
    from returnledger_dev.demo.ledger_db import LEDGER_FILE
    from returnledger_dev.demo.month import run_scenario

    _stop_at_the_sandbox(monkeypatch)
    made = []
    try:
        for out in (tmp_path / "a", tmp_path / "b"):
            with pytest.raises(_Stopped):
                run_scenario(SCENARIO, out, dsn=real_ledger, progress=lambda *_: None)
            assert _rows(real_ledger) == 1, "make demo wiped a ledger it did not create"
            made.append((out / LEDGER_FILE).read_text().strip())
        with pytest.raises(_Stopped):
            run_cluster_scenario(SCENARIO, tmp_path / "c", dsn=real_ledger, progress=lambda *_: None)
        assert _rows(real_ledger) == 1, "make cluster-demo wiped a ledger it did not create"
        made.append((tmp_path / "c" / LEDGER_FILE).read_text().strip())
        assert len(set(made)) == 3 and db.database_name(real_ledger) not in made, made
        for name in made:  # each is marked as a demo's own
            scratch_db.require_scratch(scratch_db.with_database(pg_server, name), action="check")

        # --keep-db continues only a database a demo created; pointed at the real one it refuses, naming it
        (tmp_path / "a" / LEDGER_FILE).write_text(db.database_name(real_ledger) + "\n")
        with pytest.raises(scratch_db.NotScratchDatabase) as refused:
            run_scenario(SCENARIO, tmp_path / "a", dsn=real_ledger, keep_db=True, progress=lambda *_: None)
        assert db.database_name(real_ledger) in str(refused.value)
        assert "no demo or test created it" in str(refused.value)
        assert _rows(real_ledger) == 1
    finally:
        for name in made:
            scratch_db.drop_database(pg_server, scratch_db.with_database(pg_server, name))
            scratch_db.drop_database(pg_server, scratch_db.with_database(pg_server, f"{name}_airflow"))


def test_reset_asks_for_the_database_by_name(real_ledger):
    from returnledger.cli.main import main

    with pytest.raises(ValueError, match="name that database"):
        migrate.reset(real_ledger, database="")
    with pytest.raises(ValueError, match="name that database"):
        migrate.reset(real_ledger, database="returnledger")
    assert _rows(real_ledger) == 1
    with pytest.raises(TypeError):
        migrate.reset(real_ledger)  # type: ignore[call-arg]  # no default database
    # the CLI: --reset without --database refuses, with the name it resets
    import os

    old = os.environ.get(db.ENV_DSN)
    os.environ[db.ENV_DSN] = real_ledger
    try:
        with pytest.raises(ValueError):
            main(["migrate", "--reset"])
        assert _rows(real_ledger) == 1
        main(["migrate", "--reset", "--database", db.database_name(real_ledger)])
        with psycopg.connect(real_ledger) as c:
            assert c.execute("SELECT count(*) FROM ledger.return_order").fetchone()[0] == 0
    finally:
        if old is None:
            os.environ.pop(db.ENV_DSN, None)
        else:
            os.environ[db.ENV_DSN] = old


def test_a_scratch_copy_keeps_the_rows_and_the_mark_and_a_real_ledger_is_never_copied(real_ledger, pg_server):
    """The benches copy a preloaded ledger (CREATE DATABASE ... TEMPLATE) for a second run: the copy holds
    the same rows, is itself marked scratch (so demos may drop it), and a database no demo made is refused."""
    source = scratch_db.create_scratch_database(pg_server, "rl_copy_src")
    copy = None
    try:
        with psycopg.connect(source, autocommit=True) as conn:
            conn.execute("CREATE TABLE preloaded (n int)")
            conn.execute("INSERT INTO preloaded SELECT generate_series(1, 1000)")
        # a session left open on the source would make PostgreSQL refuse the copy: it is ended first
        idle = psycopg.connect(source)
        copy = scratch_db.create_scratch_database(pg_server, "rl_copy", template=source)
        with pytest.raises(psycopg.OperationalError):
            idle.execute("SELECT 1")
        with psycopg.connect(copy) as conn:
            assert conn.execute("SELECT count(*), sum(n) FROM preloaded").fetchone() == (1000, 500500)
        scratch_db.require_scratch(copy, action="wipe")
        with pytest.raises(scratch_db.NotScratchDatabase):
            scratch_db.create_scratch_database(pg_server, "rl_copy", template=real_ledger)
    finally:
        scratch_db.drop_database(pg_server, source)
        if copy is not None:
            scratch_db.drop_database(pg_server, copy)
