"""Find a return, its story and the owner teams' queues (returnledger.console.story, .teams) on a real
PostgreSQL ledger: every reference finds the return, the story holds every part in time order with plain
words, and a team's queue lists its overdue exceptions first."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
import pytest

from returnledger.console.glossary import glossary, say
from returnledger.console.story import ReturnNotFound, return_story, search_returns
from returnledger.console.teams import team_counts, team_queue

SEED = """
INSERT INTO ledger.return_order (return_id, order_reference, returns_notice, rma_id, vret, created_at) VALUES
 ('RB-3001', 'ORD-9001', 'RN-801', 'RMA-81', 'VRET-81', '2026-10-01T08:00Z'),
 ('RB-3002', 'ORD-9002', 'RN-801', 'RMA-82', 'VRET-82', '2026-10-03T08:00Z'),
 ('RB-3003', 'ORD-9003', 'RN-803', 'RMA-83', 'VRET-83', '2026-09-20T08:00Z');
INSERT INTO ledger.return_line (return_id, line, sku, reason, quantity_announced, quantity_received, grade,
                                disposition, state) VALUES
 ('RB-3001', 1, 'SKU-KETTLE', 'DEFECTIVE', 1, 1, 'A', 'RESTOCKED', 'CREDIT_ACCEPTED'),
 ('RB-3001', 2, 'SKU-TOASTER', 'LID_LOOSE', 2, NULL, NULL, NULL, 'IN_TRANSIT'),
 ('RB-3002', 1, 'SKU-KETTLE', 'DEFECTIVE', 1, NULL, NULL, NULL, 'ANNOUNCED'),
 ('RB-3003', 1, 'SKU-IRON', 'DEFECTIVE', 3, 2, NULL, NULL, 'RECEIVED');
INSERT INTO ledger.line_history (return_id, line, from_state, to_state, event_id, cause, batch_id, at) VALUES
 ('RB-3001', 1, NULL, 'ANNOUNCED', 'ev-1', 'RETURN_CREATED', 'returns_sync:2026-10-01', '2026-10-01T09:00Z'),
 ('RB-3001', 1, 'ANNOUNCED', 'RECEIVED', 'ev-2', 'RECEIVED', 'returns_sync:2026-10-04', '2026-10-04T09:00Z'),
 ('RB-3001', 1, 'RECEIVED', 'CREDIT_ACCEPTED', NULL, 'CREDIT_ACCEPTED', 'returns_sync:2026-10-06',
  '2026-10-06T09:00Z');
INSERT INTO ledger.raw_event (event_key, event_id, payload, delivered_at, received_at, batch_id, event_type,
                              return_id, line) VALUES
 ('ev-1', 'ev-1', '{"event_id": "ev-1", "type": "RETURN_CREATED", "return_id": "RB-3001"}',
  '2026-10-01T08:30Z', '2026-10-02T00:00Z', 'returns_sync:2026-10-01', 'RETURN_CREATED', 'RB-3001', 1),
 ('ev-2', 'ev-2', '{"event_id": "ev-2", "type": "RECEIVED", "return_id": "RB-3001", "line": 1}',
  '2026-10-04T08:00Z', '2026-10-05T00:00Z', 'returns_sync:2026-10-04', 'RECEIVED', 'RB-3001', 1),
 ('ev-3', 'ev-3', '{"event_id": "ev-3", "type": "IN_TRANSIT", "return_id": "RB-3001", "line": 2}',
  '2026-10-02T08:00Z', '2026-10-03T00:00Z', 'returns_sync:2026-10-02', 'IN_TRANSIT', 'RB-3001', 2),
 ('ev-4', 'ev-4', '{"event_id": "ev-4", "type": "GRADED", "return_id": "RB-3001", "line": 2, "grade": "Z"}',
  '2026-10-03T08:00Z', '2026-10-04T00:00Z', 'returns_sync:2026-10-03', 'GRADED', 'RB-3001', 2),
 ('ev-5', 'ev-5', '{"event_id": "ev-5", "type": "RECEIVED", "return_id": "RB-3001", "line": 2}',
  '2026-10-05T08:00Z', '2026-10-06T00:00Z', 'returns_sync:2026-10-05', 'RECEIVED', 'RB-3001', 2);
