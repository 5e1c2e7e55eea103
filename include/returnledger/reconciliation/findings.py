"""What reconciliation puts in the exception queue: CREDIT_MISSING, CREDIT_MISMATCH, DARK_RETURN and
QUANTITY_MISMATCH, raised once per subject, and the open ones a run shows are settled.

A subject that already has an exception of the type (open, resolved or dismissed) is not raised again: a
person who resolved or dismissed it made a decision; the report keeps showing the status.
"""

from __future__ import annotations

from datetime import datetime

from returnledger.exception_queue.queue import NewException, raise_exceptions, resolve_open
from returnledger.models import ExceptionType
from returnledger.money import money_text
from returnledger.reconciliation.dark_returns import SETTLED_DARK_SQL

_NOT_RAISED = """
NOT EXISTS (SELECT 1 FROM ledger.exception e WHERE e.type = %(type)s AND e.subject_key = r.row_key)
"""

_CREDIT_MISSING_SQL = f"""
SELECT r.row_key, r.return_id, r.line, r.sku, r.returns_notice, r.credit_note_id, r.amazon_status,
       r.quantity_received, l.dispositioned_at
  FROM ledger.recon_result r
  JOIN ledger.return_line l ON l.return_id = r.return_id AND l.line = r.line
 WHERE r.period = %(key)s AND r.recon_status = 'CREDIT_MISSING' AND {_NOT_RAISED}
"""

_CREDIT_MISMATCH_SQL = f"""
SELECT r.row_key, r.return_id, r.line, r.sku, r.returns_notice, r.credit_note_id, r.credited_amount,
       r.charged_amount, r.currency, r.amazon_return_id
  FROM ledger.recon_result r
 WHERE r.period = %(key)s AND r.recon_status = 'CREDIT_MISMATCH' AND {_NOT_RAISED}
"""

_DARK_EXC_SQL = f"""
SELECT r.row_key, r.sku, r.returns_notice, r.rma_id, r.amazon_quantity, a.label, a.returned_at, a.source_file
  FROM ledger.recon_result r
  JOIN ledger.amazon_return a ON a.amazon_return_id = r.amazon_return_id
 WHERE r.period = %(key)s AND r.recon_status = 'DARK_RETURN' AND {_NOT_RAISED}
"""

# Received units (all lines of a returns notice and SKU, once all are received)
# against Amazon's quantity for that notice and SKU.
_QUANTITY_SQL = f"""
WITH g AS (
    SELECT r.*, sum(r.quantity_received) OVER w AS received_total,
           count(*) OVER w AS n_lines, count(r.quantity_received) OVER w AS n_received
      FROM ledger.recon_result r
     WHERE r.period = %(key)s AND r.return_id IS NOT NULL AND r.amazon_quantity IS NOT NULL
    WINDOW w AS (PARTITION BY r.returns_notice, r.sku)
)
SELECT r.row_key, r.return_id, r.line, r.sku, r.returns_notice, r.received_total, r.amazon_quantity,
       r.amazon_return_id
  FROM g r
 WHERE r.n_lines = r.n_received AND r.received_total <> r.amazon_quantity AND {_NOT_RAISED}
"""

# Open CREDIT_MISSING exceptions that this run shows are settled: the credit was accepted after all.
_SETTLED_CREDIT_MISSING_SQL = """
SELECT r.row_key FROM ledger.recon_result r
  JOIN ledger.exception e ON e.type = 'CREDIT_MISSING' AND e.status = 'open' AND e.subject_key = r.row_key
 WHERE r.period = %(key)s AND r.return_id IS NOT NULL AND r.recon_status IN ('MATCHED', 'CREDIT_MISMATCH')
"""


def _amount(value) -> str:
    return "n/a" if value is None else money_text(value)


