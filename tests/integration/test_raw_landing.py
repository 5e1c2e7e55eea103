"""Landing a chunk of raw events (issue 26 target 3): every delivery counted once, whatever the chunk holds.

Inside a transaction, ``land_rows`` COPYs a chunk whole without looking its keys up first; a key stored
before stops that COPY and the chunk takes the lookup instead. Nothing of the stopped attempt may stay, even
when the COPY had already been split to set aside a row PostgreSQL refuses.
"""

from __future__ import annotations

import pytest
from hostile_feed import T0, event, raw, rows

from returnledger.intake.raw import land_rows, raw_rows
from returnledger.store import db

pytestmark = pytest.mark.integration

B = raw(event("b", "RECEIVED", "R-1", 1, quantity=1))
C = raw(event("c", "RECEIVED", "R-1", 2, quantity=1))
POISON = b'{"event_id": "p", "type": "RECEIVED", "return_id": "R-1", "x": 1e999999}'  # numeric overflows


def _land(conn, chunk: list[bytes], batch: str):
    return land_rows(conn, raw_rows(chunk), len(chunk), window_end=T0, batch_id=batch)


def test_a_chunk_that_delivers_a_stored_event_again_lands_each_row_once(fresh_db):
    with db.connect(fresh_db) as conn, conn.transaction():
        first = _land(conn, [B], "one")
        # c first, the row PostgreSQL refuses next (the COPY is split to find it), b again last
        second = _land(conn, [C, POISON, B], "two")
    assert first == (1, 0, 0)
    assert second == (2, 1, 0)  # c and p new, b a repeat
    stored = {k: (n, problem is not None) for k, n, problem in rows(fresh_db, _STORED)}
    assert stored == {"b": (2, False), "c": (1, False), "p": (1, True)}


def test_a_chunk_of_new_events_lands_as_it_came(fresh_db):
    with db.connect(fresh_db) as conn, conn.transaction():
        assert _land(conn, [B, C, B], "one") == (2, 1, 0)
    assert {k: n for k, n, _ in rows(fresh_db, _STORED)} == {"b": 2, "c": 1}


_STORED = "SELECT event_key, deliveries, body_problem FROM ledger.raw_event ORDER BY raw_id"
