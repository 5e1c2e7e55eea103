"""Claimed before sent: which pusher may send which ``ledger.amazon_submission`` rows, and the send log.

A claim is a lease written into the rows: ``SENDING`` with the pusher's owner key (``claim_key``), its
name (``claimed_by``) and an expiry (``lease_until``, the database's clock) that the pusher renews before
every HTTP attempt. Every later status change states the status and owner it expects. A claim is taken
over only once its lease has run out, so a lost database connection (a PostgreSQL restart,
``pg_terminate_backend``, an idle timeout, a pooler) takes nothing from a living pusher: it reconnects
(``Ledger``) and goes on. The lease must outlast one HTTP attempt and its back-off (``lease_seconds``).

Every HTTP attempt is two append-only ``ledger.submission_attempt`` rows under one ``send_id``: SENDING,
committed before the request leaves, and its outcome after it. A SENDING row without an outcome, a 5xx or
no answer is an attempt whose outcome is unknown: Amazon may hold the note (returnledger.amazon.confirm).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg

from returnledger.store.db import connect

log = logging.getLogger(__name__)

T = TypeVar("T")

#: credit notes claimed at a time: a pusher never holds more than this many unsent notes
CLAIM_CHUNK = 200
#: seconds a claim holds without renewal; must exceed one HTTP attempt (client timeout) plus its back-off
LEASE_ENV = "RETURNLEDGER_CLAIM_LEASE_S"
#: seconds a pusher waits for a lost ledger connection to come back before it gives up
RECONNECT_ENV = "RETURNLEDGER_LEDGER_RECONNECT_S"


def lease_seconds() -> float:
    return float(os.environ.get(LEASE_ENV, "120"))


class LedgerUnreachable(RuntimeError):
    """The ledger stayed unreachable longer than the pusher waits: the step fails, its leases run out."""


class ClaimLost(RuntimeError):
    """This pusher's lease on a note ran out and another pusher holds it now: this one must not send it."""


class Ledger:
    """The pusher's way to the ledger: one connection, reopened when it is lost.

    Nothing a pusher holds lives in its session (claims are leases in the rows), so a lost connection
    costs a reconnect, not a claim. Each step given to ``run`` is one transaction that is safe to run
    again (every change states the status and owner it expects; send-log rows are unique per attempt).
    """

    def __init__(self, dsn: str, *, wait_s: float | None = None):
        self.dsn = dsn
        self.wait_s = float(os.environ.get(RECONNECT_ENV, "60")) if wait_s is None else wait_s
        self.conn: psycopg.Connection | None = None

    def _open(self) -> psycopg.Connection:
        if self.conn is None or self.conn.closed:
            self.conn = connect(self.dsn, autocommit=True)
        return self.conn

    def run(self, step: Callable[[psycopg.Connection], T], *, transaction: bool = True) -> T:
        """``step(conn)`` in one committed transaction (``transaction=False``: each statement its own, for a
        step of one statement); run again on a new connection if it was lost."""
        deadline = time.monotonic() + self.wait_s
        delay = 0.1
        while True:
            try:
                conn = self._open()
                if not transaction:
                    return step(conn)
                with conn.transaction():
                    return step(conn)
            except (psycopg.OperationalError, psycopg.InterfaceError) as e:
                lost = self.conn is None or self.conn.closed or self.conn.broken
                if not lost:
                    raise
                self.close()
                if time.monotonic() >= deadline:
                    raise LedgerUnreachable(
                        f"the ledger connection was lost and did not come back within {self.wait_s:g} s: {e}"
                    ) from e
                log.warning("ledger connection lost (%s); reconnecting", str(e).strip()[:200])
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):  # a broken connection may fail to close: gone anyway
                self.conn.close()
            self.conn = None


class Claim:
    """This pusher's lease: an owner key and a readable name written into the rows it claims."""

    def __init__(self, batch_id: str, *, lease_s: float | None = None):
        self.key = random.getrandbits(62) + 1
        self.name = f"{socket.gethostname()}:{os.getpid()}:{batch_id}"
        self.lease_s = lease_seconds() if lease_s is None else lease_s
        self._renewed = time.monotonic()

    def renew_all(self, conn) -> None:
        """Extend the lease on every row this pusher holds, once a quarter of the lease has gone by."""
        if time.monotonic() - self._renewed > self.lease_s / 4:
            conn.execute(
                """UPDATE ledger.amazon_submission
                      SET lease_until = clock_timestamp() + make_interval(secs => %s)
                    WHERE status = 'SENDING' AND claim_key = %s""",
                (self.lease_s, self.key),
            )
            self._renewed = time.monotonic()


# the claimable rows of a kind: PENDING, SENDING under a lease that has run out, or SENDING under our own
# claim (a claim whose commit this pusher did not hear of before its connection was lost)
_CLAIMABLE = """(s.status = 'PENDING' OR (s.status = 'SENDING' AND (s.claim_key = %(me)s
                 OR s.lease_until IS NULL OR s.lease_until < clock_timestamp())))"""
