"""Fixtures of the DAG tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def ledger(fresh_db, monkeypatch):
    """A fresh, migrated ledger that the DAGs' RETURNS_DB connection points at (AIRFLOW_CONN_RETURNS_DB)."""
    from returnledger_dev import scratch_db

    monkeypatch.setenv("AIRFLOW_CONN_RETURNS_DB", scratch_db.airflow_connection_json(fresh_db))
    return fresh_db
