"""Sending what the ledger owes Amazon: credit notes (submitInvoices) and stock levels (inventory updates).

Guarantees, each guarded by a test (tests/integration/test_money_path.py,
tests/sandbox/test_money_evidence.py):
- **One id, one note** (returnledger.ledger.submissions).
- **Claimed before sent**: a claim is a lease in the rows, renewed before every HTTP attempt, so a lost
  database connection takes nothing from a living pusher; **a send log** writes every HTTP attempt down
  before it leaves and after it ends (returnledger.amazon.claims); a credit note's 202 is written with its
  rows' SUBMITTED, several notes per transaction (returnledger.amazon.recording: a crash in between
  leaves attempts of unknown outcome, resent under the same ids and judged by evidence).
- **Either duplicate rule.** A resend (lost response, 5xx, crash, task retry) reuses the id. Whether Amazon
  answers it as the same note or as a new transaction failing with ``DuplicateInvoiceNumber``, the outcome
  is the same (returnledger.amazon.confirm): accepted only on Amazon's evidence, never REJECTED for a
  note Amazon may hold.
- **One outage signal.** When Amazon stays unavailable (retries ran out), the step ends the way confirm
  does: ``AmazonOutage`` (a failed task, retried by Airflow), after a circuit breaker of N consecutive
  failed sends left the rest PENDING under the same ids.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections import defaultdict

import psycopg

from returnledger.amazon.answers import reject
from returnledger.amazon.claims import (
    Claim,
    ClaimLost,
    Ledger,
    LedgerUnreachable,
    begin_send,
    claim_credit_notes,
    claim_restocks,
    mark_submitted,
    release,
    release_all,
)
from returnledger.amazon.credit_note import build_credit_note
from returnledger.amazon.recording import Recorder, Sent
from returnledger.moment import RunMoment

log = logging.getLogger(__name__)

#: consecutive failed sends (or polls) after which a push (or confirm) step stops and leaves the rest
BREAKER_FAILURES = int(os.environ.get("RETURNLEDGER_PUSH_BREAKER", "5"))


class PushError(RuntimeError):
    """Some sends failed; their rows stay PENDING (same ids) for the task's retry or the next run."""


class AmazonOutage(PushError):
    """AmazonUnavailable: Amazon stayed unavailable (throttling, 5xx, no answer: retries ran out) during a
    push or confirm step. The step fails the same way in each, after leaving every note where the next
    try continues from: unsent notes PENDING under the same ids, sent ones SUBMITTED for confirm."""

    def __init__(self, step: str, *, failed: int, stopped: bool, left: str, last: BaseException | None):
        self.step, self.failed, self.stopped = step, failed, stopped
        how = f"stopped after {BREAKER_FAILURES} failed calls in a row" if stopped else "went on"
        super().__init__(
            f"AmazonUnavailable: {step}: {failed} call(s) to Amazon ran out of retries; the step {how}. "
            f"{left}. Airflow retries the task; the next run continues from there. "
            f"Last error: {type(last).__name__ if last else ''}: {last}"
        )


def _unavailable(e: BaseException) -> bool:
    from returnledger.clients.amazon import AmazonUnavailableError

    return isinstance(e, AmazonUnavailableError)


def push_credits(dsn: str, client, *, party_id: str, run: RunMoment, check_beside: bool = True) -> dict:
    """Send every pending credit note, one note per submitInvoices call (as of the run's end).

    One note per call keeps Amazon's transaction status unambiguous per note (a Failure or
    a stuck Processing for one note never drags another with it). With ``check_beside``, the status
    checks start as soon as the first transactions exist, each operation at its own rate
    (returnledger.amazon.confirm.checks_beside); ``confirm`` checks what is left.
    """
    if not check_beside:
        return _push_credits(dsn, client, party_id=party_id, run=run)
    from returnledger.amazon.confirm import checks_beside

    with checks_beside(dsn, client, run=run) as checked:
        stats = _push_credits(dsn, client, party_id=party_id, run=run)
    return {**stats, "status_checks": checked}