_TAKE = """status = 'SENDING', claim_key = %(me)s, claimed_by = %(name)s,
           lease_until = clock_timestamp() + make_interval(secs => %(lease)s)"""


def claim_credit_notes(ledger: Ledger, claim: Claim) -> dict[str, list[dict]]:
    """Claim up to CLAIM_CHUNK credit notes; returns their rows by credit note id (empty: nothing left)."""

    def step(conn) -> dict[str, list[dict]]:
        params = {"me": claim.key, "name": claim.name, "n": CLAIM_CHUNK, "lease": claim.lease_s}
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
                params,
            )
        ]
        if not note_ids:
            return {}
        cur = conn.execute(
            f"""
            UPDATE ledger.amazon_submission s SET {_TAKE}
              FROM ledger.return_order o, ledger.return_line l
             WHERE s.document_id = ANY(%(notes)s) AND s.kind = 'CREDIT_NOTE' AND {_CLAIMABLE}
               AND o.return_id = s.return_id AND l.return_id = s.return_id AND l.line = s.line
            RETURNING s.submission_id, s.document_id AS credit_note_id, s.return_id, s.line, s.sku, s.asin,
                      s.quantity, s.unit_amount, s.currency, s.created_at, s.attempts, o.returns_notice,
                      o.rma_id, o.vret, l.received_at""",
            dict(params, notes=note_ids),
        )
        names = [d.name for d in cur.description]
        notes: dict[str, list[dict]] = defaultdict(list)
        for r in cur.fetchall():
            row = dict(zip(names, r, strict=True))
            notes[row["credit_note_id"]].append(row)
        return notes

    notes = ledger.run(step)
    for rows in notes.values():
        rows.sort(key=lambda r: r["line"])
    return dict(sorted(notes.items()))


def claim_restocks(ledger: Ledger, claim: Claim) -> list[tuple[int, str]]:
    """Claim every claimable INVENTORY row; returns (submission id, SKU) pairs."""
    return ledger.run(
        lambda conn: conn.execute(
            f"""
            WITH c AS (SELECT s.submission_id FROM ledger.amazon_submission s
                        WHERE s.kind = 'INVENTORY' AND {_CLAIMABLE} FOR UPDATE OF s SKIP LOCKED)
            UPDATE ledger.amazon_submission a SET {_TAKE}
              FROM c WHERE a.submission_id = c.submission_id RETURNING a.submission_id, a.sku""",
            {"me": claim.key, "name": claim.name, "lease": claim.lease_s},
        ).fetchall()
    )


def release(ledger: Ledger, ids: list[int], claim: Claim, error: str | None) -> None:
    """Give rows back (PENDING) after a failed send; only rows this pusher still holds."""
    ledger.run(
        lambda conn: conn.execute(
            """UPDATE ledger.amazon_submission SET status = 'PENDING', claim_key = NULL, claimed_by = NULL,
                      lease_until = NULL, last_error = COALESCE(%s, last_error)
                WHERE submission_id = ANY(%s) AND status = 'SENDING' AND claim_key = %s""",
            (error, ids, claim.key),
        )
    )


def release_all(ledger: Ledger, claim: Claim) -> None:
    """A pusher that stops gives back what it still holds, so nobody waits for its leases to run out."""
    ledger.run(
        lambda conn: conn.execute(
            """UPDATE ledger.amazon_submission SET status = 'PENDING', claim_key = NULL, claimed_by = NULL,
                      lease_until = NULL WHERE status = 'SENDING' AND claim_key = %s""",
            (claim.key,),
        )
    )


def mark_submitted(conn, ids: list[int], claim: Claim, tx: str, at: datetime) -> list[tuple]:
    """Amazon answered 202: the rows this pusher still holds become SUBMITTED; returns their lines."""
    return conn.execute(
        """
        UPDATE ledger.amazon_submission SET status = 'SUBMITTED', transaction_id = %s, submitted_at = %s,
               last_error = NULL, claim_key = NULL, lease_until = NULL, refused_transaction_id = NULL
         WHERE submission_id = ANY(%s) AND status = 'SENDING' AND claim_key = %s
        RETURNING return_id, line""",
        (tx, at, ids, claim.key),
    ).fetchall()


