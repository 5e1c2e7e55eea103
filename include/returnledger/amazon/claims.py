"""Claimed before sent: which pusher may send which ``ledger.amazon_submission`` rows, and the send log.

A pusher claims rows (``FOR UPDATE SKIP LOCKED``, then ``SENDING`` with a claim key) and every later status
change states the status and claim it expects. The claim key is a PostgreSQL advisory lock that the
pusher's session holds while it lives: a claim left by a dead process (its lock is free) is taken over on
the next run; a living pusher's claim is never stolen. Every HTTP attempt is an append-only
``ledger.submission_attempt`` row, committed at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
from collections import defaultdict
from datetime import datetime
from typing import Any

#: credit notes claimed at a time: a pusher never holds more than this many unsent notes
CLAIM_CHUNK = 200


class Claim:
    """This pusher's identity: an advisory lock its session holds while it lives, and a readable name."""

    def __init__(self, conn, batch_id: str):
        self.key = random.getrandbits(62) + 1
        self.name = f"{socket.gethostname()}:{os.getpid()}:{batch_id}"
        conn.execute("SELECT pg_advisory_lock(%s)", (self.key,))
        conn.commit()


# the claimable rows of a kind: PENDING, or SENDING under a claim whose owner's session is gone
_CLAIMABLE = """(s.status = 'PENDING' OR (s.status = 'SENDING' AND s.claim_key IS DISTINCT FROM %(me)s
                 AND pg_try_advisory_lock(s.claim_key) AND pg_advisory_unlock(s.claim_key)))"""


def claim_credit_notes(conn, claim: Claim) -> dict[str, list[dict]]:
    """Claim up to CLAIM_CHUNK credit notes; returns their rows by credit note id (empty: nothing left)."""
    # the claimable note ids first, once (MATERIALIZED): PostgreSQL never turns a sub-query holding the
    # volatile lock probe into a join, so an EXISTS here probed every note, sent or not, in id order until
    # it had found CLAIM_CHUNK (0.8 s per claim with 1,800 of 2,000 sent, and growing with history)
    with conn.transaction():
        note_ids = [
            r[0]
            for r in conn.execute(
                f"""
            WITH claimable AS MATERIALIZED (
                SELECT DISTINCT s.document_id FROM ledger.amazon_submission s
                 WHERE s.kind = 'CREDIT_NOTE' AND {_CLAIMABLE})
            SELECT n.credit_note_id
              FROM ledger.credit_note n JOIN claimable c ON c.document_id = n.credit_note_id
             ORDER BY n.credit_note_id LIMIT %(n)s FOR UPDATE OF n SKIP LOCKED""",
                {"me": claim.key, "n": CLAIM_CHUNK},
            )
        ]
        if not note_ids:
            return {}
        cur = conn.execute(
            f"""
            UPDATE ledger.amazon_submission s
               SET status = 'SENDING', claim_key = %(me)s, claimed_by = %(name)s
              FROM ledger.return_order o, ledger.return_line l
             WHERE s.document_id = ANY(%(notes)s) AND s.kind = 'CREDIT_NOTE' AND {_CLAIMABLE}
               AND o.return_id = s.return_id AND l.return_id = s.return_id AND l.line = s.line
            RETURNING s.submission_id, s.document_id AS credit_note_id, s.return_id, s.line, s.sku, s.asin,
                      s.quantity, s.unit_amount, s.currency, s.created_at, s.attempts, o.returns_notice,
                      o.rma_id, o.vret, l.received_at""",
            {"me": claim.key, "name": claim.name, "notes": note_ids},
        )
        names = [d.name for d in cur.description]
        notes: dict[str, list[dict]] = defaultdict(list)
        for r in cur.fetchall():
            row = dict(zip(names, r, strict=True))
            notes[row["credit_note_id"]].append(row)
    for rows in notes.values():
        rows.sort(key=lambda r: r["line"])
    return dict(sorted(notes.items()))


