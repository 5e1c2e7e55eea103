"""Sending what the ledger owes Amazon: credit notes (submitInvoices) and stock levels (inventory updates).

Guarantees, each guarded by a test (tests/integration/test_money_path.py):
- **One id, one note** (returnledger.amazon.submissions).
- **Claimed before sent**, with **a send log** of every HTTP attempt (returnledger.amazon.claims).
- **Either duplicate rule.** A resend (lost response, 5xx, crash, task retry) reuses the id. Whether Amazon
  answers it as the same note or as a new transaction failing with ``DuplicateInvoiceNumber``, the outcome
  is the same (returnledger.amazon.confirm): never a REJECTED line for a note Amazon holds.
- **Bounded outages.** A circuit breaker ends a push step after N consecutive failed sends and leaves the
  rest PENDING for the next run.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from datetime import datetime

from returnledger.amazon.answers import reject, transition
from returnledger.amazon.claims import (
    Claim,
    begin_send,
    claim_credit_notes,
    claim_restocks,
    mark_submitted,
    release,
)
from returnledger.amazon.credit_note import build_credit_note
from returnledger.ledger import lifecycle
from returnledger.store.db import connect

log = logging.getLogger(__name__)

#: consecutive failed sends after which a push step stops and leaves the rest for the next run
BREAKER_FAILURES = int(os.environ.get("RETURNLEDGER_PUSH_BREAKER", "5"))


class PushError(RuntimeError):
    """Some sends failed; their rows stay PENDING (same ids) for the task's retry or the next run."""


def push_credits(dsn: str, client, *, party_id: str, at: datetime, batch_id: str) -> dict:
    """Send every pending credit note, one note per submitInvoices call.

    One note per call keeps Amazon's transaction status unambiguous per note (a Failure or
    a stuck Processing for one note never drags another with it).
    """
    from returnledger.clients.amazon import AmazonRequestError

    stats = {"credit_notes": 0, "lines": 0, "calls": 0, "failed": 0, "rejected": 0, "stopped_by_breaker": 0}
    errors: list[str] = []
    consecutive = 0
    with connect(dsn) as conn:
        claim = Claim(conn, batch_id)
        while consecutive < BREAKER_FAILURES:
            notes = claim_credit_notes(conn, claim)
            if not notes:
                break
            for note_id, rows in notes.items():
                ids = [r["submission_id"] for r in rows]
                if consecutive >= BREAKER_FAILURES:
                    release(conn, ids, claim, None)
                    stats["stopped_by_breaker"] += 1
                    continue
                body = build_credit_note(note_id, rows, party_id=party_id)
                stats["calls"] += 1
                sendlog = begin_send(
                    conn,
                    claim,
                    kind="CREDIT_NOTE",
                    credit_note_id=note_id,
                    ids=ids,
                    body=body,
                    batch_id=batch_id,
                    at=at,
                )
                try:
                    tx = client.submit_invoices([body], on_attempt=sendlog)
                except AmazonRequestError as e:  # Amazon refused the body itself: not transient
                    reject(
                        conn,
                        rows,
                        json.dumps(getattr(e, "errors", None) or str(e), default=str),
                        at=at,
                        batch_id=batch_id,
                        claim=claim,
                    )
                    stats["rejected"] += 1
                    consecutive = 0
                    continue
                except Exception as e:
                    release(conn, ids, claim, f"{type(e).__name__}: {e}"[:2000])
                    errors.append(note_id)
                    stats["failed"] += 1
                    consecutive += 1
                    continue
                consecutive = 0
                with conn.transaction():
                    done = mark_submitted(conn, ids, claim, tx, at)
                    conn.execute(
                        """UPDATE ledger.credit_note
                                       SET first_transaction_id = COALESCE(first_transaction_id, %s)
                                    WHERE credit_note_id = %s""",
                        (tx, note_id),
                    )
                    transition(
                        conn,
                        [tuple(k) for k in done],
                        lifecycle.on_credit_submitted,
                        cause="CREDIT_SUBMITTED",
                        at=at,
                        batch_id=batch_id,
                    )
                stats["credit_notes"] += 1
                stats["lines"] += len(done)
        conn.execute("SELECT pg_advisory_unlock_all()")
    log.info("push_credits %s: %s", batch_id, stats)
    if errors and not stats["stopped_by_breaker"]:
        raise PushError(
            f"{len(errors)} credit notes could not be sent (kept pending, same ids on retry): {errors[:5]}"
        )
    if stats["stopped_by_breaker"]:
        log.error(
            "push_credits %s: Amazon failed %d sends in a row; %d notes left PENDING for the next run",
            batch_id,
            BREAKER_FAILURES,
            stats["stopped_by_breaker"],
        )
    return stats


def push_inventory(
    dsn: str,
    client,
    *,
    warehouse_id: str,
    party_id: str,
    at: datetime,
    batch_id: str,
    items_per_call: int = 100,
) -> dict:
    """Send the new absolute available quantity of every SKU with pending restocks, in batches."""
    stats = {"skus": 0, "lines": 0, "calls": 0, "failed": 0, "stopped_by_breaker": 0}
    errors = []
    with connect(dsn) as conn:
        claim = Claim(conn, batch_id)
        by_sku: dict[str, list[int]] = defaultdict(list)
        for sid, sku in claim_restocks(conn, claim):
            by_sku[sku].append(sid)
        avail: dict[str, int] = dict(
            conn.execute("SELECT sku, available FROM ledger.sku WHERE sku = ANY(%s)", (list(by_sku),))
        )
        conn.commit()
        skus = sorted(by_sku)
        consecutive = 0
        for i in range(0, len(skus), items_per_call):
            chunk = skus[i : i + items_per_call]
            ids = sorted(sid for s in chunk for sid in by_sku[s])
            if consecutive >= BREAKER_FAILURES:
                release(conn, ids, claim, None)
                stats["stopped_by_breaker"] += len(chunk)
                continue
            items = [
                {
                    "vendorProductIdentifier": s,
                    "availableQuantity": {"amount": int(avail.get(s) or 0), "unitOfMeasure": "Each"},
                    "isObsolete": False,
                }
                for s in chunk
            ]
            stats["calls"] += 1
            sendlog = begin_send(
                conn,
                claim,
                kind="INVENTORY",
                credit_note_id=None,
                ids=ids,
                body=items,
                batch_id=batch_id,
                at=at,
            )
            try:
                tx = client.submit_inventory_update(
                    warehouse_id, selling_party_id=party_id, items=items, on_attempt=sendlog
                )
            except Exception as e:
                release(conn, ids, claim, f"{type(e).__name__}: {e}"[:2000])
                errors.append(i)
                stats["failed"] += 1
                consecutive += 1
                continue
            consecutive = 0
            mark_submitted(conn, ids, claim, tx, at)
            conn.commit()
            stats["skus"] += len(chunk)
            stats["lines"] += len(ids)
        conn.execute("SELECT pg_advisory_unlock_all()")
    log.info("push_inventory %s: %s", batch_id, stats)
    if errors and not stats["stopped_by_breaker"]:
        raise PushError(f"{len(errors)} inventory batches could not be sent; they stay pending")
    return stats
