"""The console reaches the ledger only through the ``returns_db`` connection (issue 24): without it, it
refuses to start with an error that names the connection, and never opens RETURNLEDGER_DSN or an
embedded server instead."""

from __future__ import annotations

import pytest

from returnledger.console.app import ConsoleConfigError, create_console_app, default_dsn


@pytest.fixture
def no_returns_db(monkeypatch):
    """No returns_db anywhere, but a RETURNLEDGER_DSN the old fallback would have used."""
    monkeypatch.delenv("AIRFLOW_CONN_RETURNS_DB", raising=False)
    monkeypatch.setenv("RETURNLEDGER_DSN", "postgresql://fallback@127.0.0.1:1/not_the_ledger")


def test_console_refuses_to_start_without_the_returns_db_connection(no_returns_db):
    with pytest.raises(ConsoleConfigError) as err:
        create_console_app()
    message = str(err.value)
    assert "'returns_db'" in message
    assert "AIRFLOW_CONN_RETURNS_DB" in message
    assert "not_the_ledger" not in message


def test_console_never_falls_back_to_returnledger_dsn(no_returns_db):
    with pytest.raises(ConsoleConfigError, match="returns_db"):
        default_dsn()


def test_console_reads_the_ledger_from_the_returns_db_connection(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_RETURNS_DB", "postgresql://ledger_user:pw@db.example:6543/ledger")
    monkeypatch.setenv("RETURNLEDGER_DSN", "postgresql://fallback@127.0.0.1:1/not_the_ledger")
    dsn = default_dsn()
    assert "host=db.example" in dsn and "port=6543" in dsn and "dbname=ledger" in dsn
    assert create_console_app() is not None
