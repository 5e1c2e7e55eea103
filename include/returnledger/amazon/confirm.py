"""Confirm: poll Amazon for the transactions of submitted actions until each is final.

Success closes the lines; Failure raises AMAZON_REJECTED. A line is accepted only on Amazon's evidence
(design rule 11): a Success of the note's own transaction, or a ``DuplicateInvoiceNumber`` refusal whose
``details`` name a transaction of that note which then does not end in Failure. A transaction is the
note's when the send log has it under the note's id, or, for a transaction the ledger never heard of,
when the send log shows an attempt of the note whose outcome is unknown (a 5xx, no answer, or a SENDING
row without an outcome: the response that would have named it was lost). A refusal that names nothing,
or names a transaction that is not the note's or that failed, proves nothing: the note is not accepted,
its lines wait at CREDIT_SUBMITTED and AMAZON_REJECTED says that Amazon refused the id without naming
what it holds (returnledger.amazon.answers.unproven). A duplicate refusal never makes a line REJECTED.

An Amazon outage ends this step the way it ends the push steps (returnledger.amazon.push.AmazonOutage).
"""

from __future__ import annotations

import json
import logging
import time

from returnledger.amazon.answers import accept, follow, reject, unproven
from returnledger.models import ActionKind
from returnledger.moment import RunMoment
from returnledger.store.db import connect

log = logging.getLogger(__name__)

DUPLICATE_CODE = "DuplicateInvoiceNumber"


def _duplicate_of(errors: list[dict]) -> tuple[bool, str | None]:
    """(is a duplicate-id refusal, the transaction Amazon says took the note in)."""
    for e in errors or []:
        if isinstance(e, dict) and e.get("code") == DUPLICATE_CODE:
            return True, (str(e.get("details") or "").strip() or None)
    return False, None


# what the send log knows of a transaction Amazon named in a duplicate refusal of a note
_NAMED_SQL = """
SELECT bool_or(a.document_id = %(note)s AND a.transaction_id = %(named)s) AS ours,
       bool_or(a.document_id IS DISTINCT FROM %(note)s AND a.transaction_id = %(named)s) AS another_notes,
       string_agg(DISTINCT a.document_id, ', ') FILTER (WHERE a.document_id IS DISTINCT FROM %(note)s
                                                        AND a.transaction_id = %(named)s) AS other_ids,
       bool_or(a.document_id = %(note)s AND (
                   a.outcome = 'NO_ANSWER' OR a.http_status >= 500
                   OR (a.outcome = 'SENDING' AND NOT EXISTS (
                           SELECT 1 FROM ledger.submission_attempt r
                            WHERE r.send_id = a.send_id AND r.attempt = a.attempt AND r.outcome <> 'SENDING'))
               )) AS unknown_outcome
  FROM ledger.submission_attempt a
 WHERE a.document_id = %(note)s OR a.transaction_id = %(named)s
"""


def judge_refusal(conn, note_id: str | None, tx: str, named: str | None) -> tuple[bool, str]:
    """Is a duplicate refusal (transaction ``tx``, ``details`` = ``named``) evidence worth following?

    Returns (follow ``named``, why not: a sentence for the exception when it is not).
    """
    if not named:
        return False, "without naming the transaction that holds it (empty details)"
    if named == tx or note_id is None:
        return False, f"naming transaction {named}, the refused transaction itself"
    ours, another, other_ids, unknown = conn.execute(_NAMED_SQL, {"note": note_id, "named": named}).fetchone()
    if another and not ours:
        return (
            False,
            f"naming transaction {named}, which carried another credit note of this ledger ({other_ids})",
        )
    if ours:
        return True, ""
    if unknown:  # an attempt whose answer we never read may have been taken in as ``named``
        return True, ""
    return False, (
        f"naming transaction {named}, which is none of this ledger's sends of the note (every earlier "
        "attempt has a known outcome that took nothing in)"
    )


def _unproven_detail(note_id: str | None, why: str, errors) -> str:
    return (
        f"Amazon refused credit note {note_id} as a duplicate (DuplicateInvoiceNumber) {why}. That is no "
        "evidence that Amazon credited this note: it is not accepted and its line waits (CREDIT_SUBMITTED, "
        f"not closed). Look invoice {note_id} up in Vendor Central: if Amazon holds this credit, resolve "
        "with that finding; if another invoice holds the id, correct it there and Retry. Amazon's answer: "
        f"{json.dumps(errors, default=str)}"
    )


