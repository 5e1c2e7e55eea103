"""What the ledger owes Amazon: one ``ledger.amazon_submission`` row per credit-note line or restock.

Apply writes these rows in the same transaction as the line changes that earned them (so an action is
never lost nor earned twice); the pushes send them later. A credit note is a row of ``ledger.credit_note``
whose id, ``CN-<return>-<lowest line it contains>``, is unique by construction (each line is in exactly
one note, and a line the run skips names nothing) and by the table's key; notes never span returns, so
several returns booked under one Amazon returns notice each get their own.
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

from returnledger.ledger import lifecycle
from returnledger.ledger.runs import SYSTEM_ACTOR
from returnledger.models import ActionKind, LineState
from returnledger.store.db import copy_rows

# ledger.amazon_submission.document_id holds the credit note's id (NULL for a restock)
_SUBMISSION_COLUMNS = (
    ("idempotency_key", "text"),
    ("kind", "text"),
    ("return_id", "text"),
    ("line", "int4"),
    ("sku", "text"),
    ("asin", "text"),
    ("quantity", "int4"),
    ("unit_amount", "numeric"),
    ("currency", "text"),
    ("document_id", "text"),
    ("created_at", "timestamptz"),
    ("created_batch", "text"),
)
_CREDIT_NOTE_COLUMNS = (
    ("credit_note_id", "text"),
    ("return_id", "text"),
    ("returns_notice", "text"),
    ("created_at", "timestamptz"),
    ("created_batch", "text"),
)


def credit_note_id(return_id: str, first_line: int) -> str:
    """The invoice id Amazon sees: unique because every line belongs to exactly one note of its return."""
    return f"CN-{return_id}-{first_line}"


def submission_key(kind: str, return_id: str, line: int) -> str:
    """The idempotency key of a line's Amazon action: the same line never earns the same action twice."""
    return f"{'credit' if kind == ActionKind.CREDIT_NOTE else 'inventory'}:{return_id}:{line}"


def write_submissions(conn, lines, info, actions, policy, *, batch_id, at, currency) -> dict:
    """Submission rows with deterministic keys; the credit notes they form; restocks raise the stock.

    ``actions`` are (return, line, kind) from the lifecycle; credits released by a resolved
    over-receipt (the warehouse chose the quantity) join them here, so every credit is built in one place.
    """
    credit_qty = dict(_released_over_receipts(conn, lines, info))
    actions = sorted(set(actions) | {(rid, ln, ActionKind.CREDIT_NOTE) for rid, ln in credit_qty})
    if not actions:
        return {"credit_actions": 0, "inventory_actions": 0}
    keys = [submission_key(k, rid, ln) for rid, ln, k in actions]
    known = {
        r[0]
        for r in conn.execute(
            "SELECT idempotency_key FROM ledger.amazon_submission WHERE idempotency_key = ANY(%b::text[])",
            (keys,),
        )
    }
    fresh = [(key, a) for key, a in zip(keys, actions, strict=True) if key not in known]
    # what each new row sends; a credit the policy holds or that owes nothing is skipped here, before
    # any note is named: a skipped line is picked up again on later runs, so it must never name a note
    planned: list[tuple] = []
    for key, (rid, ln, kind) in fresh:
        sku, asin, unit_cost, notice = info[(rid, ln)]
        if kind == ActionKind.CREDIT_NOTE:
            view = lines.get((rid, ln))
            qty = credit_qty.get((rid, ln), view.quantity_received if view else None)
            fraction = policy.credit_fraction(view.disposition if view else None)
            if not qty or fraction is None:
                continue
            unit = lifecycle.credit_unit_amount(Decimal(unit_cost), Decimal(fraction))
            planned.append((key, kind, rid, ln, sku, asin, qty, unit, notice))
        else:
            planned.append((key, kind, rid, ln, sku, asin, lines[(rid, ln)].quantity_received, None, None))
    # one note per return and batch, named after the lowest line it contains: each line is in exactly one
    # note (its submission key is unique), so no two notes of a return can share a name
    first_line: dict[str, int] = {}
    for _, kind, rid, ln, *_rest in planned:
        if kind == ActionKind.CREDIT_NOTE:
            first_line[rid] = min(first_line.get(rid, ln), ln)
    note_of = _free_note_ids(conn, {rid: credit_note_id(rid, ln) for rid, ln in first_line.items()})
    rows: list[tuple] = []
    notes: dict[str, tuple[str, str, str]] = {}
    for key, kind, rid, ln, sku, asin, qty, unit, notice in planned:
        if kind == ActionKind.CREDIT_NOTE:
            note_id = note_of[rid]
            notes[note_id] = (note_id, rid, notice)
            rows.append((key, str(kind), rid, ln, sku, asin, qty, unit, currency, note_id))
        else:
            rows.append((key, str(kind), rid, ln, sku, asin, qty, None, None, None))
    # the note rows first (their key refuses a reused id loudly), then the lines that form them
    copy_rows(conn, "ledger.credit_note", _CREDIT_NOTE_COLUMNS, ((*n, at, batch_id) for n in notes.values()))
    copy_rows(conn, "ledger.amazon_submission", _SUBMISSION_COLUMNS, ((*r, at, batch_id) for r in rows))
    restock: dict[str, int] = defaultdict(int)
    for r in rows:
        if r[1] == ActionKind.INVENTORY:
            restock[r[4]] += r[6]
    if restock:
        conn.execute(
            """UPDATE ledger.sku s SET available = s.available + x.q, updated_at = %s, updated_by = %s
                        FROM unnest(%b::text[], %b::int[]) AS x(sku, q) WHERE s.sku = x.sku""",
            (at, SYSTEM_ACTOR, list(restock), list(restock.values())),
        )
    return {
        "credit_actions": sum(1 for r in rows if r[1] == ActionKind.CREDIT_NOTE),
        "inventory_actions": sum(1 for r in rows if r[1] == ActionKind.INVENTORY),
        "over_receipts_released": len(credit_qty),
    }


