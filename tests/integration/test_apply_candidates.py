"""Apply's candidates (issue 26 target 3): a held event of a line that is still blocked is no candidate.

Apply reads the events with no outcome and the HELD ones, and drops a held event whose line (or return) an
open exception still blocks: it stays held as it was, untouched by the later run. Both apply paths.
"""

from __future__ import annotations

import pytest
from hostile_feed import FakeRebound, event, one, order, raw, run_pass, seed

from returnledger.ledger import apply as apply_module

pytestmark = pytest.mark.integration

UNKNOWN_SKU = "SKU-NOT-IN-THE-CATALOG"  # SKU_MISMATCH: holds the line until the catalog has it


@pytest.fixture
def dsn(fresh_db):
    seed(fresh_db)
    return fresh_db


def _held(dsn, key):
    return one(
        dsn,
        "SELECT (o.status, o.batch_id, o.decided_at, h.exception_id)::text FROM ledger.raw_event r"
        " JOIN ledger.event_outcome o USING (raw_id) LEFT JOIN ledger.held_event h USING (raw_id)"
        " WHERE r.event_key = %s",
        (key,),
    )


@pytest.mark.parametrize("set_based", [False, True])
def test_a_held_event_of_a_still_blocked_line_stays_as_it_was(dsn, monkeypatch, set_based):
    monkeypatch.setattr(apply_module, "SET_BASED", set_based)
    line = {"line": 1, "sku": UNKNOWN_SKU, "quantity": 1, "reason": "FAULTY"}
    rb = FakeRebound({"R-1": order("R-1", [line]), "R-2": order("R-2", [(1, 1)])})
    rb.serve([raw(event("c1", "RETURN_CREATED", "R-1")), raw(event("r1", "RECEIVED", "R-1", 1, quantity=1))])
    first = run_pass(dsn, rb, day=3)
    assert first["quarantine"]["held"] >= 1
    before = _held(dsn, "r1")
    assert before is not None and before.startswith("(HELD,")

    # a later run with other work and nothing that unblocks R-1's line
    rb.serve([raw(event("c2", "RETURN_CREATED", "R-2")), raw(event("r2", "RECEIVED", "R-2", 1, quantity=1))])
    later = run_pass(dsn, rb, day=4)
    assert later["apply"]["held"] == 0  # nothing held again: the blocked event was no candidate
    assert later["apply"]["applied"] >= 1  # R-2's events went on
    assert _held(dsn, "r1") == before  # same outcome row (batch, time) and the same hold