def _credit_missing(rows, as_of: datetime, window_days) -> list[NewException]:
    out = []
    for key, rid, line, sku, notice, note_id, status, qty, disp_at in rows:
        age = (as_of - disp_at).days if disp_at else None
        sent = f"credit note {note_id} is {status}" if note_id else "no credit note was sent"
        if status == "ACCEPTED":
            sent = (
                f"the ledger marks credit note {note_id} accepted, but Amazon never confirmed it "
                "(no Success of its transaction and no duplicate refusal naming it in the send log)"
            )
        out.append(
            NewException(
                ExceptionType.CREDIT_MISSING,
                key,
                f"{qty} unit(s) of {sku} (returns notice {notice}) were dispositioned {age} days before "
                f"{as_of:%Y-%m-%d} and Amazon has not accepted a credit within the {window_days}-day window: "
                f"{sent}",
                return_id=rid,
                line=line,
                sku=sku,
            )
        )
    return out


def _credit_mismatch(rows) -> list[NewException]:
    return [
        NewException(
            ExceptionType.CREDIT_MISMATCH,
            key,
            f"Amazon charged {_amount(charged)} {cur or ''} for returns notice {notice} / {sku} "
            f"(export row {arid}) but the accepted credit note {note_id} credited {_amount(credited)}",
            return_id=rid,
            line=line,
            sku=sku,
            amazon_return_id=arid,
        )
        for key, rid, line, sku, notice, note_id, credited, charged, cur, arid in rows
    ]


def _dark(rows) -> list[NewException]:
    return [
        NewException(
            ExceptionType.DARK_RETURN,
            key,
            f"Amazon return {key} ({label} label, returns notice {notice}, RMA {rma or '-'}, {qty} x {sku}, "
            f"returned {returned}, file {src}) has no ReBound return; check the parcel at the warehouse",
            sku=sku,
            amazon_return_id=key,
        )
        for key, sku, notice, rma, qty, label, returned, src in rows
    ]


def _quantity(rows) -> list[NewException]:
    return [
        NewException(
            ExceptionType.QUANTITY_MISMATCH,
            key,
            f"{received} unit(s) of {sku} received for returns notice {notice}, Amazon's returns export "
            f"{arid} shows {amazon_qty}",
            return_id=rid,
            line=line,
            sku=sku,
            amazon_return_id=arid,
        )
        for key, rid, line, sku, notice, received, amazon_qty, arid in rows
    ]


def find(conn, params: dict, *, as_of: datetime, window_days) -> list[NewException]:
    """The exceptions a period's fresh results call for; ``params``: the reconciliation's query parameters."""
    new: list[NewException] = []
    new += _credit_missing(
        conn.execute(_CREDIT_MISSING_SQL, {**params, "type": "CREDIT_MISSING"}), as_of, window_days
    )
    new += _credit_mismatch(conn.execute(_CREDIT_MISMATCH_SQL, {**params, "type": "CREDIT_MISMATCH"}))
    new += _dark(conn.execute(_DARK_EXC_SQL, {**params, "type": "DARK_RETURN"}))
    new += _quantity(conn.execute(_QUANTITY_SQL, {**params, "type": "QUANTITY_MISMATCH"}))
    return new


def raise_found(conn, new: list[NewException], *, at: datetime, batch_id: str) -> dict[str, int]:
    """Raise the found exceptions type by type; returns how many of each were new to the queue."""
    raised = {}
    for t in sorted({str(n.type) for n in new}):
        raised[t] = raise_exceptions(conn, [n for n in new if str(n.type) == t], at=at, batch_id=batch_id)
    return raised


def resolve_settled(conn, params: dict, *, at: datetime, batch_id: str) -> int:
    """Resolve open CREDIT_MISSING and DARK_RETURN exceptions this run shows are settled; returns how many."""
    actor = f"reconciliation:{batch_id}"
    settled = [r[0] for r in conn.execute(_SETTLED_CREDIT_MISSING_SQL, params)]
    resolved = resolve_open(
        conn,
        ExceptionType.CREDIT_MISSING,
        settled,
        at=at,
        actor=actor,
        resolution="Amazon accepted the credit note",
    )
    found = [r[0] for r in conn.execute(SETTLED_DARK_SQL, params)]
    resolved += resolve_open(
        conn,
        ExceptionType.DARK_RETURN,
        found,
        at=at,
        actor=actor,
        resolution="a ReBound return now exists for this returns notice and SKU",
    )
    return resolved