def _push_credits(dsn: str, client, *, party_id: str, run: RunMoment) -> dict:
    from returnledger.clients.amazon import AmazonAuthError, AmazonRequestError

    batch_id, at = run.batch_id, run.as_of

    stats = {
        "credit_notes": 0,
        "lines": 0,
        "calls": 0,
        "failed": 0,
        "rejected": 0,
        "stopped_by_breaker": 0,
        "claims_lost": 0,
    }
    errors: list[str] = []
    unavailable, last_unavailable = 0, None
    consecutive = 0
    ledger = Ledger(dsn)
    claim = Claim(batch_id)
    recorder = Recorder(ledger, claim, at=at, batch_id=batch_id)

    def recorded(done: list) -> None:
        for sent, held in done:
            if held < len(sent.ids):  # our lease ran out while the note waited for the ledger: the 202 is
                log.warning(  # in the send log, and confirm judges the other pusher's resend by it
                    "push_credits %s: %s sent (transaction %s) after its claim was taken over",
                    batch_id,
                    sent.note_id,
                    sent.tx,
                )
            stats["credit_notes"] += 1
            stats["lines"] += held

    try:
        while consecutive < BREAKER_FAILURES:
            recorded(recorder.flush())  # our own SENDING rows are claimable by us: record them first
            notes = claim_credit_notes(ledger, claim)
            if not notes:
                break
            for note_id, rows in notes.items():
                ids = [r["submission_id"] for r in rows]
                if consecutive >= BREAKER_FAILURES:
                    release(ledger, ids, claim, None)
                    stats["stopped_by_breaker"] += 1
                    continue
                if recorder.due():
                    recorded(recorder.flush())
                body = build_credit_note(note_id, rows, party_id=party_id)
                stats["calls"] += 1
                sendlog = begin_send(
                    ledger,
                    claim,
                    kind="CREDIT_NOTE",
                    credit_note_id=note_id,
                    ids=ids,
                    body=body,
                    batch_id=batch_id,
                    at=at,
                    defer_accepted=True,
                )
                try:
                    tx = client.submit_invoices([body], on_attempt=sendlog, before_attempt=sendlog.before)
                except ClaimLost as e:  # our lease ran out and another pusher holds the note: it sends it
                    log.warning("push_credits %s: %s: %s", batch_id, note_id, e)
                    stats["claims_lost"] += 1
                    continue
                except AmazonRequestError as e:  # Amazon refused the body itself: not transient
                    detail = json.dumps(getattr(e, "errors", None) or str(e), default=str)
                    ledger.run(
                        functools.partial(
                            reject, rows=rows, error=detail, at=at, batch_id=batch_id, claim=claim
                        )
                    )
                    stats["rejected"] += 1
                    consecutive = 0
                    continue
                except AmazonAuthError as e:  # every next call would be refused too: stop, all stay PENDING
                    recorded(recorder.flush())  # what Amazon took in before is SUBMITTED, not released
                    release(ledger, ids, claim, f"{type(e).__name__}: {e}"[:2000])
                    release_all(ledger, claim)
                    raise
                except (LedgerUnreachable, psycopg.Error):
                    raise  # the ledger, not Amazon: this pusher stops; its leases run out for the next try
                except Exception as e:
                    release(ledger, ids, claim, f"{type(e).__name__}: {e}"[:2000])
                    errors.append(note_id)
                    stats["failed"] += 1
                    consecutive += 1
                    if _unavailable(e):
                        unavailable, last_unavailable = unavailable + 1, e
                    continue
                consecutive = 0
                recorded(recorder.add(Sent(note_id, ids, tx, sendlog)))
        recorded(recorder.flush())
        release_all(ledger, claim)
    finally:
        ledger.close()
    stats["record_transactions"] = recorder.transactions
    log.info("push_credits %s: %s", batch_id, stats)
    if unavailable:
        left = (
            f"{stats['failed'] + stats['stopped_by_breaker']} credit note(s) left PENDING (same ids), "
            f"{stats['credit_notes']} sent"
        )
        raise AmazonOutage(
            "push_credits",
            failed=unavailable,
            stopped=bool(stats["stopped_by_breaker"]),
            left=left,
            last=last_unavailable,
        )
    if errors:
        raise PushError(
            f"{len(errors)} credit notes could not be sent (kept pending, same ids on retry): {errors[:5]}"
        )
    return stats


def push_inventory(
    dsn: str,
    client,
    *,
    warehouse_id: str,
    party_id: str,
    run: RunMoment,
    items_per_call: int = 100,
) -> dict:
    """Send the new absolute available quantity of every SKU with pending restocks, in batches."""
    from returnledger.clients.amazon import AmazonAuthError

    batch_id, at = run.batch_id, run.as_of

    stats = {"skus": 0, "lines": 0, "calls": 0, "failed": 0, "stopped_by_breaker": 0, "claims_lost": 0}
    errors = []
    unavailable, last_unavailable = 0, None
    ledger = Ledger(dsn)
    claim = Claim(batch_id)
    try:
        by_sku: dict[str, list[int]] = defaultdict(list)
        for sid, sku in claim_restocks(ledger, claim):
            by_sku[sku].append(sid)
        avail: dict[str, int] = dict(
            ledger.run(
                lambda conn: conn.execute(
                    "SELECT sku, available FROM ledger.sku WHERE sku = ANY(%s)", (list(by_sku),)
                ).fetchall()
            )
        )
        skus = sorted(by_sku)
        consecutive = 0
        for i in range(0, len(skus), items_per_call):
            chunk = skus[i : i + items_per_call]
            ids = sorted(sid for s in chunk for sid in by_sku[s])
            if consecutive >= BREAKER_FAILURES:
                release(ledger, ids, claim, None)
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
                ledger,
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
                    warehouse_id,
                    selling_party_id=party_id,
                    items=items,
                    on_attempt=sendlog,
                    before_attempt=sendlog.before,
                )
            except ClaimLost as e:
                log.warning("push_inventory %s: %s", batch_id, e)
                stats["claims_lost"] += 1
                continue
            except AmazonAuthError as e:  # every next call would be refused too: stop, all stay PENDING
                release(ledger, ids, claim, f"{type(e).__name__}: {e}"[:2000])
                release_all(ledger, claim)
                raise
            except (LedgerUnreachable, psycopg.Error):
                raise
            except Exception as e:
                release(ledger, ids, claim, f"{type(e).__name__}: {e}"[:2000])
                errors.append(i)
                stats["failed"] += 1
                consecutive += 1
                if _unavailable(e):
                    unavailable, last_unavailable = unavailable + 1, e
                continue
            consecutive = 0
            ledger.run(functools.partial(mark_submitted, ids=ids, claim=claim, tx=tx, at=at))
            stats["skus"] += len(chunk)
            stats["lines"] += len(ids)
        release_all(ledger, claim)
    finally:
        ledger.close()
    log.info("push_inventory %s: %s", batch_id, stats)
    if unavailable:
        left = (
            f"{stats['failed']} inventory batch(es) and {stats['stopped_by_breaker']} SKU(s) left PENDING, "
            f"{stats['skus']} SKU(s) sent"
        )
        raise AmazonOutage(
            "push_inventory",
            failed=unavailable,
            stopped=bool(stats["stopped_by_breaker"]),
            left=left,
            last=last_unavailable,
        )
    if errors:
        raise PushError(f"{len(errors)} inventory batches could not be sent; they stay pending")
    return stats