def confirm(dsn: str, client, *, run: RunMoment, rounds: int = 3, wait_s: float = 1.0) -> dict:
    """Poll Amazon for submitted transactions: ``rounds`` times, ``wait_s`` apart while some still process."""
    from returnledger.amazon.push import BREAKER_FAILURES, AmazonOutage
    from returnledger.clients.amazon import AmazonRequestError, AmazonUnavailableError

    batch_id, at = run.batch_id, run.as_of
    stats = {
        "accepted": 0,
        "rejected": 0,
        "processing": 0,
        "inventory_accepted": 0,
        "inventory_failed": 0,
        "polls": 0,
        "duplicates_followed": 0,
        "unproven": 0,
        "unavailable": 0,
    }
    consecutive, last_unavailable, stopped = 0, None, False
    with connect(dsn) as conn:
        for attempt in range(rounds):
            pending = conn.execute("""
                SELECT transaction_id, kind, array_agg(submission_id), min(document_id),
                       min(refused_transaction_id)
                  FROM ledger.amazon_submission
                WHERE status = 'SUBMITTED' AND transaction_id IS NOT NULL
                GROUP BY transaction_id, kind ORDER BY transaction_id""").fetchall()
            conn.commit()
            if not pending:
                break
            still, followed = 0, 0
            for tx, kind, ids, note_id, refused in pending:
                if consecutive >= BREAKER_FAILURES:
                    stopped = True
                    break
                stats["polls"] += 1
                try:
                    status = (
                        client.get_transaction(tx)
                        if kind == ActionKind.CREDIT_NOTE
                        else client.get_df_transaction(tx)
                    )
                except (
                    AmazonUnavailableError
                ) as e:  # retries ran out: the rows stay SUBMITTED for the next try
                    consecutive += 1
                    stats["unavailable"] += 1
                    last_unavailable = e
                    continue
                except AmazonRequestError as e:
                    # Amazon refuses to report this transaction (e.g. 404: unknown or expired). Keep the rows
                    # SUBMITTED with the reason; the operating checks raise SYNC_STALLED if it persists.
                    conn.execute(
                        "UPDATE ledger.amazon_submission SET last_error = %s WHERE submission_id = ANY(%s)",
                        (f"{type(e).__name__}: {e}"[:2000], ids),
                    )
                    conn.commit()
                    stats["unknown"] = stats.get("unknown", 0) + 1
                    consecutive = 0
                    continue
                consecutive = 0
                if status.status == "Success":
                    accept(conn, kind, ids, tx, note_id, at=at, batch_id=batch_id, evidence="SUCCESS")
                    stats["accepted" if kind == ActionKind.CREDIT_NOTE else "inventory_accepted"] += 1
                elif status.status == "Failure" and kind == ActionKind.CREDIT_NOTE:
                    dup, named = _duplicate_of(status.errors)
                    if dup:
                        worth, why = judge_refusal(conn, note_id, tx, named)
                        if worth and named is not None:
                            follow(conn, ids, tx, named, note_id)
                            followed += 1
                            stats["duplicates_followed"] += 1
                        else:
                            unproven(
                                conn,
                                ids,
                                _unproven_detail(note_id, why, status.errors),
                                at=at,
                                batch_id=batch_id,
                            )
                            stats["unproven"] += 1
                        conn.commit()
                        continue
                    if (
                        refused
                    ):  # the transaction a duplicate refusal named failed: the refusal proved nothing
                        why = f"naming transaction {tx}, which ended in Failure"
                        unproven(
                            conn, ids, _unproven_detail(note_id, why, status.errors), at=at, batch_id=batch_id
                        )
                        stats["unproven"] += 1
                        conn.commit()
                        continue
                    rows = [
                        dict(zip(("submission_id", "return_id", "line", "sku"), r, strict=True))
                        for r in conn.execute(
                            "SELECT submission_id, return_id, line, sku"
                            " FROM ledger.amazon_submission WHERE submission_id = ANY(%s)",
                            (ids,),
                        )
                    ]
                    reject(
                        conn,
                        rows,
                        json.dumps(status.errors, default=str),
                        at=at,
                        batch_id=batch_id,
                        expect="SUBMITTED",
                    )
                    stats["rejected"] += 1
                elif status.status == "Failure":
                    with conn.transaction():
                        conn.execute(
                            """UPDATE ledger.amazon_submission SET status = 'FAILED', last_error = %s,
                                               resolved_at = %s
                                         WHERE submission_id = ANY(%s) AND status = 'SUBMITTED'""",
                            (json.dumps(status.errors, default=str), at, ids),
                        )
                    stats["inventory_failed"] += 1
                else:
                    still += 1
                conn.commit()
            stats["processing"] = still
            if stopped:
                break
            if followed:
                continue  # poll the transactions Amazon named at once
            if still and attempt < rounds - 1:
                time.sleep(wait_s)
            else:
                break
    log.info("confirm %s: %s", batch_id, stats)
    if stats["unavailable"]:
        with connect(dsn) as conn:
            left = conn.execute(
                "SELECT count(DISTINCT transaction_id) FROM ledger.amazon_submission"
                " WHERE status = 'SUBMITTED'"
            ).fetchone() or (0,)
        raise AmazonOutage(
            "confirm",
            failed=stats["unavailable"],
            stopped=stopped,
            left=f"{left[0]} transaction(s) left SUBMITTED, to be polled again",
            last=last_unavailable,
        )
    return stats
