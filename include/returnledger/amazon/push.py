"""The money path: outbox rows -> credit notes and stock updates at Amazon -> confirmed in the ledger.

Guarantees, each guarded by a test (tests/integration/test_money_path.py):
- **One id, one note.** A credit note is a row of ``ledger.credit_note`` whose id,
  ``CN-<return>-<first line>``, is unique by construction (each line is in exactly one
  note) and by the table's key; notes never span returns, so several returns booked
  under one Amazon returns notice each get their own.
- **Claimed before sent.** A pusher claims notes (``FOR UPDATE SKIP LOCKED`` on the
  note row, then ``SENDING`` with a claim key) and every later status change states
  the status and claim it expects. The claim key is a PostgreSQL advisory lock that
  the pusher's session holds while it lives: a claim left by a dead process (its lock
  is free) is taken over on the next run; a living pusher's claim is never stolen.
- **Either duplicate rule.** A resend (lost response, 5xx, crash, task retry) reuses
  the id. Whether Amazon answers it as the same note or as a new transaction failing
  with ``DuplicateInvoiceNumber``, the outcome is the same: a duplicate refusal of a
  note we may already have delivered is evidence that Amazon holds it, so the ledger
  follows the transaction Amazon names (or records the evidence), never a REJECTED line.
- **A send log.** Every HTTP attempt is an append-only ``ledger.submission_attempt`` row.
- **Bounded outages.** A circuit breaker ends a push step after N consecutive
  failed sends and leaves the rest PENDING for the next run.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import socket
from collections import defaultdict
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from returnledger.exception_queue.queue import NewException, line_subject, raise_exceptions
from returnledger.ledger import lifecycle
from returnledger.models import ActionKind, ExceptionType, LineState
from returnledger.store.db import connect, copy_rows

log = logging.getLogger(__name__)

SYSTEM_ACTOR = "returns_sync"
DUPLICATE_CODE = "DuplicateInvoiceNumber"
#: consecutive failed sends after which a push step stops and leaves the rest for the next run
BREAKER_FAILURES = int(os.environ.get("RETURNLEDGER_PUSH_BREAKER", "5"))
#: notes claimed at a time: a pusher never holds more than this many unsent notes
CLAIM_CHUNK = 200


class PushError(RuntimeError):
    """Some sends failed; their rows stay PENDING (same ids) for the task's retry or the next run."""


def credit_note_id(return_id: str, first_line: int) -> str:
    """The invoice id Amazon sees: unique because every line belongs to exactly one note of its return."""
    return f"CN-{return_id}-{first_line}"


# --------------------------------------------------------------------------- outbox (called by apply)

_OUTBOX_COLUMNS = (("idempotency_key", "text"), ("kind", "text"), ("return_id", "text"), ("line", "int4"),
                   ("sku", "text"), ("asin", "text"), ("quantity", "int4"), ("unit_amount", "numeric"),
                   ("currency", "text"), ("document_id", "text"), ("created_at", "timestamptz"),
                   ("created_batch", "text"))
_NOTE_COLUMNS = (("credit_note_id", "text"), ("return_id", "text"), ("returns_notice", "text"),
                 ("created_at", "timestamptz"), ("created_batch", "text"))