# before an HTTP attempt: the rows all still ours (locked), their lease renewed, the send counted on its
# first attempt, its SENDING row; or none of it
_BEFORE_SQL = """
WITH mine AS (SELECT submission_id FROM ledger.amazon_submission
               WHERE submission_id = ANY(%(ids)s) AND status = 'SENDING' AND claim_key = %(me)s FOR UPDATE),
     ok AS (SELECT count(*) AS held FROM mine),
     renewed AS (UPDATE ledger.amazon_submission s
                    SET lease_until = clock_timestamp() + make_interval(secs => %(lease)s),
                        attempts = s.attempts + %(count)s
                   FROM ok WHERE ok.held = %(n)s AND s.submission_id IN (SELECT submission_id FROM mine)
                 RETURNING 1),
     logged AS (INSERT INTO ledger.submission_attempt (kind, document_id, submission_ids, attempt,
                       request_sha256, outcome, claimed_by, batch_id, at, send_id)
                SELECT %(kind)s, %(doc)s, %(ids)s, %(attempt)s, %(sha)s, 'SENDING', %(name)s, %(batch)s,
                       %(at)s, %(send)s FROM ok WHERE ok.held = %(n)s
                ON CONFLICT (send_id, attempt, outcome) WHERE send_id IS NOT NULL DO NOTHING RETURNING 1)
SELECT held FROM ok"""


def _sha256(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


class SendLog:
    """The send log of one send: before each HTTP attempt, the lease is renewed (or the send stops:
    ClaimLost) and a SENDING row committed; after it, its outcome row."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        kind: str,
        credit_note_id: str | None,
        ids: list[int],
        body: Any,
        claim: Claim,
        batch_id: str,
        at: datetime,
        defer_accepted: bool = False,
    ):
        self.ledger, self.kind, self.credit_note_id, self.ids = ledger, kind, credit_note_id, ids
        self.sha, self.claim, self.batch_id, self.at = _sha256(body), claim, batch_id, at
        self.send_id = uuid.uuid4().hex
        self.defer_accepted = defer_accepted
        self.accepted: tuple[int, int, str, datetime] | None = None  # a 202 not yet written (deferred)

    def _row(
        self,
        conn,
        attempt: int,
        status: int | None,
        tx: str | None,
        errors: Any,
        outcome: str,
        sent_at: datetime | None = None,
    ) -> None:
        conn.execute(
            """
            INSERT INTO ledger.submission_attempt (kind, document_id, submission_ids, attempt, request_sha256,
                   http_status, transaction_id, errors, outcome, claimed_by, batch_id, at, send_id, sent_at)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s, %s, %s,
                    COALESCE(%s, clock_timestamp()))
            ON CONFLICT (send_id, attempt, outcome) WHERE send_id IS NOT NULL DO NOTHING""",
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
                self.send_id,
                sent_at,
            ),
        )

    def before(self, attempt: int) -> None:
        """Before HTTP attempt ``attempt``: still ours (lease renewed; the send counted on its first), and
        written down as SENDING; all in one statement (one round trip, committed before the request
        leaves), or nothing and ClaimLost when a row is no longer this pusher's."""

        def step(conn) -> None:
            held = conn.execute(
                _BEFORE_SQL,
                {
                    "ids": self.ids,
                    "n": len(self.ids),
                    "me": self.claim.key,
                    "lease": self.claim.lease_s,
                    "count": int(attempt == 1),
                    "kind": self.kind,
                    "doc": self.credit_note_id,
                    "attempt": attempt,
                    "sha": self.sha,
                    "name": self.claim.name,
                    "batch": self.batch_id,
                    "at": self.at,
                    "send": self.send_id,
                },
            ).fetchone()[0]
            if held != len(self.ids):
                raise ClaimLost(
                    f"{len(self.ids) - held} of {len(self.ids)} rows are no longer claimed by "
                    f"{self.claim.name} (lease ran out)"
                )
            self.claim.renew_all(conn)

        self.ledger.run(step, transaction=False)

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
        if outcome == "ACCEPTED_202" and self.defer_accepted and tx:
            # written with the rows' SUBMITTED (write_accepted), stamped with the time of the answer: the
            # status checks count Amazon's processing from it
            self.accepted = (attempt, status or 202, tx, datetime.now(UTC))
            return
        self.ledger.run(lambda conn: self._row(conn, attempt, status, tx, errors, outcome))

    def write_accepted(self, conn) -> None:
        """The deferred 202's outcome row, in the caller's transaction (the one that records the send)."""
        if self.accepted is not None:
            attempt, status, tx, at = self.accepted
            self._row(conn, attempt, status, tx, None, "ACCEPTED_202", sent_at=at)


def begin_send(
    ledger: Ledger,
    claim: Claim,
    *,
    kind: str,
    credit_note_id: str | None,
    ids: list[int],
    body: Any,
    batch_id: str,
    at: datetime,
    defer_accepted: bool = False,
) -> SendLog:
    """The send log that records each HTTP try of a send (``before`` and the log itself go to the client as
    ``before_attempt`` and ``on_attempt``); the send is counted on the claimed rows with its first
    attempt's lease renewal (one transaction before the request leaves). ``defer_accepted``: the 202's
    outcome row is written by the caller with the rows' SUBMITTED (returnledger.amazon.recording)."""
    return SendLog(
        ledger,
        kind=kind,
        credit_note_id=credit_note_id,
        ids=ids,
        body=body,
        claim=claim,
        batch_id=batch_id,
        at=at,
        defer_accepted=defer_accepted,
    )