INSERT INTO ledger.event_outcome (raw_id, status, detail, batch_id, decided_at) VALUES
 (1, 'APPLIED', NULL, 'returns_sync:2026-10-01', '2026-10-02T00:00Z'),
 (2, 'APPLIED', NULL, 'returns_sync:2026-10-04', '2026-10-05T00:00Z'),
 (3, 'HELD', 'unmapped reason LID_LOOSE', 'returns_sync:2026-10-02', '2026-10-03T00:00Z'),
 (4, 'INVALID', 'grade Z', 'returns_sync:2026-10-03', '2026-10-04T00:00Z');
INSERT INTO ledger.validation_failure (raw_id, batch_id, exception_type, detail, return_id, line) VALUES
 (4, 'returns_sync:2026-10-03', 'INVALID_EVENT', 'grade Z is not a grade', 'RB-3001', 2);
INSERT INTO ledger.event_conflict (raw_id, event_id, chosen, detected_at, batch_id) VALUES
 (5, 'ev-5', NULL, '2026-10-06T00:00Z', 'returns_sync:2026-10-05');
INSERT INTO ledger.exception (type, owner, status, subject_key, return_id, line, sku, detail, opened_at,
                              opened_by_batch, resolved_at, resolved_by, resolution) VALUES
 ('UNMAPPED_REASON_CODE', 'operations', 'open', 'RB-3001|2', 'RB-3001', 2, 'SKU-TOASTER',
  'ReBound reason LID_LOOSE has no active Amazon mapping', '2026-10-03T00:00Z', 'returns_sync:2026-10-02',
  NULL, NULL, NULL),
 ('INVALID_EVENT', 'integration', 'dismissed', 'raw:4', 'RB-3001', 2, NULL, 'grade Z is not a grade',
  '2026-10-04T00:00Z', 'returns_sync:2026-10-03', '2026-10-05T10:00Z', 'ian.integration',
  'ReBound resent it'),
 ('SKU_MISMATCH', 'operations', 'open', 'RB-3002|1', 'RB-3002', 1, 'SKU-KETTLE', 'not in the catalog',
  '2026-10-08T00:00Z', 'returns_sync:2026-10-08', NULL, NULL, NULL),
 ('QUANTITY_MISMATCH', 'warehouse', 'open', 'RB-3003|1', 'RB-3003', 1, 'SKU-IRON', 'received 2 of 3',
  '2026-09-21T00:00Z', 'returns_sync:2026-09-21', NULL, NULL, NULL),
 ('EVENT_CONFLICT', 'integration', 'open', 'event:ev-5', 'RB-3001', 2, NULL, 'ev-5 twice',
  '2026-10-06T00:00Z', 'returns_sync:2026-10-05', NULL, NULL, NULL);
INSERT INTO ledger.held_event (raw_id, return_id, line, reason, exception_id, held_at)
VALUES (3, 'RB-3001', 2, 'UNMAPPED_REASON_CODE', 1, '2026-10-03T00:00Z');
INSERT INTO ledger.audit_log (at, actor, action, subject, detail)
VALUES ('2026-10-05T10:00Z', 'ian.integration', 'exception.dismiss', 'exception:2', '{}');
INSERT INTO ledger.credit_note (credit_note_id, return_id, returns_notice, created_at, created_batch,
                                first_transaction_id, held_transaction_id, confirmed_by, confirmed_at)
VALUES ('CN-RB-3001-1', 'RB-3001', 'RN-801', '2026-10-05T00:00Z', 'returns_sync:2026-10-05', 'tx-1', 'tx-1',
        'SUCCESS', '2026-10-06T00:00Z');