def write_outbox(conn, lines, info, actions, policy, *, batch_id, at, currency) -> dict:
    """Outbox rows with deterministic keys; the credit notes they form; restocks raise the stock.

    ``actions`` are (return, line, kind) from the lifecycle; credits released by a resolved
    over-receipt (the warehouse chose the quantity) join them here, so every credit is built in one place.
    """
    credit_qty = dict(_released_over_receipts(conn, lines, info))
    actions = sorted(set(actions) | {(rid, ln, ActionKind.CREDIT_NOTE) for rid, ln in credit_qty})
    if not actions:
        return {"credit_actions": 0, "inventory_actions": 0}
    keys = [f"{'credit' if k == ActionKind.CREDIT_NOTE else 'inventory'}:{rid}:{ln}" for rid, ln, k in actions]
    known = {r[0] for r in conn.execute(
        "SELECT idempotency_key FROM ledger.amazon_submission WHERE idempotency_key = ANY(%b::text[])", (keys,))}
    fresh = [(key, a) for key, a in zip(keys, actions) if key not in known]
    # one note per return and batch, named after its first line: computed over the NEW rows only, so a
    # note id can never be one a line of an earlier batch already used
    first_line: dict[str, int] = {}
    for _, (rid, ln, kind) in fresh:
        if kind == ActionKind.CREDIT_NOTE:
            first_line[rid] = min(first_line.get(rid, ln), ln)
    rows, notes = [], {}
    for key, (rid, ln, kind) in fresh:
        sku, asin, unit_cost, notice = info[(rid, ln)]
        if kind == ActionKind.CREDIT_NOTE:
            view = lines.get((rid, ln))
            qty = credit_qty.get((rid, ln), view.quantity_received if view else None)
            disposition = view.disposition if view else None
            fraction = policy.credit_fraction(disposition)
            if not qty or fraction is None:
                continue
            unit = lifecycle.credit_unit_amount(Decimal(unit_cost), Decimal(fraction))
            doc = credit_note_id(rid, first_line[rid])
            notes[doc] = (doc, rid, notice)
            rows.append((key, str(kind), rid, ln, sku, asin, qty, unit, currency, doc))
        else:
            qty = lines[(rid, ln)].quantity_received
            rows.append((key, str(kind), rid, ln, sku, asin, qty, None, None, None))
    # the note rows first (their key refuses a reused id loudly), then the lines that form them
    copy_rows(conn, "ledger.credit_note", _NOTE_COLUMNS, ((*n, at, batch_id) for n in notes.values()))
    copy_rows(conn, "ledger.amazon_submission", _OUTBOX_COLUMNS, ((*r, at, batch_id) for r in rows))
    restock = defaultdict(int)
    for r in rows:
        if r[1] == ActionKind.INVENTORY:
            restock[r[4]] += r[6]
    if restock:
        conn.execute("""UPDATE ledger.sku s SET available = s.available + x.q, updated_at = %s, updated_by = %s
                        FROM unnest(%b::text[], %b::int[]) AS x(sku, q) WHERE s.sku = x.sku""",
                     (at, SYSTEM_ACTOR, list(restock), list(restock.values())))
    return {"credit_actions": sum(1 for r in rows if r[1] == ActionKind.CREDIT_NOTE),
            "inventory_actions": sum(1 for r in rows if r[1] == ActionKind.INVENTORY),
            "over_receipts_released": len(credit_qty)}


def _released_over_receipts(conn, lines, info) -> list[tuple[tuple[str, int], int]]:
    """Over-received lines whose QUANTITY_MISMATCH the warehouse resolved with a quantity to credit."""
    rows = conn.execute("""
        SELECT l.return_id, l.line, l.credit_quantity, l.state, l.quantity_announced, l.quantity_received,
               l.grade, l.disposition, l.sku, s.asin, s.unit_cost, o.returns_notice
          FROM ledger.return_line l JOIN ledger.return_order o USING (return_id)
          LEFT JOIN ledger.sku s ON s.sku = l.sku
         WHERE l.credit_quantity > 0 AND l.state = 'DISPOSITIONED'
           AND NOT EXISTS (SELECT 1 FROM ledger.amazon_submission a
                            WHERE a.kind = 'CREDIT_NOTE' AND a.return_id = l.return_id AND a.line = l.line)""").fetchall()
    out = []
    for rid, ln, qty, state, announced, received, grade, disposition, sku, asin, cost, notice in rows:
        lines.setdefault((rid, ln), lifecycle.LineView(state=LineState(state), quantity_announced=announced,
                                                       quantity_received=received, grade=grade,
                                                       disposition=disposition))
        info.setdefault((rid, ln), (sku, asin, cost, notice))
        out.append(((rid, ln), qty))
    return out


# --------------------------------------------------------------------------- credit notes

def _money(v: Decimal) -> str:
    return str(Decimal(v).quantize(Decimal("0.01")))


