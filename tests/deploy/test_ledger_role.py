"""The ledger's two roles, created by the migrations tooling: the owner (``returnledger_owner``, nobody
logs in as it) owns the ledger and nothing else; the runtime role (``returnledger``) reads and writes rows.

The DAGs of the compose file and of ``make cluster`` reach the ledger as the runtime role; migrations run
as an administrator and hand what they create to the owner (tests/deploy/test_deploy_rights.py shows what
the runtime role cannot do).
"""

from __future__ import annotations

import psycopg
import pytest

from returnledger.store import db, migrate
from returnledger_dev import scratch_db

pytestmark = pytest.mark.integration


@pytest.fixture
def owned_ledger(pg_server):
    dsn = scratch_db.create_scratch_database(pg_server, "rl_role")
    try:
        migrate.migrate(dsn, owner=migrate.OWNER_ROLE, runtime=migrate.LEDGER_ROLE)
        yield dsn
    finally:
        scratch_db.drop_database(pg_server, dsn)


def _as_role(dsn: str) -> str:
    from returnledger_dev.cluster.spec import role_dsn

    return role_dsn(dsn, migrate.LEDGER_ROLE)


def test_role_has_no_server_powers(owned_ledger):
    sql = """SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls
               FROM pg_roles WHERE rolname = %s"""
    with psycopg.connect(owned_ledger) as c:
        runtime = c.execute(sql, (migrate.LEDGER_ROLE,)).fetchone()
        owner = c.execute(sql, (migrate.OWNER_ROLE,)).fetchone()
    assert runtime == (True, False, False, False, False, False)
    assert owner == (False, False, False, False, False, False)


def test_a_login_role_is_never_made_the_owner(owned_ledger):
    """Roles belong to the server: making the runtime role the owner would lock every ledger out."""
    with pytest.raises(ValueError, match="can log in"):
        migrate.migrate(owned_ledger, owner=migrate.LEDGER_ROLE)
    with pytest.raises(ValueError, match="cannot also own"):
        migrate.migrate(owned_ledger, owner=migrate.LEDGER_ROLE, runtime=migrate.LEDGER_ROLE)


def test_owner_role_owns_the_ledger_schema_and_everything_in_it(owned_ledger):
    with psycopg.connect(owned_ledger) as c:
        assert (
            c.execute(
                "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'ledger'"
            ).fetchone()[0]
            == migrate.OWNER_ROLE
        )
        owners = c.execute("""SELECT DISTINCT pg_get_userbyid(c.relowner) FROM pg_class c
                                JOIN pg_namespace n ON n.oid = c.relnamespace
                                WHERE n.nspname = 'ledger'""").fetchall()
        functions = c.execute("""SELECT DISTINCT pg_get_userbyid(p.proowner) FROM pg_proc p
                                   JOIN pg_namespace n ON n.oid = p.pronamespace
                                   WHERE n.nspname = 'ledger'""").fetchall()
    assert owners == [(migrate.OWNER_ROLE,)]
    assert functions in ([], [(migrate.OWNER_ROLE,)])


def test_role_works_the_ledger_but_cannot_reach_beyond_it(owned_ledger):
    with db.connect(_as_role(owned_ledger)) as c:
        assert c.execute("SELECT current_user").fetchone()[0] == migrate.LEDGER_ROLE
        c.execute("""INSERT INTO ledger.owner_team (exception_type, owner, sla_days, what_to_do)
                     VALUES ('ROLE_TEST', 'operations', 1, 'nothing')""")
        c.execute("CREATE TEMP TABLE scratch (x int)")  # the sync stages batches in temp tables
        c.execute("SELECT ledger.analyze_table('ledger.owner_team')")  # as the owner (migration 0018)
        c.rollback()
    with psycopg.connect(_as_role(owned_ledger), autocommit=True) as c:
        for statement in (
            "CREATE DATABASE rl_role_denied",
            "CREATE SCHEMA denied",
            "CREATE ROLE denied",
            "SELECT count(*) FROM pg_authid",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(statement)


def test_later_migrations_hand_new_objects_to_the_owner(owned_ledger, monkeypatch):
    files = [*migrate.migration_files(), ("9999_added_later.sql", "CREATE TABLE ledger.added_later (id int)")]
    monkeypatch.setattr(migrate, "migration_files", lambda: files)
    # no roles given, run by the administrator: the schema's owner gets the new table
    assert migrate.migrate(owned_ledger) == ["9999_added_later.sql"]
    with psycopg.connect(owned_ledger) as c:
        assert (
            c.execute(
                "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'ledger.added_later'::regclass"
            ).fetchone()[0]
            == migrate.OWNER_ROLE
        )