INSERT INTO ledger.amazon_submission (idempotency_key, kind, return_id, line, sku, asin, quantity,
                                      unit_amount, currency, document_id, status, transaction_id, attempts,
                                      created_at, created_batch, submitted_at, resolved_at) VALUES
 ('credit:RB-3001:1', 'CREDIT_NOTE', 'RB-3001', 1, 'SKU-KETTLE', 'B0KETTLE', 1, 24.99, 'GBP', 'CN-RB-3001-1',
  'ACCEPTED', 'tx-1', 2, '2026-10-05T00:00Z', 'returns_sync:2026-10-05', '2026-10-05T00:00Z',
  '2026-10-06T00:00Z'),
 ('inventory:RB-3001:1', 'INVENTORY', 'RB-3001', 1, 'SKU-KETTLE', 'B0KETTLE', 1, NULL, NULL, NULL,
  'ACCEPTED', 'tx-inv-1', 1, '2026-10-05T00:00Z', 'returns_sync:2026-10-05', '2026-10-05T00:00Z',
  '2026-10-05T00:00Z');
INSERT INTO ledger.submission_attempt (kind, document_id, submission_ids, attempt, request_sha256,
                                       http_status, transaction_id, errors, outcome, batch_id, at) VALUES
 ('CREDIT_NOTE', 'CN-RB-3001-1', '{1}', 1, 'aa', 503, NULL, NULL, 'RETRY', 'returns_sync:2026-10-05',
  '2026-10-05T00:00Z'),
 ('CREDIT_NOTE', 'CN-RB-3001-1', '{1}', 2, 'aa', 202, 'tx-1', NULL, 'ACCEPTED_202', 'returns_sync:2026-10-05',
  '2026-10-05T00:01Z');
"""

RECON = """
INSERT INTO ledger.recon_result (period, row_key, return_id, line, recon_status, amount_owed, credited_amount,
                                 computed_at) VALUES
 (%(key)s, 'RB-3001|1', 'RB-3001', 1, %(status1)s, 24.99, 24.99, %(at)s),
 (%(key)s, 'RB-3001|2', 'RB-3001', 2, 'ON_HOLD', 49.98, NULL, %(at)s),
 (%(key)s, 'RB-3003|1', 'RB-3003', 1, 'PENDING', NULL, NULL, %(at)s)