def _free_note_ids(conn, wanted: dict[str, str]) -> dict[str, str]:
    """The note ids to use, per return. A ledger written before notes were named from their own lines may
    hold a note named after a line it does not contain; that line's own note then takes the first free
    ``<id>r2``, ``<id>r3``... (a letter after the line number: no other return's regular id looks like it)."""
    if not wanted:
        return wanted

    def taken(ids) -> set[str]:
        return {
            r[0]
            for r in conn.execute(
                "SELECT credit_note_id FROM ledger.credit_note WHERE credit_note_id = ANY(%b::text[])",
                (list(ids),),
            )
        }

    out = dict(wanted)
    clash = taken(out.values())
    k = 1
    while clash:  # only on a ledger with such legacy notes: one more lookup per round
        k += 1
        out.update({rid: f"{wanted[rid]}r{k}" for rid, n in out.items() if n in clash})
        clash = taken(n for n in out.values() if n.endswith(f"r{k}"))
    return out


_RELEASED_OVER_RECEIPTS_SQL = """
SELECT l.return_id, l.line, l.credit_quantity, l.state, l.quantity_announced, l.quantity_received,
       l.grade, l.disposition, l.sku, s.asin, s.unit_cost, o.returns_notice
  FROM ledger.return_line l JOIN ledger.return_order o USING (return_id)
  LEFT JOIN ledger.sku s ON s.sku = l.sku
 WHERE l.credit_quantity > 0 AND l.state = 'DISPOSITIONED'
   AND NOT EXISTS (SELECT 1 FROM ledger.amazon_submission a
                    WHERE a.kind = 'CREDIT_NOTE' AND a.return_id = l.return_id AND a.line = l.line)
"""


def _released_over_receipts(conn, lines, info) -> list[tuple[tuple[str, int], int]]:
    """Over-received lines whose QUANTITY_MISMATCH the warehouse resolved with a quantity to credit."""
    rows = conn.execute(_RELEASED_OVER_RECEIPTS_SQL).fetchall()
    out = []
    for rid, ln, qty, state, announced, received, grade, disposition, sku, asin, cost, notice in rows:
        lines.setdefault(
            (rid, ln),
            lifecycle.LineView(
                state=LineState(state),
                quantity_announced=announced,
                quantity_received=received,
                grade=grade,
                disposition=disposition,
            ),
        )
        info.setdefault((rid, ln), (sku, asin, cost, notice))
        out.append(((rid, ln), qty))
    return out