def claim_restocks(conn, claim: Claim) -> list[tuple[int, str]]:
    """Claim every claimable INVENTORY row; returns (submission id, SKU) pairs."""
    with conn.transaction():
        return conn.execute(
            f"""
            WITH c AS (SELECT s.submission_id FROM ledger.amazon_submission s
                        WHERE s.kind = 'INVENTORY' AND {_CLAIMABLE} FOR UPDATE OF s SKIP LOCKED)
            UPDATE ledger.amazon_submission a
               SET status = 'SENDING', claim_key = %(me)s, claimed_by = %(name)s
              FROM c WHERE a.submission_id = c.submission_id RETURNING a.submission_id, a.sku""",
            {"me": claim.key, "name": claim.name},
        ).fetchall()


def release(conn, ids: list[int], claim: Claim, error: str | None) -> None:
    """Give rows back (PENDING) after a failed send; only rows this pusher still holds."""
    conn.execute(
        """UPDATE ledger.amazon_submission SET status = 'PENDING', claim_key = NULL, claimed_by = NULL,
                           last_error = COALESCE(%s, last_error)
                     WHERE submission_id = ANY(%s) AND status = 'SENDING' AND claim_key = %s""",
        (error, ids, claim.key),
    )
    conn.commit()


def mark_submitted(conn, ids: list[int], claim: Claim, tx: str, at: datetime) -> list[tuple]:
    """Amazon answered 202: the rows this pusher still holds become SUBMITTED; returns their lines."""
    return conn.execute(
        """
        UPDATE ledger.amazon_submission SET status = 'SUBMITTED', transaction_id = %s, submitted_at = %s,
               last_error = NULL, claim_key = NULL
         WHERE submission_id = ANY(%s) AND status = 'SENDING' AND claim_key = %s
        RETURNING return_id, line""",
        (tx, at, ids, claim.key),
    ).fetchall()


def _sha256(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


class SendLog:
    """Appends one ledger.submission_attempt row per HTTP attempt, committed at once."""

    def __init__(
        self,
        conn,
        *,
        kind: str,
        credit_note_id: str | None,
        ids: list[int],
        body: Any,
        claim: Claim,
        batch_id: str,
        at: datetime,
    ):
        self.conn, self.kind, self.credit_note_id, self.ids = conn, kind, credit_note_id, ids
        self.sha, self.claim, self.batch_id, self.at = _sha256(body), claim, batch_id, at

    def __call__(self, attempt: int, status: int | None, tx: str | None, errors: Any) -> None:
        outcome = (
            "ACCEPTED_202"
            if status in (200, 202) and tx
            else "NO_ANSWER"
            if status is None
            else "RETRY"
            if status == 429 or status >= 500
            else "REFUSED"
        )
        self.conn.execute(
            """
            INSERT INTO ledger.submission_attempt (kind, document_id, submission_ids, attempt, request_sha256,
                   http_status, transaction_id, errors, outcome, claimed_by, batch_id, at)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s, %s)""",
            (
                self.kind,
                self.credit_note_id,
                self.ids,
                attempt,
                self.sha,
                status,
                tx,
                json.dumps(errors, default=str) if errors else None,
                outcome,
                self.claim.name,
                self.batch_id,
                self.at,
            ),
        )
        self.conn.commit()


def begin_send(
    conn,
    claim: Claim,
    *,
    kind: str,
    credit_note_id: str | None,
    ids: list[int],
    body: Any,
    batch_id: str,
    at: datetime,
) -> SendLog:
    """Count the attempt on the claimed rows (committed before the call, so a crash still leaves a trace)
    and return the send log that records each HTTP try of it."""
    conn.execute(
        "UPDATE ledger.amazon_submission SET attempts = attempts + 1"
        " WHERE submission_id = ANY(%s) AND claim_key = %s",
        (ids, claim.key),
    )
    conn.commit()
    return SendLog(
        conn,
        kind=kind,
        credit_note_id=credit_note_id,
        ids=ids,
        body=body,
        claim=claim,
        batch_id=batch_id,
        at=at,
    )