"""


def _partition(c, key: str, status1: str, at: str) -> None:
    name = c.execute("SELECT ledger.recon_partition_name(%s)", (key,)).fetchone()[0]
    c.execute(f"CREATE TABLE ledger.{name} PARTITION OF ledger.recon_result FOR VALUES IN ('{key}')")
    c.execute(RECON, {"key": key, "status1": status1, "at": at})


@pytest.fixture
def ledger(fresh_db):
    with psycopg.connect(fresh_db) as c:
        c.execute(SEED)
        _partition(c, "2026-10", "MATCHED", "2026-11-01T06:00Z")
        _partition(c, "daily:2026-10-05", "CREDIT_MISSING", "2026-10-06T06:00Z")
        _partition(c, "daily:2026-10-06", "PENDING", "2026-10-07T06:00Z")
    with psycopg.connect(fresh_db) as c:
        yield c


@pytest.mark.parametrize(
    "text, matched_on",
    [
        ("RB-3001", "return id"),
        ("ORD-9001", "order reference"),
        ("RMA-81", "RMA"),
        ("rma-81", "RMA"),
        ("VRET-81", "VRET"),
        ("  VRET-81 ", "VRET"),
        ("CN-RB-3001-1", "credit note"),
    ],
)
def test_each_reference_finds_the_return(ledger, text, matched_on):
    rows = search_returns(ledger, text)
    assert [r["return_id"] for r in rows] == ["RB-3001"]
    assert rows[0]["matched_on"] == [matched_on]
    assert rows[0]["lines"] == 2
    assert rows[0]["states"] == ["CREDIT_ACCEPTED", "IN_TRANSIT"]


def test_a_shared_notice_and_a_sku_find_every_return_newest_first(ledger):
    assert [r["return_id"] for r in search_returns(ledger, "RN-801")] == ["RB-3002", "RB-3001"]
    kettles = search_returns(ledger, "SKU-KETTLE")
    assert [r["return_id"] for r in kettles] == ["RB-3002", "RB-3001"]
    assert all(r["matched_on"] == ["SKU"] for r in kettles)
    assert [r["return_id"] for r in search_returns(ledger, "SKU-KETTLE", limit=1)] == ["RB-3002"]
    assert search_returns(ledger, "nothing-like-it") == []
    assert search_returns(ledger, "   ") == []


def test_the_story_has_every_part_with_what_the_ledger_did(ledger):
    s = return_story(ledger, "RB-3001")
    assert s["order"]["rma_id"] == "RMA-81"
    assert [(ln["line"], ln["state"]) for ln in s["lines"]] == [(1, "CREDIT_ACCEPTED"), (2, "IN_TRANSIT")]
    did = {e["event_id"]: e["did"] for e in s["events"]}
    assert did == {
        "ev-1": "APPLIED",
        "ev-2": "APPLIED",
        "ev-3": "HELD",
        "ev-4": "INVALID",
        "ev-5": "CONFLICT",
    }
    ev4 = next(e for e in s["events"] if e["event_id"] == "ev-4")
    assert ev4["payload"]["grade"] == "Z" and ev4["failed_check"] == "INVALID_EVENT"
    assert next(e for e in s["events"] if e["event_id"] == "ev-3")["held_for"] == "UNMAPPED_REASON_CODE"
    xs = {x["type"]: x for x in s["exceptions"]}
    assert set(xs) == {"UNMAPPED_REASON_CODE", "INVALID_EVENT", "EVENT_CONFLICT"}  # not RB-3002's
    closed = xs["INVALID_EVENT"]
    assert (closed["status"], closed["resolved_by"], closed["resolution"]) == (
        "dismissed",
        "ian.integration",
        "ReBound resent it",
    )
    assert [a["action"] for a in closed["audit"]] == ["exception.dismiss"]
    assert [h["raw_id"] for h in s["holds"]] == [3]
    assert [n["credit_note_id"] for n in s["credit_notes"]] == ["CN-RB-3001-1"]
    assert [(a["attempt"], a["outcome"]) for a in s["send_log"]] == [(1, "RETRY"), (2, "ACCEPTED_202")]
    assert {(u["kind"], u["status"]) for u in s["submissions"]} == {
        ("CREDIT_NOTE", "ACCEPTED"),
        ("INVENTORY", "ACCEPTED"),
    }
    # the closed month and the latest daily check, not an older daily check nor another return's rows
    assert [(r["period"], r["line"], r["recon_status"]) for r in s["recon"]] == [
        ("2026-10", 1, "MATCHED"),
        ("2026-10", 2, "ON_HOLD"),
        ("daily:2026-10-06", 1, "PENDING"),
        ("daily:2026-10-06", 2, "ON_HOLD"),
    ]


def test_the_timeline_is_in_time_order_and_in_plain_words(ledger):
    t = return_story(ledger, "RB-3001")["timeline"]
    times = [e["at"] for e in t]
    assert times == sorted(times)
    assert t[0]["kind"] == "order"
    kinds = {e["kind"] for e in t}
    assert {
        "event",
        "transition",
        "exception_opened",
        "exception_closed",
        "credit_note",
        "attempt",
        "confirmed",
        "inventory",
        "recon",
    } <= kinds
    held = next(e for e in t if e["kind"] == "event" and e["code"] == "HELD")
    assert say("event_outcome", "HELD") in held["words"]
    accepted = next(e for e in t if e["kind"] == "transition" and e["code"] == "CREDIT_ACCEPTED")
    assert accepted["words"].startswith("Amazon accepted the credit note")
    kinds_in_order = [e["kind"] for e in t]
    assert kinds_in_order.index("credit_note") < kinds_in_order.index("attempt")  # same moment, made first
    closed = next(e for e in t if e["kind"] == "exception_closed")
    assert "ian.integration" in closed["words"] and "ReBound resent it" in closed["words"]


def test_an_unknown_return_is_not_found(ledger):
    with pytest.raises(ReturnNotFound):
        return_story(ledger, "RB-NOPE")


def test_the_glossary_says_every_code_the_ledger_has():
    from returnledger.models import ExceptionType, LineState, ReconStatus

    words = glossary()
    assert set(words["line_state"]) == {s.value for s in LineState}
    assert set(words["exception_type"]) == {t.value for t in ExceptionType}
    assert set(words["recon_status"]) == {s.value for s in ReconStatus}
    assert all(words["exception_type"].values())
    assert say("line_state", "SOMETHING_NEW") == "SOMETHING_NEW"


def test_a_team_queue_lists_its_overdue_exceptions_first(ledger):
    as_of = datetime(2026, 10, 9, 12, tzinfo=UTC)
    ops = team_queue(ledger, "operations", as_of)
    # UNMAPPED (opened 10-03, SLA 2 days: overdue) before SKU_MISMATCH (opened 10-08: due 10-10)
    assert [(r["type"], r["overdue"]) for r in ops] == [
        ("UNMAPPED_REASON_CODE", True),
        ("SKU_MISMATCH", False),
    ]
    assert ops[0]["age_days"] == 6 and ops[0]["sla_days"] == 2
    assert [r["type"] for r in team_queue(ledger, "operations", as_of, limit=1)] == ["UNMAPPED_REASON_CODE"]
    integration = team_queue(ledger, "integration", as_of)
    assert [r["type"] for r in integration] == ["EVENT_CONFLICT"]  # the dismissed one is not in the queue
    counts = team_counts(ledger, as_of)
    assert counts["operations"] == {"open": 2, "overdue": 1}
    assert counts["warehouse"] == {"open": 1, "overdue": 1}
    assert counts["finance"] == {"open": 0, "overdue": 0}
    early = team_counts(ledger, datetime(2026, 10, 4, tzinfo=UTC))
    assert early["operations"] == {"open": 2, "overdue": 0}


@pytest.mark.parametrize(
    "label",
    ["search", "events", "history", "notes", "submissions", "send_log", "recon", "queue"],
)
def test_every_page_query_reads_through_an_index(ledger, label):
    """With sequential scans priced out, a table read without a usable index still shows a Seq Scan:
    every big table the pages read (orders, lines, events, history, notes, send log, results, exceptions)
    is reached through an index (migration 0021_console_lookup for the references, notes and queues)."""
    from returnledger.console import story, teams
    from returnledger.exception_queue.sla import sla_params

    as_of = datetime(2026, 10, 9, tzinfo=UTC)
    sql, params = {
        "search": (story._SEARCH_SQL, {"t": "RMA-81", "n": 50}),
        "events": (story._EVENTS_SQL, {"rid": "RB-3001"}),
        "history": (story._HISTORY_SQL, {"rid": "RB-3001"}),
        "notes": (story._NOTES_SQL, {"rid": "RB-3001"}),
        "submissions": (story._SUBMISSIONS_SQL, {"rid": "RB-3001"}),
        "send_log": (story._SEND_LOG_SQL, {"notes": ["CN-RB-3001-1"]}),
        "recon": (story._RECON_SQL, {"periods": ["2026-10"], "keys": ["RB-3001|1"]}),
        "queue": (teams._QUEUE_SQL, {"team": "operations", "as_of": as_of, "limit": 500, **sla_params()}),
    }[label]
    big = {
        "return_order",
        "return_line",
        "raw_event",
        "line_history",
        "credit_note",
        "amazon_submission",
        "submission_attempt",
        "exception",
        "event_outcome",
    }
    with ledger.transaction():
        ledger.execute("SET LOCAL enable_seqscan = off")
        plan = [r[0] for r in ledger.execute("EXPLAIN " + sql, params).fetchall()]
    seq = [ln.strip() for ln in plan if "Seq Scan on" in ln and ln.split("Seq Scan on ")[1].split()[0] in big]
    assert seq == [], "\n".join(plan)
