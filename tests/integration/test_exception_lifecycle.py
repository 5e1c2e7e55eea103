"""The human side of the exception queue against a real PostgreSQL ledger.

Each test seeds a small ledger with SQL (the shapes the sync writes) in a
fresh database and drives resolve / dismiss / retry / fix-and-resolve,
checking the rows that change, the audit trail, and the refusals.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from returnledger.cli import exceptions as exceptions_cli
from returnledger.exception_queue import actions as ex
from returnledger.exception_queue import queries, retry
from returnledger.exception_queue.queue import (
    ExceptionActionError,
    ExceptionNotFound,
    NewException,
    line_subject,
    raise_exceptions,
)
from returnledger.intake.raw import land_rows, raw_rows
from returnledger.reference.owners import default_owners
from returnledger.store import db

pytestmark = pytest.mark.integration

T0 = datetime(2026, 10, 5, 6, 0, tzinfo=UTC)


def _seed_return(conn, rid, notice, lines, *, state="ANNOUNCED"):
    """lines: [(line, sku, reason, qty)]"""
    conn.execute(
        "INSERT INTO ledger.return_order (return_id, returns_notice, rma_id, vret, created_at, payload)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (
            rid,
            notice,
            f"RMA-{rid}",
            f"VRET-{rid}",
            T0 - timedelta(days=3),
            json.dumps(
                {"lines": [{"line": n, "sku": s, "reason": r, "quantity": q} for n, s, r, q in lines]}
            ),
        ),
    )
    for n, sku, reason, qty in lines:
        conn.execute(
            "INSERT INTO ledger.return_line (return_id, line, sku, reason, quantity_announced, state)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (rid, n, sku, reason, qty, state),
        )


def _raw(conn, event_id, payload, *, status="APPLIED"):
    # landed the way extract lands a delivery, so the typed columns are filled as in production
    land_rows(conn, raw_rows([payload]), 1, window_end=T0, batch_id="returns_sync:2026-10-04")
    raw_id = conn.execute("SELECT raw_id FROM ledger.raw_event WHERE event_key = %s", (event_id,)).fetchone()[
        0
    ]
    if status != "NEW":
        conn.execute(
            "INSERT INTO ledger.event_outcome (raw_id, status, batch_id, decided_at)"
            " VALUES (%s, %s, 'returns_sync:2026-10-04', %s)",
            (raw_id, status, T0),
        )
    return raw_id


def _exc(conn, type_, rid=None, line=None, *, subject=None, at=T0, sku=None, raw_id=None):
    subject = subject or line_subject(rid, line)
    raise_exceptions(
        conn,
        [
            NewException(
                type=type_,
                subject_key=subject,
                detail=f"{type_} on {subject}",
                return_id=rid,
                line=line,
                sku=sku,
                raw_id=raw_id,
            )
        ],
        at=at,
        batch_id="returns_sync:test",
    )
    return conn.execute(
        "SELECT exception_id FROM ledger.exception WHERE type = %s AND subject_key = %s AND status = 'open'",
        (type_, subject),
    ).fetchone()[0]


def _row(dsn, sql, params=()):
    with db.connect(dsn) as c:
        return c.execute(sql, params).fetchall()


@pytest.fixture
def ledger(fresh_db):
    """A fresh ledger with two returns: one rejected credit note shared by two lines, one unmapped reason."""
    with db.connect(fresh_db) as conn:
        _seed_return(
            conn, "R-1", "RN-100", [(1, "SKU-1", "FAULTY", 2), (2, "SKU-2", "FAULTY", 1)], state="REJECTED"
        )
        conn.execute(
            "UPDATE ledger.return_line SET disposition = 'RESTOCKED', grade = 'A', quantity_received ="
            " quantity_announced, received_at = %s, dispositioned_at = %s",
            (T0, T0),
        )
        conn.execute(
            "INSERT INTO ledger.credit_note (credit_note_id, return_id, created_at, created_batch)"
            " VALUES ('CN-RN-100-1', 'R-1', %s, 'b1')",
            (T0,),
        )
        for line, sku, qty in ((1, "SKU-1", 2), (2, "SKU-2", 1)):
            conn.execute(
                "INSERT INTO ledger.amazon_submission (idempotency_key, kind, return_id, line, sku, asin,"
                " quantity, unit_amount, currency, document_id, status, transaction_id, attempts, last_error,"
                " created_at, created_batch, submitted_at, resolved_at)"
                " VALUES (%s, 'CREDIT_NOTE', 'R-1', %s, %s, %s, %s,"
                " 12.50, 'GBP', 'CN-RN-100-1', 'FAILED', 'tx-9', 1, %s, %s, 'b1', %s, %s)",
                (
                    f"credit:R-1:{line}",
                    line,
                    sku,
                    f"B0{line}",
                    qty,
                    json.dumps([{"code": "InvalidInput", "message": "bad returns notice"}]),
                    T0,
                    T0,
                    T0,
                ),
            )
        # an accepted inventory update of line 1 must stay as it is
        conn.execute(
            "INSERT INTO ledger.amazon_submission (idempotency_key, kind, return_id, line, sku, quantity,"
            " status, attempts, created_at, created_batch, resolved_at) VALUES ('inventory:R-1:1',"
            " 'INVENTORY', 'R-1', 1, 'SKU-1', 2, 'ACCEPTED', 1, %s, 'b1', %s)",
            (T0, T0),
        )
        _seed_return(conn, "R-2", "RN-200", [(1, "SKU-9", "GIFT_UNWANTED", 1), (2, "SKU-1", "FAULTY", 1)])
        r1 = _raw(
            conn,
            "ev-1",
            {
                "event_id": "ev-1",
                "type": "RECEIVED",
                "return_id": "R-2",
                "line": 1,
                "quantity": 1,
                "occurred_at": "2026-10-04T10:00:00Z",
            },
            status="HELD",
        )
        _raw(
            conn,
            "ev-2",
            {
                "event_id": "ev-2",
                "type": "RETURN_CREATED",
                "return_id": "R-2",
                "occurred_at": "2026-10-03T10:00:00Z",
            },
        )
        _raw(
            conn,
            "ev-3",
            {
                "event_id": "ev-3",
                "type": "RECEIVED",
                "return_id": "R-2",
                "line": 2,
                "quantity": 1,
                "occurred_at": "2026-10-04T10:00:00Z",
            },
        )
        ids = {
            "rej1": _exc(conn, "AMAZON_REJECTED", "R-1", 1),
            "rej2": _exc(conn, "AMAZON_REJECTED", "R-1", 2),
            "unmapped": _exc(conn, "UNMAPPED_REASON_CODE", "R-2", 1),
            "sku": _exc(conn, "SKU_MISMATCH", "R-2", 1, sku="SKU-9"),
            "qty": _exc(conn, "QUANTITY_MISMATCH", "R-2", 2, at=T0 - timedelta(days=6)),
        }
        conn.execute(
            "INSERT INTO ledger.held_event (raw_id, return_id, line, reason, exception_id, held_at)"
            " VALUES (%s, 'R-2', 1, 'UNMAPPED_REASON_CODE', %s, %s)",
            (r1, ids["unmapped"], T0),
        )
        conn.execute(
            "INSERT INTO ledger.line_history (return_id, line, from_state, to_state, event_id, cause,"
            " batch_id, at) VALUES ('R-2', 2, 'ANNOUNCED', 'RECEIVED', 'ev-3', 'RECEIVED', 'b1', %s)",
            (T0,),
        )
        conn.commit()
    return fresh_db, ids


def test_resolve_records_who_when_why_and_refuses_twice(ledger):
    dsn, ids = ledger
    at = T0 + timedelta(days=1)
    out = ex.resolve_exception(dsn, ids["qty"], actor="wendy", resolution="recounted: 1 unit", at=at)
    assert (out["status"], out["resolved_by"], out["resolution"], out["resolved_at"]) == (
        "resolved",
        "wendy",
        "recounted: 1 unit",
        at,
    )
    audit = _row(dsn, "SELECT actor, action, subject, detail FROM ledger.audit_log")
    assert audit == [
        (
            "wendy",
            "exception.resolve",
            f"exception:{ids['qty']}",
            {"type": "QUANTITY_MISMATCH", "subject_key": "R-2|2", "why": "recounted: 1 unit"},
        )
    ]
    with pytest.raises(ExceptionActionError, match=r"already resolved .*wendy"):
        ex.resolve_exception(dsn, ids["qty"], actor="bob", resolution="again", at=at)
    with pytest.raises(ExceptionActionError, match="already resolved"):
        ex.dismiss_exception(dsn, ids["qty"], actor="bob", reason="again", at=at)
    with pytest.raises(ExceptionNotFound):
        ex.resolve_exception(dsn, 999999, actor="bob", resolution="x", at=at)
    assert len(_row(dsn, "SELECT 1 FROM ledger.audit_log")) == 1


def test_empty_reason_or_actor_is_refused_and_changes_nothing(ledger):
    dsn, ids = ledger
    for kwargs in ({"actor": "bob", "reason": "  "}, {"actor": "", "reason": "duplicate report"}):
        with pytest.raises(ExceptionActionError, match="must not be empty"):
            ex.dismiss_exception(dsn, ids["qty"], at=T0, **kwargs)
    with pytest.raises(ExceptionActionError, match="resolution must not be empty"):
        ex.resolve_exception(dsn, ids["qty"], actor="bob", resolution="", at=T0)
    assert _row(dsn, "SELECT status FROM ledger.exception WHERE exception_id = %s", (ids["qty"],)) == [
        ("open",)
    ]
    out = ex.dismiss_exception(dsn, ids["qty"], actor="bob", reason="test parcel from the hub", at=T0)
    assert out["status"] == "dismissed" and out["resolution"] == "test parcel from the hub"
    assert _row(dsn, "SELECT action FROM ledger.audit_log") == [("exception.dismiss",)]


def test_retry_puts_the_whole_credit_note_back_to_pending_with_the_same_keys(ledger):
    dsn, ids = ledger
    at = T0 + timedelta(days=2)
    out = retry.retry_submission(dsn, ids["rej1"], actor="ian", at=at)
    assert out["status"] == "resolved" and out["resolved_by"] == "ian"
    assert sorted(out["submissions_reset"]) == ["credit:R-1:1", "credit:R-1:2"]
    assert sorted(out["lines_reset"]) == ["R-1|1", "R-1|2"]
    assert out["also_resolved"] == [ids["rej2"]]
    subs = _row(
        dsn,
        "SELECT idempotency_key, status, document_id, attempts, transaction_id, submitted_at,"
        " resolved_at FROM ledger.amazon_submission ORDER BY idempotency_key",
    )
    assert subs == [
        ("credit:R-1:1", "PENDING", "CN-RN-100-1", 1, None, None, None),
        ("credit:R-1:2", "PENDING", "CN-RN-100-1", 1, None, None, None),
        ("inventory:R-1:1", "ACCEPTED", None, 1, None, None, T0),
    ]
    assert _row(dsn, "SELECT line, state FROM ledger.return_line WHERE return_id = 'R-1' ORDER BY line") == [
        (1, "DISPOSITIONED"),
        (2, "DISPOSITIONED"),
    ]
    hist = _row(
        dsn,
        "SELECT line, from_state, to_state, cause, at FROM ledger.line_history"
        " WHERE return_id = 'R-1' ORDER BY line",
    )
    assert hist == [
        (1, "REJECTED", "DISPOSITIONED", "RETRY_SUBMISSION", at),
        (2, "REJECTED", "DISPOSITIONED", "RETRY_SUBMISSION", at),
    ]
    assert _row(dsn, "SELECT status FROM ledger.exception WHERE exception_id = %s", (ids["rej2"],)) == [
        ("resolved",)
    ]
    audit = _row(dsn, "SELECT subject, detail FROM ledger.audit_log ORDER BY audit_id")
    assert audit[0][0] == f"exception:{ids['rej1']}"
    assert {s["idempotency_key"] for s in audit[0][1]["submissions"]} == {"credit:R-1:1", "credit:R-1:2"}
    assert "bad returns notice" in audit[0][1]["submissions"][0]["last_error"]
    assert audit[1] == (
        f"exception:{ids['rej2']}",
        {"with_exception": ids["rej1"], "why": audit[1][1]["why"]},
    )
    # both are resolved now: a second retry is refused
    with pytest.raises(ExceptionActionError, match="already resolved"):
        retry.retry_submission(dsn, ids["rej2"], actor="ian", at=at)


def test_retry_refuses_other_types_and_lines_without_a_failed_submission(ledger):
    dsn, ids = ledger
    with pytest.raises(ExceptionActionError, match=r"it is QUANTITY_MISMATCH.*AMAZON_REJECTED"):
        retry.retry_submission(dsn, ids["qty"], actor="ian", at=T0)
    with db.connect(dsn) as conn:
        lonely = _exc(conn, "AMAZON_REJECTED", "R-2", 2)
        conn.commit()
    with pytest.raises(ExceptionActionError, match="no FAILED submission"):
        retry.retry_submission(dsn, lonely, actor="ian", at=T0)
    assert _row(dsn, "SELECT status FROM ledger.exception WHERE exception_id = %s", (lonely,)) == [("open",)]
    assert _row(dsn, "SELECT count(*) FROM ledger.audit_log") == [(0,)]


def test_actions_on_a_callers_connection_roll_back_with_it(ledger):
    dsn, ids = ledger
    with db.connect(dsn) as conn:
        ex.resolve_exception(conn, ids["qty"], actor="wendy", resolution="recounted", at=T0)
        assert conn.execute(
            "SELECT status FROM ledger.exception WHERE exception_id = %s", (ids["qty"],)
        ).fetchone() == ("resolved",)
        conn.rollback()
    assert _row(dsn, "SELECT status FROM ledger.exception WHERE exception_id = %s", (ids["qty"],)) == [
        ("open",)
    ]
    assert _row(dsn, "SELECT count(*) FROM ledger.audit_log") == [(0,)]


def test_list_exceptions_filters_and_measures_age_and_sla(ledger):
    dsn, ids = ledger
    as_of = T0 + timedelta(days=3, hours=1)
    with db.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO ledger.owner_team (exception_type, owner, sla_days) VALUES"
            " ('AMAZON_REJECTED', 'integration', 5), ('QUANTITY_MISMATCH', 'warehouse', 7),"
            " ('UNMAPPED_REASON_CODE', 'operations', 2)"
        )
        conn.commit()
        rows = queries.list_exceptions(conn, as_of=as_of)
        by_id = {r["exception_id"]: r for r in rows}
        assert len(rows) == 5
        assert (
            by_id[ids["qty"]]["age_days"],
            by_id[ids["qty"]]["sla_days"],
            by_id[ids["qty"]]["sla_breached"],
        ) == (9, 7, True)
        assert (by_id[ids["rej1"]]["age_days"], by_id[ids["rej1"]]["sla_breached"]) == (3, False)
        assert (by_id[ids["unmapped"]]["age_days"], by_id[ids["unmapped"]]["sla_breached"]) == (3, True)
        # SKU_MISMATCH has no owner_team row: the default SLA applies
        assert by_id[ids["sku"]]["sla_days"] == default_owners()["SKU_MISMATCH"].sla_days
        assert rows[0]["exception_id"] == ids["qty"]  # oldest first
        assert {
            r["exception_id"] for r in queries.list_exceptions(conn, owner="operations", as_of=as_of)
        } == {ids["unmapped"], ids["sku"]}
        assert [
            r["exception_id"] for r in queries.list_exceptions(conn, type="AMAZON_REJECTED", as_of=as_of)
        ] == [ids["rej1"], ids["rej2"]]
        assert [r["exception_id"] for r in queries.list_exceptions(conn, min_age_days=5, as_of=as_of)] == [
            ids["qty"]
        ]
        assert queries.list_exceptions(conn, status="resolved", as_of=as_of) == []
        assert len(queries.list_exceptions(conn, as_of=as_of, limit=2)) == 2
        with pytest.raises(ValueError, match="unknown status"):
            queries.list_exceptions(conn, status="closed", as_of=as_of)
    ex.resolve_exception(dsn, ids["rej1"], actor="ian", resolution="fixed", at=T0 + timedelta(days=1))
    with db.connect(dsn) as conn:
        done = queries.list_exceptions(conn, status="resolved", as_of=as_of)
    assert [(r["exception_id"], r["age_days"], r["sla_breached"]) for r in done] == [(ids["rej1"], 1, False)]


def test_exception_detail_has_line_history_raw_payloads_and_audit(ledger):
    dsn, ids = ledger
    ex.resolve_exception(dsn, ids["unmapped"], actor="olga", resolution="asked ReBound", at=T0)
    with db.connect(dsn) as conn:
        d = queries.exception_detail(conn, ids["unmapped"])
        d2 = queries.exception_detail(conn, ids["qty"])
        with pytest.raises(ExceptionNotFound):
            queries.exception_detail(conn, 424242)
    assert d["exception"]["type"] == "UNMAPPED_REASON_CODE" and d["exception"]["status"] == "resolved"
    assert d["line"]["reason"] == "GIFT_UNWANTED" and d["return_order"]["returns_notice"] == "RN-200"
    # the line's own event and the return-level event, never line 2's event
    assert sorted(r["event_id"] for r in d["raw_events"]) == ["ev-1", "ev-2"]
    assert [h["raw_id"] for h in d["held_events"]] == [
        r["raw_id"] for r in d["raw_events"] if r["event_id"] == "ev-1"
    ]
    assert [a["action"] for a in d["audit"]] == ["exception.resolve"]
    assert [(h["to_state"], h["event_id"]) for h in d2["history"]] == [("RECEIVED", "ev-3")]
    assert sorted(r["event_id"] for r in d2["raw_events"]) == ["ev-2", "ev-3"]


def test_resolve_with_mapping_adds_the_mapping_and_resolves_in_one_transaction(ledger):
    reference = pytest.importorskip("returnledger.reference.mappings")
    if not hasattr(reference, "add_reason_mapping"):
        pytest.skip("returnledger.reference.mappings.add_reason_mapping not there yet")
    dsn, ids = ledger
    at = T0 + timedelta(hours=3)
    with pytest.raises(ExceptionActionError, match="it is SKU_MISMATCH"):
        ex.resolve_with_mapping(dsn, ids["sku"], "CR-UNWANTED_ITEM", actor="olga", at=at)
    with pytest.raises(ValueError, match="not an Amazon return reason code"):  # refused by reference ...
        ex.resolve_with_mapping(dsn, ids["unmapped"], "UNWANTED", actor="olga", at=at)
    # ... and nothing of the attempt remains
    assert _row(dsn, "SELECT status FROM ledger.exception WHERE exception_id = %s", (ids["unmapped"],)) == [
        ("open",)
    ]
    assert _row(dsn, "SELECT count(*) FROM ledger.reason_mapping") == [(0,)]
    out = ex.resolve_with_mapping(dsn, ids["unmapped"], "CR-UNWANTED_ITEM", actor="olga", at=at)
    assert out["status"] == "resolved" and out["mapping"] == {
        "rebound_reason": "GIFT_UNWANTED",
        "amazon_reason": "CR-UNWANTED_ITEM",
    }
    assert _row(
        dsn, "SELECT amazon_reason, active FROM ledger.reason_mapping WHERE rebound_reason = 'GIFT_UNWANTED'"
    ) == [("CR-UNWANTED_ITEM", True)]
    assert ("exception.resolve_with_mapping", f"exception:{ids['unmapped']}") in _row(
        dsn, "SELECT action, subject FROM ledger.audit_log"
    )


def test_resolve_with_sku_adds_the_sku_and_resolves(ledger):
    reference = pytest.importorskip("returnledger.reference.skus")
    if not hasattr(reference, "add_sku"):
        pytest.skip("returnledger.reference.skus.add_sku not there yet")
    dsn, ids = ledger
    with pytest.raises(ExceptionActionError, match="it is UNMAPPED_REASON_CODE"):
        ex.resolve_with_sku(dsn, ids["unmapped"], "B0XX", "9.50", 3, actor="olga", at=T0)
    out = ex.resolve_with_sku(dsn, ids["sku"], "B0SKU9", "9.50", 3, actor="olga", at=T0)
    assert out["status"] == "resolved" and out["sku_added"]["sku"] == "SKU-9"
    assert _row(dsn, "SELECT asin, unit_cost::text, available FROM ledger.sku WHERE sku = 'SKU-9'") == [
        ("B0SKU9", "9.50", 3)
    ]


def test_cli_lists_and_resolves(ledger, capsys):
    dsn, ids = ledger
    parser = argparse.ArgumentParser(prog="returnledger")
    exceptions_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["exceptions", "list", "--dsn", dsn, "--owner", "warehouse"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "QUANTITY_MISMATCH" in out and "1 exception(s)" in out and "AMAZON_REJECTED" not in out
    args = parser.parse_args(
        ["exceptions", "resolve", str(ids["qty"]), "--why", "recounted", "--dsn", dsn, "--actor", "cli-user"]
    )
    assert args.func(args) == 0
    args = parser.parse_args(["exceptions", "retry", str(ids["qty"]), "--dsn", dsn, "--actor", "cli-user"])
    assert args.func(args) == 2
    assert "refused" in capsys.readouterr().out
    assert _row(
        dsn, "SELECT resolved_by, resolution FROM ledger.exception WHERE exception_id = %s", (ids["qty"],)
    ) == [("cli-user", "recounted")]


def test_open_exception_index_still_guards_reraise_after_resolution(ledger):
    """Resolving frees the (type, subject) slot: the sync can raise it again if the cause is still there."""
    dsn, ids = ledger
    ex.resolve_exception(dsn, ids["qty"], actor="wendy", resolution="recounted", at=T0)
    with db.connect(dsn) as conn:
        again = _exc(conn, "QUANTITY_MISMATCH", "R-2", 2, at=T0 + timedelta(days=1))
        conn.commit()
        assert again != ids["qty"]
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(
                "INSERT INTO ledger.exception (type, owner, subject_key, detail, opened_at,"
                " opened_by_batch) VALUES ('QUANTITY_MISMATCH', 'warehouse', 'R-2|2', 'x', %s, 'b')",
                (T0,),
            )