def _iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_credit_note(doc_id: str, rows: list[dict], *, party_id: str) -> dict:
    """The submitInvoices CreditNote for one note (fields of scenarios/README.md).

    Built only from stored outbox rows, so a resubmission is byte-for-byte the same credit note.
    """
    first = rows[0]
    currency = first["currency"]
    total = sum((Decimal(r["unit_amount"]) * r["quantity"] for r in rows), Decimal("0"))
    details = {"returnsReferenceNumber": first["returns_notice"],
               "goodsReturnDate": _iso(max(r["received_at"] for r in rows))}
    if first.get("rma_id"):
        details["rmaId"] = first["rma_id"]
    if first.get("vret"):
        details["consignorsReferenceNumber"] = first["vret"]
    return {
        "invoiceType": "CreditNote", "id": doc_id, "date": _iso(first["created_at"]),
        "remitToParty": {"partyId": party_id},
        "invoiceTotal": {"currencyCode": currency, "amount": _money(total)},
        "creditNoteDetails": details,
        "items": [{"itemSequenceNumber": i, "amazonProductIdentifier": r["asin"],
                   "vendorProductIdentifier": r["sku"],
                   "invoicedQuantity": {"amount": r["quantity"], "unitOfMeasure": "Eaches"},
                   "netCost": {"currencyCode": currency, "amount": _money(r["unit_amount"])},
                   # Amazon's model carries creditNoteDetails on items; scenarios/README reads the invoice's
                   "creditNoteDetails": details}
                  for i, r in enumerate(rows, start=1)],
    }


