"""Migration 0017's repair (issue 21, finding 2): a note the old code accepted on a duplicate refusal that
named nothing (confirmed_by = 'DUPLICATE') no longer counts as confirmed by Amazon."""

from __future__ import annotations

import pytest

from returnledger.store import db, migrate
from returnledger_dev import scratch_db

pytestmark = pytest.mark.integration


def test_notes_accepted_on_a_refusal_naming_nothing_no_longer_count_as_confirmed(pg_server, monkeypatch):
    dsn = scratch_db.create_scratch_database(pg_server, "rl_0017")
    try:
        files = migrate.migration_files()
        monkeypatch.setattr(migrate, "migration_files", lambda: [f for f in files if f[0] < "0017"])
        migrate.migrate(dsn)
        with db.connect(dsn) as conn:
            conn.execute(
                "INSERT INTO ledger.return_order (return_id, order_reference, created_at, returns_notice)"
                " VALUES ('R-1', 'o', now(), 'RN-1')"
            )
            for note, by in (("CN-R-1-1", "DUPLICATE"), ("CN-R-1-2", "SUCCESS"), ("CN-R-1-3", "LEGACY")):
                conn.execute(
                    "INSERT INTO ledger.credit_note (credit_note_id, return_id, created_at, created_batch,"
                    " held_transaction_id, confirmed_by, confirmed_at) VALUES (%s, 'R-1', now(), 't', 'tx',"
                    " %s, now())",
                    (note, by),
                )
            conn.commit()
        monkeypatch.setattr(migrate, "migration_files", lambda: files)
        migrate.migrate(dsn)
        with db.connect(dsn) as conn:
            got = dict(conn.execute("SELECT credit_note_id, confirmed_by FROM ledger.credit_note").fetchall())
        assert got == {"CN-R-1-1": None, "CN-R-1-2": "SUCCESS", "CN-R-1-3": "LEGACY"}
    finally:
        scratch_db.drop_database(pg_server, dsn)
