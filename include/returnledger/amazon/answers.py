"""What Amazon's answers do to the ledger: the lines' state (with history) and AMAZON_REJECTED on a refusal.

Every change states the ``ledger.amazon_submission`` status it expects, so an answer applied twice (a
retried task, two pollers) changes nothing the second time.
"""

from __future__ import annotations

from datetime import datetime

from returnledger.amazon.claims import Claim
from returnledger.exception_queue.queue import NewException, line_subject, raise_exceptions
from returnledger.ledger import lifecycle
from returnledger.models import ActionKind, ExceptionType, LineState


def transition(conn, keys: list[tuple[str, int]], fn, *, cause: str, at: datetime, batch_id: str) -> None:
    """Apply a system transition (credit submitted / accepted / refused) to lines, with history."""
    if not keys:
        return
    lines = {
        (r[0], r[1]): lifecycle.LineView(
            state=LineState(r[2]),
            quantity_announced=r[3],
            quantity_received=r[4],
            grade=r[5],
            disposition=r[6],
        )
        for r in conn.execute(
            """
                SELECT return_id, line, state, quantity_announced, quantity_received, grade, disposition
                FROM ledger.return_line
                WHERE (return_id, line) IN (SELECT * FROM unnest(%s::text[], %s::int[]))""",
            ([k[0] for k in keys], [k[1] for k in keys]),
        )
    }
    upd: list[tuple[str, int, str]] = []
    hist: list[tuple[str, int, str, str]] = []
    for key, view in lines.items():
        out = fn(view)
        if not out.transitions:
            continue
        upd.append((key[0], key[1], str(out.line.state)))
        hist.extend((key[0], key[1], str(f), str(t)) for f, t in out.transitions)
    if not upd:
        return
    conn.execute(
        """UPDATE ledger.return_line l SET state = x.s, updated_at = %s
                    FROM unnest(%s::text[], %s::int[], %s::text[]) AS x(rid, ln, s)
                    WHERE l.return_id = x.rid AND l.line = x.ln""",
        (at, [u[0] for u in upd], [u[1] for u in upd], [u[2] for u in upd]),
    )
    conn.execute(
        """INSERT INTO ledger.line_history (return_id, line, from_state, to_state, cause, batch_id, at)
                    SELECT rid, ln, f, t, %s, %s, %s
                    FROM unnest(%s::text[], %s::int[], %s::text[], %s::text[]) AS x(rid, ln, f, t)""",
        (
            cause,
            batch_id,
            at,
            [h[0] for h in hist],
            [h[1] for h in hist],
            [h[2] for h in hist],
            [h[3] for h in hist],
        ),
    )


def reject(
    conn,
    rows: list[dict],
    error: str,
    *,
    at: datetime,
    batch_id: str,
    claim: Claim | None = None,
    expect: str = "SENDING",
) -> None:
    """Amazon refused the note (a Failure, not a duplicate): its lines are REJECTED, with an exception."""
    with conn.transaction():
        ids = [r["submission_id"] for r in rows]
        guard = "AND claim_key = %s" if claim is not None else ""
        params = (error, at, ids, expect, *((claim.key,) if claim is not None else ()))
        done = conn.execute(
            f"""UPDATE ledger.amazon_submission SET status = 'FAILED', last_error = %s,
                                       resolved_at = %s, claim_key = NULL, lease_until = NULL
                                 WHERE submission_id = ANY(%s) AND status = %s {guard}
                                RETURNING return_id, line, sku""",
            params,
        ).fetchall()
        keys = [(rid, ln) for rid, ln, _ in done]
        transition(
            conn,
            keys,
            lambda v: lifecycle.on_credit_result(v, accepted=False),
            cause="AMAZON_FAILURE",
            at=at,
            batch_id=batch_id,
        )
        raise_exceptions(
            conn,
            [
                NewException(
                    ExceptionType.AMAZON_REJECTED,
                    line_subject(rid, ln),
                    f"Amazon answered the credit note with Failure: {error}",
                    return_id=rid,
                    line=ln,
                    sku=sku,
                )
                for rid, ln, sku in done
            ],
            at=at,
            batch_id=batch_id,
        )


def accept(
    conn,
    kind: str,
    ids: list[int],
    tx: str,
    credit_note_id: str | None,
    *,
    at: datetime,
    batch_id: str,
    evidence: str,
) -> None:
    """Amazon holds the action; ``evidence``: SUCCESS of its transaction, or a DUPLICATE refusal naming it."""
    with conn.transaction():
        keys = conn.execute(
            """UPDATE ledger.amazon_submission SET status = 'ACCEPTED', resolved_at = %s
                               WHERE submission_id = ANY(%s) AND status = 'SUBMITTED'
                               RETURNING return_id, line""",
            (at, ids),
        ).fetchall()
        if kind == ActionKind.CREDIT_NOTE:
            if credit_note_id:
                conn.execute(
                    """UPDATE ledger.credit_note SET held_transaction_id = %s, confirmed_by = %s,
                                       confirmed_at = %s WHERE credit_note_id = %s""",
                    (tx, evidence, at, credit_note_id),
                )
            transition(
                conn,
                [tuple(k) for k in keys],
                lambda v: lifecycle.on_credit_result(v, accepted=True),
                cause="AMAZON_SUCCESS" if evidence == "SUCCESS" else "AMAZON_HOLDS_DUPLICATE",
                at=at,
                batch_id=batch_id,
            )


def follow(conn, ids: list[int], tx: str, original: str, credit_note_id: str | None) -> None:
    """Amazon refused a resend as a duplicate of ``original``, a transaction that may be this note's: poll
    that one. Its Success accepts the note; its Failure means the refusal proved nothing (``unproven``)."""
    with conn.transaction():
        conn.execute(
            """UPDATE ledger.amazon_submission SET transaction_id = %s, refused_transaction_id = %s,
                               last_error = %s WHERE submission_id = ANY(%s) AND status = 'SUBMITTED'
                               AND transaction_id = %s""",
            (
                original,
                tx,
                f"resend {tx} refused as a duplicate of {original}: following {original}",
                ids,
                tx,
            ),
        )


def unproven(conn, ids: list[int], detail: str, *, at: datetime, batch_id: str) -> int:
    """Amazon refused the note's id as a duplicate without evidence that it holds this note (design rule
    11): the note is not accepted and not rejected. Its submission ends FAILED (an operator can Retry it),
    its lines wait at CREDIT_SUBMITTED, and an AMAZON_REJECTED exception (integration) says why."""
    with conn.transaction():
        done = conn.execute(
            """UPDATE ledger.amazon_submission SET status = 'FAILED', last_error = %s, resolved_at = %s,
                      claim_key = NULL, lease_until = NULL
                WHERE submission_id = ANY(%s) AND status = 'SUBMITTED'
               RETURNING return_id, line, sku""",
            (detail, at, ids),
        ).fetchall()
        # a line whose 202 was never recorded (lost response) is DISPOSITIONED: it was sent, so it waits
        # at CREDIT_SUBMITTED like the others
        transition(
            conn,
            [(rid, ln) for rid, ln, _ in done],
            lifecycle.on_credit_submitted,
            cause="AMAZON_DUPLICATE_UNPROVEN",
            at=at,
            batch_id=batch_id,
        )
        raise_exceptions(
            conn,
            [
                NewException(
                    ExceptionType.AMAZON_REJECTED,
                    line_subject(rid, ln),
                    detail,
                    return_id=rid,
                    line=ln,
                    sku=sku,
                )
                for rid, ln, sku in done
            ],
            at=at,
            batch_id=batch_id,
        )
    return len(done)