def _sha256(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


# --------------------------------------------------------------------------- claims

class _Claim:
    """This pusher's identity: an advisory lock its session holds while it lives, and a readable name."""

    def __init__(self, conn, batch_id: str):
        self.key = random.getrandbits(62) + 1
        self.name = f"{socket.gethostname()}:{os.getpid()}:{batch_id}"
        conn.execute("SELECT pg_advisory_lock(%s)", (self.key,))
        conn.commit()


# the claimable rows of a kind: PENDING, or SENDING under a claim whose owner's session is gone
_CLAIMABLE = """(s.status = 'PENDING' OR (s.status = 'SENDING' AND s.claim_key IS DISTINCT FROM %(me)s
                 AND pg_try_advisory_lock(s.claim_key) AND pg_advisory_unlock(s.claim_key)))"""


def _claim_notes(conn, claim: _Claim) -> dict[str, list[dict]]:
    """Claim up to CLAIM_CHUNK credit notes; returns their rows by note id (empty: nothing left)."""
    with conn.transaction():
        docs = [r[0] for r in conn.execute(f"""
            SELECT n.credit_note_id FROM ledger.credit_note n
             WHERE EXISTS (SELECT 1 FROM ledger.amazon_submission s
                            WHERE s.document_id = n.credit_note_id AND s.kind = 'CREDIT_NOTE' AND {_CLAIMABLE})
             ORDER BY n.credit_note_id LIMIT %(n)s FOR UPDATE OF n SKIP LOCKED""",
            {"me": claim.key, "n": CLAIM_CHUNK})]
        if not docs:
            return {}
        cur = conn.execute(f"""
            UPDATE ledger.amazon_submission s SET status = 'SENDING', claim_key = %(me)s, claimed_by = %(name)s
              FROM ledger.return_order o, ledger.return_line l
             WHERE s.document_id = ANY(%(docs)s) AND s.kind = 'CREDIT_NOTE' AND {_CLAIMABLE}
               AND o.return_id = s.return_id AND l.return_id = s.return_id AND l.line = s.line
            RETURNING s.submission_id, s.document_id, s.return_id, s.line, s.sku, s.asin, s.quantity,
                      s.unit_amount, s.currency, s.created_at, s.attempts, o.returns_notice, o.rma_id, o.vret,
                      l.received_at""", {"me": claim.key, "name": claim.name, "docs": docs})
        names = [d.name for d in cur.description]
        notes: dict[str, list[dict]] = defaultdict(list)
        for r in cur.fetchall():
            row = dict(zip(names, r))
            notes[row["document_id"]].append(row)
    for rows in notes.values():
        rows.sort(key=lambda r: r["line"])
    return dict(sorted(notes.items()))


def _release(conn, ids: list[int], claim: _Claim, error: str | None) -> None:
    """Give rows back (PENDING) after a failed send; only rows this pusher still holds."""
    conn.execute("""UPDATE ledger.amazon_submission SET status = 'PENDING', claim_key = NULL, claimed_by = NULL,
                           last_error = COALESCE(%s, last_error)
                     WHERE submission_id = ANY(%s) AND status = 'SENDING' AND claim_key = %s""",
                 (error, ids, claim.key))
    conn.commit()


class _SendLog:
    """Appends one ledger.submission_attempt row per HTTP attempt, committed at once."""

    def __init__(self, conn, *, kind: str, document_id: str | None, ids: list[int], body: Any, claim: _Claim,
                 batch_id: str, at: datetime):
        self.conn, self.kind, self.doc, self.ids = conn, kind, document_id, ids
        self.sha, self.claim, self.batch_id, self.at = _sha256(body), claim, batch_id, at

    def __call__(self, attempt: int, status: int | None, tx: str | None, errors: Any) -> None:
        outcome = ("ACCEPTED_202" if status in (200, 202) and tx else "NO_ANSWER" if status is None
                   else "RETRY" if status == 429 or status >= 500 else "REFUSED")
        self.conn.execute("""
            INSERT INTO ledger.submission_attempt (kind, document_id, submission_ids, attempt, request_sha256,
                   http_status, transaction_id, errors, outcome, claimed_by, batch_id, at)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s, %s)""",
                          (self.kind, self.doc, self.ids, attempt, self.sha, status, tx,
                           json.dumps(errors, default=str) if errors else None, outcome, self.claim.name,
                           self.batch_id, self.at))
        self.conn.commit()


# --------------------------------------------------------------------------- pushes

def _begin_send(conn, claim: _Claim, *, kind: str, document_id: str | None, ids: list[int], body: Any,
                batch_id: str, at: datetime) -> _SendLog:
    """Count the attempt on the claimed rows (committed before the call, so a crash still leaves a trace)
    and return the send log that records each HTTP try of it."""
    conn.execute("UPDATE ledger.amazon_submission SET attempts = attempts + 1"
                 " WHERE submission_id = ANY(%s) AND claim_key = %s", (ids, claim.key))
    conn.commit()
    return _SendLog(conn, kind=kind, document_id=document_id, ids=ids, body=body, claim=claim,
                    batch_id=batch_id, at=at)


def _mark_submitted(conn, ids: list[int], claim: _Claim, tx: str, at: datetime) -> list[tuple]:
    """Amazon answered 202: the rows this pusher still holds become SUBMITTED; returns their lines."""
    return conn.execute("""
        UPDATE ledger.amazon_submission SET status = 'SUBMITTED', transaction_id = %s, submitted_at = %s,
               last_error = NULL, claim_key = NULL
         WHERE submission_id = ANY(%s) AND status = 'SENDING' AND claim_key = %s
        RETURNING return_id, line""", (tx, at, ids, claim.key)).fetchall()


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
        claim = _Claim(conn, batch_id)
        while consecutive < BREAKER_FAILURES:
            notes = _claim_notes(conn, claim)
            if not notes:
                break
            for doc_id, rows in notes.items():
                ids = [r["submission_id"] for r in rows]
                if consecutive >= BREAKER_FAILURES:
                    _release(conn, ids, claim, None)
                    stats["stopped_by_breaker"] += 1
                    continue
                body = build_credit_note(doc_id, rows, party_id=party_id)
                stats["calls"] += 1
                sendlog = _begin_send(conn, claim, kind="CREDIT_NOTE", document_id=doc_id, ids=ids, body=body,
                                      batch_id=batch_id, at=at)
                try:
                    tx = client.submit_invoices([body], on_attempt=sendlog)
                except AmazonRequestError as e:  # Amazon refused the body itself: not transient
                    _reject(conn, rows, json.dumps(getattr(e, "errors", None) or str(e), default=str), at=at,
                            batch_id=batch_id, claim=claim)
                    stats["rejected"] += 1
                    consecutive = 0
                    continue
                except Exception as e:  # noqa: BLE001 - keep the note pending (same id) and go on
                    _release(conn, ids, claim, f"{type(e).__name__}: {e}"[:2000])
                    errors.append(doc_id)
                    stats["failed"] += 1
                    consecutive += 1
                    continue
                consecutive = 0
                with conn.transaction():
                    done = _mark_submitted(conn, ids, claim, tx, at)
                    conn.execute("""UPDATE ledger.credit_note SET first_transaction_id = COALESCE(first_transaction_id, %s)
                                    WHERE credit_note_id = %s""", (tx, doc_id))
                    _transition(conn, [tuple(k) for k in done], lifecycle.on_credit_submitted,
                                cause="CREDIT_SUBMITTED", at=at, batch_id=batch_id)
                stats["credit_notes"] += 1
                stats["lines"] += len(done)
        conn.execute("SELECT pg_advisory_unlock_all()")
    log.info("push_credits %s: %s", batch_id, stats)
    if errors and not stats["stopped_by_breaker"]:
        raise PushError(f"{len(errors)} credit notes could not be sent (kept pending, same ids on retry): "
                        f"{errors[:5]}")
    if stats["stopped_by_breaker"]:
        log.error("push_credits %s: Amazon failed %d sends in a row; %d notes left PENDING for the next run",
                  batch_id, BREAKER_FAILURES, stats["stopped_by_breaker"])
    return stats


def push_inventory(dsn: str, client, *, warehouse_id: str, party_id: str, at: datetime, batch_id: str,
                   items_per_call: int = 100) -> dict:
    """Send the new absolute available quantity of every SKU with pending restocks, in batches."""
    stats = {"skus": 0, "lines": 0, "calls": 0, "failed": 0, "stopped_by_breaker": 0}
    errors = []
    with connect(dsn) as conn:
        claim = _Claim(conn, batch_id)
        with conn.transaction():
            claimed = conn.execute(f"""
                WITH c AS (SELECT s.submission_id FROM ledger.amazon_submission s
                            WHERE s.kind = 'INVENTORY' AND {_CLAIMABLE} FOR UPDATE OF s SKIP LOCKED)
                UPDATE ledger.amazon_submission a SET status = 'SENDING', claim_key = %(me)s, claimed_by = %(name)s
                  FROM c WHERE a.submission_id = c.submission_id RETURNING a.submission_id, a.sku""",
                                   {"me": claim.key, "name": claim.name}).fetchall()
        by_sku: dict[str, list[int]] = defaultdict(list)
        for sid, sku in claimed:
            by_sku[sku].append(sid)
        avail = dict(conn.execute("SELECT sku, available FROM ledger.sku WHERE sku = ANY(%s)", (list(by_sku),)))
        conn.commit()
        skus = sorted(by_sku)
        consecutive = 0
        for i in range(0, len(skus), items_per_call):
            chunk = skus[i:i + items_per_call]
            ids = sorted(sid for s in chunk for sid in by_sku[s])
            if consecutive >= BREAKER_FAILURES:
                _release(conn, ids, claim, None)
                stats["stopped_by_breaker"] += len(chunk)
                continue
            items = [{"vendorProductIdentifier": s, "availableQuantity": {"amount": int(avail.get(s) or 0),
                                                                         "unitOfMeasure": "Each"},
                      "isObsolete": False} for s in chunk]
            stats["calls"] += 1
            sendlog = _begin_send(conn, claim, kind="INVENTORY", document_id=None, ids=ids, body=items,
                                  batch_id=batch_id, at=at)
            try:
                tx = client.submit_inventory_update(warehouse_id, selling_party_id=party_id, items=items,
                                                    on_attempt=sendlog)
            except Exception as e:  # noqa: BLE001 - absolute quantities: resending later is harmless
                _release(conn, ids, claim, f"{type(e).__name__}: {e}"[:2000])
                errors.append(i)
                stats["failed"] += 1
                consecutive += 1
                continue
            consecutive = 0
            _mark_submitted(conn, ids, claim, tx, at)
            conn.commit()
            stats["skus"] += len(chunk)
            stats["lines"] += len(ids)
        conn.execute("SELECT pg_advisory_unlock_all()")
    log.info("push_inventory %s: %s", batch_id, stats)
    if errors and not stats["stopped_by_breaker"]:
        raise PushError(f"{len(errors)} inventory batches could not be sent; they stay pending")
    return stats


def _reject(conn, rows: list[dict], error: str, *, at: datetime, batch_id: str, claim: _Claim | None = None,
            expect: str = "SENDING") -> None:
    """Amazon refused the note (a Failure that is not a duplicate): the lines are REJECTED, with an exception."""
    with conn.transaction():
        ids = [r["submission_id"] for r in rows]
        guard = "AND claim_key = %s" if claim is not None else ""
        params = (error, at, ids, expect, *((claim.key,) if claim is not None else ()))
        done = conn.execute(f"""UPDATE ledger.amazon_submission SET status = 'FAILED', last_error = %s,
                                       resolved_at = %s, claim_key = NULL
                                 WHERE submission_id = ANY(%s) AND status = %s {guard}
                                RETURNING return_id, line, sku""", params).fetchall()
        keys = [(rid, ln) for rid, ln, _ in done]
        _transition(conn, keys, lambda v: lifecycle.on_credit_result(v, accepted=False), cause="AMAZON_FAILURE",
                    at=at, batch_id=batch_id)
        raise_exceptions(conn, [NewException(ExceptionType.AMAZON_REJECTED, line_subject(rid, ln),
                                             f"Amazon answered the credit note with Failure: {error}",
                                             return_id=rid, line=ln, sku=sku)
                                for rid, ln, sku in done], at=at, batch_id=batch_id)


def _transition(conn, keys: list[tuple[str, int]], fn, *, cause: str, at: datetime, batch_id: str) -> None:
    """Apply a system transition (credit submitted / accepted / refused) to lines, with history."""
    if not keys:
        return
    lines = {(r[0], r[1]): lifecycle.LineView(state=LineState(r[2]), quantity_announced=r[3],
                                              quantity_received=r[4], grade=r[5], disposition=r[6])
             for r in conn.execute("""
                SELECT return_id, line, state, quantity_announced, quantity_received, grade, disposition
                FROM ledger.return_line WHERE (return_id, line) IN (SELECT * FROM unnest(%s::text[], %s::int[]))""",
                ([k[0] for k in keys], [k[1] for k in keys]))}
    upd, hist = [], []
    for key, view in lines.items():
        out = fn(view)
        if not out.transitions:
            continue
        upd.append((key[0], key[1], str(out.line.state)))
        hist.extend((key[0], key[1], str(f), str(t)) for f, t in out.transitions)
    if not upd:
        return
    conn.execute("""UPDATE ledger.return_line l SET state = x.s, updated_at = %s
                    FROM unnest(%s::text[], %s::int[], %s::text[]) AS x(rid, ln, s)
                    WHERE l.return_id = x.rid AND l.line = x.ln""",
                 (at, [u[0] for u in upd], [u[1] for u in upd], [u[2] for u in upd]))
    conn.execute("""INSERT INTO ledger.line_history (return_id, line, from_state, to_state, cause, batch_id, at)
                    SELECT rid, ln, f, t, %s, %s, %s FROM unnest(%s::text[], %s::int[], %s::text[], %s::text[])
                    AS x(rid, ln, f, t)""",
                 (cause, batch_id, at, [h[0] for h in hist], [h[1] for h in hist], [h[2] for h in hist],
                  [h[3] for h in hist]))


# --------------------------------------------------------------------------- confirm

def _duplicate_of(errors: list[dict]) -> tuple[bool, str | None]:
    """(is a duplicate-id refusal, the transaction Amazon says took the note in)."""
    for e in errors or []:
        if isinstance(e, dict) and e.get("code") == DUPLICATE_CODE:
            return True, (str(e.get("details") or "").strip() or None)
    return False, None


def confirm(dsn: str, client, *, at: datetime, batch_id: str, rounds: int = 3, wait_s: float = 1.0) -> dict:
    """Poll Amazon for submitted transactions: Success closes, Failure raises AMAZON_REJECTED.

    A Failure with ``DuplicateInvoiceNumber`` for a note this ledger has sent before is Amazon saying it
    already holds the note: the ledger follows the transaction Amazon names (polled in the next round).
    """
    import time

    from returnledger.clients.amazon import AmazonRequestError

    stats = {"accepted": 0, "rejected": 0, "processing": 0, "inventory_accepted": 0, "inventory_failed": 0,
             "polls": 0, "duplicates_followed": 0}
    with connect(dsn) as conn:
        for attempt in range(rounds):
            pending = conn.execute("""
                SELECT transaction_id, kind, array_agg(submission_id), min(document_id) FROM ledger.amazon_submission
                WHERE status = 'SUBMITTED' AND transaction_id IS NOT NULL
                GROUP BY transaction_id, kind ORDER BY transaction_id""").fetchall()
            conn.commit()
            if not pending:
                break
            still, followed = 0, 0
            for tx, kind, ids, doc in pending:
                stats["polls"] += 1
                try:
                    status = (client.get_transaction(tx) if kind == ActionKind.CREDIT_NOTE
                              else client.get_df_transaction(tx))
                except AmazonRequestError as e:
                    # Amazon refuses to report this transaction (e.g. 404: unknown or expired). Keep the rows
                    # SUBMITTED with the reason; the operating checks raise SYNC_STALLED if it persists.
                    conn.execute("UPDATE ledger.amazon_submission SET last_error = %s WHERE submission_id = ANY(%s)",
                                 (f"{type(e).__name__}: {e}"[:2000], ids))
                    conn.commit()
                    stats["unknown"] = stats.get("unknown", 0) + 1
                    continue
                if status.status == "Success":
                    _accept(conn, kind, ids, tx, doc, at=at, batch_id=batch_id, evidence="SUCCESS")
                    stats["accepted" if kind == ActionKind.CREDIT_NOTE else "inventory_accepted"] += 1
                elif status.status == "Failure" and kind == ActionKind.CREDIT_NOTE:
                    dup, original = _duplicate_of(status.errors)
                    if dup and _sent_before(conn, doc, tx):
                        if original and original != tx:
                            _follow(conn, ids, tx, original, doc)
                            followed += 1
                        else:   # Amazon holds it and names no other transaction: that is the evidence
                            _accept(conn, kind, ids, tx, doc, at=at, batch_id=batch_id, evidence="DUPLICATE")
                            stats["accepted"] += 1
                        stats["duplicates_followed"] += 1
                        continue
                    rows = [dict(zip(("submission_id", "return_id", "line", "sku"), r)) for r in conn.execute(
                        "SELECT submission_id, return_id, line, sku FROM ledger.amazon_submission"
                        " WHERE submission_id = ANY(%s)", (ids,))]
                    detail = json.dumps(status.errors, default=str)
                    if dup:
                        detail = ("the credit-note id was already used at Amazon by an invoice this ledger never "
                                  f"sent: {detail}")
                    _reject(conn, rows, detail, at=at, batch_id=batch_id, expect="SUBMITTED")
                    stats["rejected"] += 1
                elif status.status == "Failure":
                    with conn.transaction():
                        conn.execute("""UPDATE ledger.amazon_submission SET status = 'FAILED', last_error = %s,
                                        resolved_at = %s WHERE submission_id = ANY(%s) AND status = 'SUBMITTED'""",
                                     (json.dumps(status.errors, default=str), at, ids))
                    stats["inventory_failed"] += 1
                else:
                    still += 1
            stats["processing"] = still
            if followed:
                continue                      # poll the transactions Amazon named at once
            if still and attempt < rounds - 1:
                time.sleep(wait_s)
            else:
                break
    log.info("confirm %s: %s", batch_id, stats)
    return stats


def _sent_before(conn, doc: str | None, tx: str) -> bool:
    """Did this ledger send the note in an attempt other than the one that got ``tx``?

    A duplicate refusal is evidence that Amazon holds the note only if an earlier send of ours may have
    been taken in; on the very first send it means the id belongs to somebody else's invoice.
    """
    if doc is None:
        return False
    return bool(conn.execute("""SELECT 1 FROM ledger.submission_attempt WHERE document_id = %s
                                   AND transaction_id IS DISTINCT FROM %s LIMIT 1""", (doc, tx)).fetchone())


def _follow(conn, ids: list[int], tx: str, original: str, doc: str | None) -> None:
    """Amazon refused a resend as a duplicate of ``original``: the note is held there; follow that one."""
    with conn.transaction():
        conn.execute("""UPDATE ledger.amazon_submission SET transaction_id = %s,
                               last_error = %s WHERE submission_id = ANY(%s) AND status = 'SUBMITTED'
                               AND transaction_id = %s""",
                     (original, f"resend {tx} refused as a duplicate of {original}: following {original}", ids, tx))
        if doc:
            conn.execute("UPDATE ledger.credit_note SET held_transaction_id = %s WHERE credit_note_id = %s",
                         (original, doc))


def _accept(conn, kind: str, ids: list[int], tx: str, doc: str | None, *, at: datetime, batch_id: str,
            evidence: str) -> None:
    with conn.transaction():
        keys = conn.execute("""UPDATE ledger.amazon_submission SET status = 'ACCEPTED', resolved_at = %s
                               WHERE submission_id = ANY(%s) AND status = 'SUBMITTED'
                               RETURNING return_id, line""", (at, ids)).fetchall()
        if kind == ActionKind.CREDIT_NOTE:
            if doc:
                conn.execute("""UPDATE ledger.credit_note SET held_transaction_id = %s, confirmed_by = %s,
                                       confirmed_at = %s WHERE credit_note_id = %s""", (tx, evidence, at, doc))
            _transition(conn, [tuple(k) for k in keys], lambda v: lifecycle.on_credit_result(v, accepted=True),
                        cause="AMAZON_SUCCESS" if evidence == "SUCCESS" else "AMAZON_HOLDS_DUPLICATE",
                        at=at, batch_id=batch_id)
