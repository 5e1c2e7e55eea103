"""The ledger schema on a real PostgreSQL: migrations and the constraints that protect money."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
import pytest
from psycopg import errors, sql

from returnledger.store import db, migrate
from returnledger_dev import scratch_db

pytestmark = pytest.mark.integration

AT = datetime(2026, 10, 5, 12, tzinfo=UTC)


def schema_snapshot(dsn: str) -> dict:
    """Everything a migration can change in the ledger schema, comparable between runs."""
    with db.connect(dsn) as conn:
        return {
            "columns": conn.execute(
                "SELECT table_name, column_name, data_type, is_nullable, column_default"
                " FROM information_schema.columns WHERE table_schema = 'ledger'"
                " ORDER BY table_name, ordinal_position"
            ).fetchall(),
            "constraints": conn.execute(
                "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint"
                " WHERE connamespace = 'ledger'::regnamespace ORDER BY 1, 2"
            ).fetchall(),
            "indexes": conn.execute(
                "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'ledger'"
                " ORDER BY 1, 2"
            ).fetchall(),
            "migrations": conn.execute(
                "SELECT name, sha256, applied_at FROM ledger.schema_migrations ORDER BY name"
            ).fetchall(),
        }


@pytest.fixture
def empty_db(pg_server):
    dsn = scratch_db.create_scratch_database(pg_server)
    yield dsn
    scratch_db.drop_database(pg_server, dsn)


def test_migrations_apply_from_empty_and_a_second_run_changes_nothing(empty_db):
    applied = migrate.migrate(empty_db)
    assert applied == [name for name, _ in migrate.migration_files()]
    assert applied[0] == "0001_ledger.sql"
    first = schema_snapshot(empty_db)
    tables = {c[0] for c in first["columns"]}
    assert {
        "raw_event",
        "return_line",
        "amazon_submission",
        "exception",
        "reason_mapping",
        "reason_mapping_history",
        "audit_log",
        "owner_team",
        "disposition_policy",
    } <= tables

    assert migrate.migrate(empty_db) == []
    assert schema_snapshot(empty_db) == first


def test_a_changed_migration_file_is_refused(empty_db, monkeypatch):
    migrate.migrate(empty_db)
    files = migrate.migration_files()
    edited = [(files[0][0], files[0][1] + "\n-- edited after release\n"), *files[1:]]
    monkeypatch.setattr(migrate, "migration_files", lambda: edited)
    with pytest.raises(RuntimeError, match="changed after it was applied"):
        migrate.migrate(empty_db)


def test_results_stored_before_partitioning_keep_their_rows_and_keys(empty_db, monkeypatch):
    """Migration 0015 turns ledger.recon_result into one partition per result key without losing a row."""
    files = migrate.migration_files()
    before = [f for f in files if f[0] < "0015"]
    monkeypatch.setattr(migrate, "migration_files", lambda: before)
    migrate.migrate(empty_db)
    rows = [
        ("2026-10", "RB-1|1", "MATCHED"),
        ("2026-10", "AR-9", "DARK_RETURN"),
        ("daily:2026-10-05", "RB-1|1", "PENDING"),
    ]
    with db.connect(empty_db) as c:
        for period, key, status in rows:
            c.execute(
                "INSERT INTO ledger.recon_result (period, row_key, recon_status, computed_at)"
                " VALUES (%s, %s, %s, %s)",
                (period, key, status, AT),
            )
        c.commit()
    monkeypatch.undo()
    assert migrate.migrate(empty_db)[0] == "0015_recon_result_partitions.sql"
    with db.connect(empty_db) as c:
        stored = c.execute("SELECT period, row_key, recon_status FROM ledger.recon_result").fetchall()
        parts = c.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'ledger.recon_result'::regclass ORDER BY 1"
        ).fetchall()
        with pytest.raises(psycopg.errors.UniqueViolation):
            c.execute(
                "INSERT INTO ledger.recon_result (period, row_key, recon_status, computed_at)"
                " VALUES ('2026-10', 'RB-1|1', 'MATCHED', %s)",
                (AT,),
            )
    assert sorted(stored) == sorted(rows)
    names = [name for (name,) in parts]
    assert len(names) == 2 and names[0].startswith("recon_result_2026_10_")
    assert names[1].startswith("recon_result_daily_2026_10_05_")


def add_line(conn: psycopg.Connection, return_id="RB-T-1", line=1, quantity=2) -> None:
    conn.execute(
        "INSERT INTO return_order (return_id, returns_notice) VALUES (%s, %s) ON CONFLICT DO NOTHING",
        (return_id, "RN-" + return_id),
    )
    conn.execute(
        "INSERT INTO return_line (return_id, line, sku, reason, quantity_announced)"
        " VALUES (%s, %s, 'SKU-1', 'FAULTY', %s)",
        (return_id, line, quantity),
    )


def add_submission(conn, kind, key, return_id="RB-T-1", line=1, quantity=1):
    conn.execute(
        "INSERT INTO amazon_submission (idempotency_key, kind, return_id, line, sku, quantity, unit_amount,"
        " created_at, created_batch) VALUES (%s, %s, %s, %s, 'SKU-1', %s, 12.50, %s, 'test')",
        (key, kind, return_id, line, quantity, AT),
    )


def test_a_second_credit_note_for_the_same_line_is_rejected(conn):
    add_line(conn)
    add_submission(conn, "CREDIT_NOTE", "credit:RB-T-1:1")
    add_submission(conn, "INVENTORY", "inventory:RB-T-1:1")  # a restock beside it is fine
    with pytest.raises(errors.UniqueViolation, match="one_credit_per_line"), conn.transaction():
        add_submission(conn, "CREDIT_NOTE", "credit:RB-T-1:1:retry")  # even under another key
    with pytest.raises(errors.UniqueViolation), conn.transaction():
        add_submission(conn, "CREDIT_NOTE", "credit:RB-T-1:1")  # and never under the same key
    count = conn.execute("SELECT count(*) FROM amazon_submission WHERE return_id = 'RB-T-1'").fetchone()[0]
    assert count == 2


def test_negative_and_zero_quantities_are_rejected(conn):
    add_line(conn, "RB-T-2")
    with pytest.raises(errors.CheckViolation), conn.transaction():
        conn.execute("UPDATE return_line SET quantity_received = -1 WHERE return_id = 'RB-T-2'")
    with pytest.raises(errors.CheckViolation), conn.transaction():
        add_line(conn, "RB-T-2", line=2, quantity=-3)
    with pytest.raises(errors.CheckViolation), conn.transaction():
        add_submission(conn, "CREDIT_NOTE", "credit:RB-T-2:1", "RB-T-2", quantity=0)
    conn.execute(
        "UPDATE return_line SET quantity_received = 0 WHERE return_id = 'RB-T-2'"
    )  # zero received is a fact


def test_unknown_states_grades_and_dispositions_are_rejected(conn):
    add_line(conn, "RB-T-3")
    # QUARANTINED is a disposition and a reconciliation status, never a line state
    wrong = (("state", "LOST"), ("state", "QUARANTINED"), ("grade", "Z"), ("disposition", "SOLD"))
    for column, value in wrong:
        with pytest.raises(errors.CheckViolation), conn.transaction():
            conn.execute(
                sql.SQL("UPDATE return_line SET {} = %s WHERE return_id = 'RB-T-3'").format(
                    sql.Identifier(column)
                ),
                (value,),
            )


def raise_exception(conn, subject="RB-T-4|1", type_="UNMAPPED_REASON_CODE"):
    conn.execute(
        "INSERT INTO exception (type, owner, subject_key, detail, opened_at, opened_by_batch)"
        " VALUES (%s, 'operations', %s, 'no mapping for GIFT_UNWANTED', %s, 'test')",
        (type_, subject, AT),
    )


def test_the_same_open_exception_cannot_be_raised_twice(conn):
    raise_exception(conn)
    raise_exception(conn, type_="SKU_MISMATCH")  # another type on the same line is another exception
    with pytest.raises(errors.UniqueViolation, match="exception_open_once"), conn.transaction():
        raise_exception(conn)
    # once resolved, the same problem may be opened again (it came back)
    conn.execute(
        "UPDATE exception SET status = 'resolved', resolved_at = %s, resolved_by = 'ops'"
        " WHERE subject_key = 'RB-T-4|1' AND type = 'UNMAPPED_REASON_CODE'",
        (AT,),
    )
    raise_exception(conn)
    rows = conn.execute(
        "SELECT status FROM exception WHERE subject_key = 'RB-T-4|1'"
        " AND type = 'UNMAPPED_REASON_CODE' ORDER BY exception_id"
    ).fetchall()
    assert rows == [("resolved",), ("open",)]


def test_an_exception_is_open_exactly_when_it_has_no_resolution_time(conn):
    raise_exception(conn, subject="RB-T-5|1")
    with pytest.raises(errors.CheckViolation), conn.transaction():
        conn.execute("UPDATE exception SET status = 'resolved' WHERE subject_key = 'RB-T-5|1'")


def test_line_history_records_one_transition_per_event(conn):
    add_line(conn, "RB-T-6")
    insert = (
        "INSERT INTO line_history (return_id, line, from_state, to_state, event_id, cause, batch_id, at)"
        " VALUES ('RB-T-6', 1, 'ANNOUNCED', 'RECEIVED', 'ev-1', 'RECEIVED', 'test', %s)"
    )
    conn.execute(insert, (AT,))
    with pytest.raises(errors.UniqueViolation), conn.transaction():
        conn.execute(insert, (AT,))


def test_raw_events_are_kept_once_per_event_key(conn):
    insert = (
        "INSERT INTO raw_event (event_key, event_id, payload, received_at, batch_id)"
        " VALUES ('ev-x', 'ev-x', '{}'::jsonb, %s, 'test')"
    )
    conn.execute(insert, (AT,))
    with pytest.raises(errors.UniqueViolation), conn.transaction():
        conn.execute(insert, (AT,))


def test_copy_rows_round_trips_awkward_values(conn):
    """Binary COPY keeps text byte for byte and stores JSON text as received, parsed by PostgreSQL."""
    rows = [
        (
            "a\\b\tc\nd\re",
            1,
            datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
            None,
            True,
            db.raw_json('{"x": "q\\"\\\\n\\u00e9"}'),
        ),
        ("", -5, None, "\\N", False, db.raw_json("[1, 2.5]")),
    ]
    conn.execute("CREATE TEMP TABLE copied (a text, b bigint, c timestamptz, d text, e bool, f jsonb)")
    cols = (("a", "text"), ("b", "int8"), ("c", "timestamptz"), ("d", "text"), ("e", "bool"), ("f", "jsonb"))
    assert db.copy_rows(conn, "copied", cols, rows) == 2
    got = conn.execute("SELECT a, b, c, d, e, f FROM copied ORDER BY b DESC").fetchall()
    assert [g[:5] for g in got] == [r[:5] for r in rows]
    assert [g[5] for g in got] == [{"x": 'q"\\n\u00e9'}, [1, 2.5]]
    assert db.copy_rows(conn, "copied", cols, []) == 0
    with pytest.raises(psycopg.errors.InvalidTextRepresentation):
        db.copy_rows(conn, "copied", cols, [("x", 1, None, None, None, db.raw_json("{not json"))])


def test_raw_events_and_lines_cannot_be_removed(conn):
    """The audit trail's anchors refuse DELETE and TRUNCATE (they replace per-row foreign keys)."""
    for table in ("raw_event", "return_line"):
        for statement in (f"DELETE FROM ledger.{table}", f"TRUNCATE ledger.{table} CASCADE"):
            with pytest.raises(psycopg.errors.RaiseException, match="keeps every row"), conn.transaction():
                conn.execute(statement)


def test_a_sync_runs_row_says_its_start_is_an_as_of_moment_not_a_clock_time(fresh_db):
    """ledger.sync_run keeps the moment a run is as of under a name that says so (it was started_at,
    which read like a wall-clock start while it held the window end)."""
    from returnledger.ledger.runs import finish_run
    from returnledger.moment import RunMoment

    end = datetime(2026, 10, 6, tzinfo=UTC)
    finish_run(fresh_db, run=RunMoment(end, start=datetime(2026, 10, 5, tzinfo=UTC)), stats={"n": 1})
    with db.connect(fresh_db) as c:
        columns = {
            r[0]
            for r in c.execute(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = 'ledger' AND table_name = 'sync_run'"
            )
        }
        assert "started_at" not in columns
        assert c.execute("SELECT started_as_of, window_end FROM ledger.sync_run").fetchall() == [(end, end)]
