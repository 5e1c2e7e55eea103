"""The events suite on a real PostgreSQL: each malformed field fails its own check, by name.

Events land through ``raw_rows`` and ``land_rows`` (as extract lands them, bytes as received) and are
validated by ``validate``; the test reads the per-row verdicts back.
"""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from returnledger.intake.orders import store_return_orders
from returnledger.intake.raw import land_rows, raw_rows
from returnledger.screening.screen import validate
from returnledger.store import db

pytestmark = pytest.mark.integration

T0 = datetime(2026, 10, 5, 6, 0, tzinfo=UTC)
GOOD = {
    "type": "RECEIVED",
    "return_id": "RB-1",
    "line": 1,
    "quantity": 1,
    "occurred_at": "2026-10-04T10:00:00Z",
}


def _ev(event_id, **changes):
    return {"event_id": event_id, **GOOD, **changes}


CASES = {
    # event key -> (payload, expected check or None when it passes)
    "ok": (_ev("ok"), None),
    "qty-float-whole": (_ev("qty-float-whole", quantity=2.0), None),
    "qty-text": (_ev("qty-text", quantity="2"), "quantity_present"),
    "qty-bool": (_ev("qty-bool", quantity=True), "quantity_present"),
    "qty-huge": (_ev("qty-huge", quantity=1e20), "quantity_present"),
    "qty-negative": (_ev("qty-negative", quantity=-1), "quantity_range"),
    "line-fraction": (_ev("line-fraction", line=1.5), "line_present"),
    "line-zero": (_ev("line-zero", line=0), "line_positive"),
    "line-unknown": (_ev("line-unknown", line=9), "line_known"),
    "rid-na": (_ev("rid-na", return_id="NA"), "return_known"),
    "rid-shape": (_ev("rid-shape", return_id="RB 1; DROP"), "return_id_shape"),
    "when-bad": (_ev("when-bad", occurred_at="2026-13-45T00:00:00Z"), "occurred_at_iso"),
    "type-empty": (_ev("type-empty", type=""), "type_present"),
    "type-odd": (_ev("type-odd", type="TELEPORTED"), "type_known"),
    "grade-odd": ({**_ev("grade-odd", type="GRADED", grade="Z\t\u00e9"), "quantity": None}, "grade_known"),
    "nul-note": (_ev("nul-note", note="a\x00b"), None),  # jsonb cannot hold U+0000: kept as text
    "nul-rid": (_ev("nul-rid", return_id="RB\x001"), "return_id_shape"),
    "unmapped": (_ev("unmapped", line=2), "reason_mapped"),
    "no-asin": (_ev("no-asin", line=3), "sku_in_catalog"),
}


@pytest.fixture
def validated(fresh_db):
    with db.connect(fresh_db) as conn:
        store_return_orders(
            conn,
            [
                {
                    "return_id": "RB-1",
                    "created_at": "2026-10-01T00:00:00Z",
                    "amazon_refs": {"returns_notice": "RN-1"},
                    "lines": [
                        {"line": 1, "sku": "SKU-A", "reason": "DAMAGED", "quantity": 2},
                        {"line": 2, "sku": "SKU-A", "reason": "NEW_REASON", "quantity": 1},
                        {"line": 3, "sku": "SKU-NEW", "reason": "DAMAGED", "quantity": 1},
                    ],
                }
            ],
        )
        conn.execute(
            "INSERT INTO ledger.reason_mapping (rebound_reason, amazon_reason, updated_at, updated_by)"
            " VALUES ('DAMAGED', 'CR-DAMAGED_BY_CARRIER', %s, 'test')",
            (T0,),
        )
        conn.execute(
            "INSERT INTO ledger.sku (sku, asin, unit_cost, available, updated_at, updated_by)"
            " VALUES ('SKU-A', 'B000000001', 9.99, 0, %s, 'test')",
            (T0,),
        )
        # raw bytes as the feed sends them (one with no id, one delivered twice), plus decoded values
        raw = [msgspec.Raw(msgspec.json.encode(p)) for p, _ in CASES.values()]
        raw += [msgspec.Raw(b"[1, 2]"), msgspec.Raw(msgspec.json.encode(CASES["ok"][0]))]
        new, repeats, without_id = land_rows(conn, raw_rows(raw), len(raw), window_end=T0, batch_id="test")
        conn.commit()
    stats = validate(fresh_db, batch_id="test")
    with db.connect(fresh_db) as conn:
        verdicts = dict(
            conn.execute("""SELECT r.event_key, f.detail FROM ledger.raw_event r
                                        LEFT JOIN ledger.validation_failure f USING (raw_id)""")
        )
        stored = dict(conn.execute("SELECT event_key, payload FROM ledger.raw_event"))
        deliveries = dict(conn.execute("SELECT event_key, deliveries FROM ledger.raw_event"))
    return {
        "landed": (new, repeats, without_id),
        "stats": stats,
        "verdicts": verdicts,
        "stored": stored,
        "deliveries": deliveries,
    }


def test_each_bad_field_fails_its_own_check(validated):
    verdicts = validated["verdicts"]
    for key, (_, check) in CASES.items():
        detail = verdicts[key]
        if check is None:
            assert detail is None, f"{key} should pass: {detail}"
        else:
            assert detail is not None and detail.startswith(check + ":"), f"{key}: {detail}"


def test_messages_quote_the_value_received(validated):
    v = validated["verdicts"]
    assert v["rid-na"] == "return_known: return 'NA' is not known to ReBound"
    assert v["type-odd"] == "type_known: unknown event type 'TELEPORTED'"
    assert v["grade-odd"] == "grade_known: grade 'Z\\té' is not one of A, B, C, D"
    assert v["qty-negative"].endswith(
        "received quantity -1 is out of range (1..100000): a receipt is at least one unit"
    )
    assert "'NEW_REASON'" in v["unmapped"] and "'SKU-NEW'" in v["no-asin"]


def test_payloads_are_stored_as_received_and_counted_once(validated):
    new, repeats, without_id = validated["landed"]
    assert (new, repeats, without_id) == (len(CASES) + 1, 1, 1)
    assert validated["deliveries"]["ok"] == 2
    assert validated["stored"]["grade-odd"]["grade"] == "Z\t\u00e9"
    assert validated["stored"]["qty-float-whole"]["quantity"] == 2.0
    noid = [k for k in validated["stored"] if k.startswith("noid:")]
    assert len(noid) == 1 and validated["stored"][noid[0]] == [1, 2]
    assert validated["verdicts"][noid[0]].startswith("event_id_present:")
    assert validated["stats"] == {"rows": len(CASES) + 1, "passed": 3, "failed": len(CASES) - 2, "held": 0}


def test_a_nul_character_is_kept_visible_and_stops_nothing(validated):
    """PostgreSQL cannot store U+0000 in jsonb or text: the escape is kept as literal text, the rest as
    sent."""
    assert validated["stored"]["nul-note"]["note"] == "a\\u0000b"
    assert validated["stored"]["nul-note"]["quantity"] == 1
    assert validated["verdicts"]["nul-rid"] == "return_id_shape: return_id 'RB\\\\u00001' is not a ReBound id"
