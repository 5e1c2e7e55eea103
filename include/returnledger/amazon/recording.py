"""Recording what Amazon took in: the sends of several credit notes in one ledger transaction (issue 26).

At a 20 req/s plan a note has 50 ms, and ``push_credits`` shares them with the status checks beside it.
Each sent note used to cost the ledger four transactions (count the send, the SENDING row, the 202's row,
the rows SUBMITTED with the lines' CREDIT_SUBMITTED). Now the send is counted with its SENDING row (one
transaction, committed before the request leaves: returnledger.amazon.claims.SendLog.before), and the 202's
outcome row, the rows SUBMITTED, the note's first transaction and its lines' history are written for up to
``record_batch()`` notes at once, or sooner once the oldest waited ``RECORD_WAIT_S``.

Crash safety is the send log's: until a note is recorded its rows stay SENDING under this pusher's lease,
and the send log holds the attempt's SENDING row without an outcome, an attempt whose outcome is unknown.
A pusher that dies in between leaves at most a batch of such notes; once its lease has run out the next
pusher sends each again under the same id, and confirm judges Amazon's answer by the send log (under either
duplicate rule), so no credit is taken twice. A pusher must record what it sent before it claims again
(its own SENDING rows are claimable by it) or gives its claims back (``release_all``).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime

from returnledger.amazon.answers import transition
from returnledger.amazon.claims import Claim, Ledger, SendLog
from returnledger.ledger import lifecycle

log = logging.getLogger(__name__)

#: sent notes recorded per ledger transaction
RECORD_ENV = "RETURNLEDGER_PUSH_RECORD_BATCH"
#: seconds a sent note waits at most for the others of its batch (the checks beside the push read it then)
RECORD_WAIT_S = 0.5


def record_batch() -> int:
    return max(1, int(os.environ.get(RECORD_ENV, "8")))


@dataclass
class Sent:
    """A note Amazon answered 202, not yet written down as SUBMITTED."""

    note_id: str
    ids: list[int]
    tx: str
    sendlog: SendLog


class Recorder:
    """Sent notes waiting to be recorded; ``add`` and ``flush`` return the notes recorded with the number
    of their rows still this pusher's (fewer than their ids: the lease ran out meanwhile)."""

    def __init__(
        self,
        ledger: Ledger,
        claim: Claim,
        *,
        at: datetime,
        batch_id: str,
        size: int | None = None,
        wait_s: float | None = None,
    ):
        self.ledger, self.claim, self.at, self.batch_id = ledger, claim, at, batch_id
        self.size = record_batch() if size is None else max(1, size)
        self.wait_s = RECORD_WAIT_S if wait_s is None else wait_s
        self.waiting: list[Sent] = []
        self._since = 0.0
        self.transactions = 0

    def __len__(self) -> int:
        return len(self.waiting)

    def due(self) -> bool:
        return bool(self.waiting) and (
            len(self.waiting) >= self.size or time.monotonic() - self._since >= self.wait_s
        )

    def add(self, sent: Sent) -> list[tuple[Sent, int]]:
        if not self.waiting:
            self._since = time.monotonic()
        self.waiting.append(sent)
        return self.flush() if self.due() else []

    def flush(self) -> list[tuple[Sent, int]]:
        if not self.waiting:
            return []
        batch = list(self.waiting)
        held = self.ledger.run(
            lambda conn: record_sent(conn, batch, self.claim, at=self.at, batch_id=self.batch_id)
        )
        self.waiting = []
        self.transactions += 1
        return [(s, sum(1 for i in s.ids if i in held)) for s in batch]


def record_sent(conn, batch: list[Sent], claim: Claim, *, at: datetime, batch_id: str) -> set[int]:
    """In ``conn``'s transaction: each note's 202 in the send log, its rows SUBMITTED under its transaction
    (those this pusher still holds), the note's first transaction, and its lines CREDIT_SUBMITTED with
    history. Safe to run again (every row states what it expects). Returns the submission ids recorded."""
    with conn.pipeline():  # one round trip for the batch's send-log rows
        for s in batch:
            s.sendlog.write_accepted(conn)
    ids = [i for s in batch for i in s.ids]
    txs = [s.tx for s in batch for _ in s.ids]
    done = conn.execute(
        """
        UPDATE ledger.amazon_submission s
           SET status = 'SUBMITTED', transaction_id = x.tx, submitted_at = %s, last_error = NULL,
               claim_key = NULL, lease_until = NULL, refused_transaction_id = NULL
          FROM unnest(%s::bigint[], %s::text[]) AS x(id, tx)
         WHERE s.submission_id = x.id AND s.status = 'SENDING' AND s.claim_key = %s
        RETURNING s.submission_id, s.return_id, s.line""",
        (at, ids, txs, claim.key),
    ).fetchall()
    conn.execute(
        """UPDATE ledger.credit_note n SET first_transaction_id = COALESCE(n.first_transaction_id, x.tx)
             FROM unnest(%s::text[], %s::text[]) AS x(note, tx) WHERE n.credit_note_id = x.note""",
        ([s.note_id for s in batch], [s.tx for s in batch]),
    )
    transition(
        conn,
        [(r[1], r[2]) for r in done],
        lifecycle.on_credit_submitted,
        cause="CREDIT_SUBMITTED",
        at=at,
        batch_id=batch_id,
    )
    return {r[0] for r in done}
