"""Confirm: poll Amazon for the transactions of submitted actions until each is final.

Success closes the lines; Failure raises AMAZON_REJECTED. A Failure with ``DuplicateInvoiceNumber`` for a
note this ledger has sent before is Amazon saying it already holds the note: a duplicate refusal of a note
we may already have delivered is evidence that Amazon holds it, so the ledger follows the transaction
Amazon names (or records the evidence), never a REJECTED line.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime

from returnledger.amazon.answers import accept, follow, reject
from returnledger.models import ActionKind
from returnledger.store.db import connect

log = logging.getLogger(__name__)

DUPLICATE_CODE = "DuplicateInvoiceNumber"


def _duplicate_of(errors: list[dict]) -> tuple[bool, str | None]:
    """(is a duplicate-id refusal, the transaction Amazon says took the note in)."""
    for e in errors or []:
        if isinstance(e, dict) and e.get("code") == DUPLICATE_CODE:
            return True, (str(e.get("details") or "").strip() or None)
    return False, None


def _sent_before(conn, credit_note_id: str | None, tx: str) -> bool:
    """Did this ledger send the note in an attempt other than the one that got ``tx``?

    A duplicate refusal is evidence that Amazon holds the note only if an earlier send of ours may have
    been taken in; on the very first send it means the id belongs to somebody else's invoice.
    """
    if credit_note_id is None:
        return False
    return bool(
        conn.execute(
            """SELECT 1 FROM ledger.submission_attempt WHERE document_id = %s
                                   AND transaction_id IS DISTINCT FROM %s LIMIT 1""",
            (credit_note_id, tx),
        ).fetchone()
    )


def confirm(dsn: str, client, *, at: datetime, batch_id: str, rounds: int = 3, wait_s: float = 1.0) -> dict:
    """Poll Amazon for submitted transactions: ``rounds`` times, ``wait_s`` apart while some still process."""
    from returnledger.clients.amazon import AmazonRequestError

    stats = {
        "accepted": 0,
        "rejected": 0,
        "processing": 0,
        "inventory_accepted": 0,
        "inventory_failed": 0,
        "polls": 0,
        "duplicates_followed": 0,
    }
    with connect(dsn) as conn:
        for attempt in range(rounds):
            pending = conn.execute("""
                SELECT transaction_id, kind, array_agg(submission_id), min(document_id)
                  FROM ledger.amazon_submission
                WHERE status = 'SUBMITTED' AND transaction_id IS NOT NULL
                GROUP BY transaction_id, kind ORDER BY transaction_id""").fetchall()
            conn.commit()
            if not pending:
                break
            still, followed = 0, 0
            for tx, kind, ids, note_id in pending:
                stats["polls"] += 1
                try:
                    status = (
                        client.get_transaction(tx)
                        if kind == ActionKind.CREDIT_NOTE
                        else client.get_df_transaction(tx)
                    )
                except AmazonRequestError as e:
                    # Amazon refuses to report this transaction (e.g. 404: unknown or expired). Keep the rows
                    # SUBMITTED with the reason; the operating checks raise SYNC_STALLED if it persists.
                    conn.execute(
                        "UPDATE ledger.amazon_submission SET last_error = %s WHERE submission_id = ANY(%s)",
                        (f"{type(e).__name__}: {e}"[:2000], ids),
                    )
                    conn.commit()
                    stats["unknown"] = stats.get("unknown", 0) + 1
                    continue
                if status.status == "Success":
                    accept(conn, kind, ids, tx, note_id, at=at, batch_id=batch_id, evidence="SUCCESS")
                    stats["accepted" if kind == ActionKind.CREDIT_NOTE else "inventory_accepted"] += 1
                elif status.status == "Failure" and kind == ActionKind.CREDIT_NOTE:
                    dup, original = _duplicate_of(status.errors)
                    if dup and _sent_before(conn, note_id, tx):
                        if original and original != tx:
                            follow(conn, ids, tx, original, note_id)
                            followed += 1
                        else:  # Amazon holds it and names no other transaction: that is the evidence
                            accept(
                                conn, kind, ids, tx, note_id, at=at, batch_id=batch_id, evidence="DUPLICATE"
                            )
                            stats["accepted"] += 1
                        stats["duplicates_followed"] += 1
                        continue
                    rows = [
                        dict(zip(("submission_id", "return_id", "line", "sku"), r, strict=True))
                        for r in conn.execute(
                            "SELECT submission_id, return_id, line, sku"
                            " FROM ledger.amazon_submission WHERE submission_id = ANY(%s)",
                            (ids,),
                        )
                    ]
                    detail = json.dumps(status.errors, default=str)
                    if dup:
                        detail = (
                            "the credit-note id was already used at Amazon by an invoice this ledger never "
                            f"sent: {detail}"
                        )
                    reject(conn, rows, detail, at=at, batch_id=batch_id, expect="SUBMITTED")
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
            stats["processing"] = still
            if followed:
                continue  # poll the transactions Amazon named at once
            if still and attempt < rounds - 1:
                time.sleep(wait_s)
            else:
                break
    log.info("confirm %s: %s", batch_id, stats)
    return stats
