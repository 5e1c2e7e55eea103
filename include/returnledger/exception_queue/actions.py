"""What people do to an exception: resolve, dismiss, pick the right body of a conflicting event, fix the
cause and resolve in one step (add the reason mapping, add the SKU), or choose the units to credit for an
over-receipt (retrying a rejected credit note is ``exception_queue.retry``).

People act from the console (plugins/) or the CLI. Every action locks the exception row, refuses a
transition that makes no sense (resolving twice, retrying something Amazon did not reject), and writes
who / when / what / why to ``ledger.audit_log`` in the same transaction. The sync releases held events
on its next run; events an action sends back (``replay_events``: what the type's registry entry says
closing it replays, a kept body) are validated and applied by that run like a new delivery. Which action
applies to which type, and what resolving or dismissing replays, is read from the exception-type
registry (``returnledger.exception_types``).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import psycopg

from returnledger.exception_queue.conflicts import chosen_raw_id, pick_body, versions_hint
from returnledger.exception_queue.queue import (
    ExceptionActionError,
    audit_exception,
    close,
    close_audited,
    line_subject,
    lock_open,
    replay_events,
    required,
)
from returnledger.exception_types import Release, Replay, kind, offering
from returnledger.reference.mappings import add_reason_mapping
from returnledger.reference.skus import add_sku
from returnledger.store.db import unit_of_work


def resolve_exception(dsn_or_conn, exception_id: int, *, actor: str, resolution: str, at: datetime) -> dict:
    """Record that a person fixed the cause. Holding exceptions release their events on the next sync run
    (the sync raises the exception again if the cause is in fact still there). An over-receipt's
    QUANTITY_MISMATCH is refused: it closes only with ``resolve_over_receipt`` (a quantity to credit).

    What resolving sends back through the next sync run is the type's ``on_resolve`` in the registry (its
    raw event, or its held events: validated again, then applied if they now pass). A type released by
    picking a body (``Release.PICK``) is resolved by choosing one: the resolution must say which
    ("keep raw <raw_id>"), see ``pick_event_body``.
    """
    actor, resolution = required(actor, "actor"), required(resolution, "resolution")
    with unit_of_work(dsn_or_conn) as conn:
        row = lock_open(conn, exception_id, action="resolve")
        refuse_closing_an_over_receipt(conn, row, "resolve")
        k = kind(row["type"])
        if k.released_by is Release.PICK:
            return pick_body(
                conn, row, chosen_raw_id(conn, row, resolution), actor=actor, at=at, why=resolution
            )
        return _close_and_replay(
            conn,
            row,
            status="resolved",
            action="resolve",
            actor=actor,
            why=resolution,
            at=at,
            replay=k.on_resolve,
        )


def dismiss_exception(dsn_or_conn, exception_id: int, *, actor: str, reason: str, at: datetime) -> dict:
    """Close an exception that needs no fix (a known test return, a duplicate report); the reason is kept.

    What dismissing sends back is the type's ``on_dismiss`` in the registry (a dismissed invalid event
    stays invalid for good; the held events of a failing or unread return order are examined again and
    wait again if it still fails). A type whose registry entry has no ``dismiss`` action cannot be
    dismissed (a conflicting event's line waits until one body is chosen); nor can an over-receipt's
    QUANTITY_MISMATCH (see ``resolve_over_receipt``).
    """
    actor, reason = required(actor, "actor"), required(reason, "reason")
    with unit_of_work(dsn_or_conn) as conn:
        row = lock_open(conn, exception_id, action="dismiss")
        refuse_closing_an_over_receipt(conn, row, "dismiss")
        k = kind(row["type"])
        if "dismiss" not in k.actions:
            why = (
                f"an {row['type']} holds its line until one body is chosen; {versions_hint(conn, row)}"
                if k.released_by is Release.PICK
                else f"{row['type']} offers only {' / '.join(k.actions)}"
            )
            raise ExceptionActionError(f"cannot dismiss exception {exception_id}: {why}")
        return _close_and_replay(
            conn,
            row,
            status="dismissed",
            action="dismiss",
            actor=actor,
            why=reason,
            at=at,
            # events held for a failing or unread return order go back through the sync, never stay held
            replay=k.on_dismiss,
        )


def over_receipt_held(conn: psycopg.Connection, row: dict) -> tuple[int, int] | None:
    """(received, announced) when this exception is the QUANTITY_MISMATCH that holds an over-receipt's
    credit (rule 8: received above announced, no quantity chosen yet), else None."""
    if (
        row["type"] not in offering("credit")
        or row["return_id"] is None
        or row["line"] is None
        or row["subject_key"] != line_subject(row["return_id"], row["line"])
    ):
        return None
    found = conn.execute(
        "SELECT quantity_received, quantity_announced FROM ledger.return_line"
        " WHERE return_id = %s AND line = %s AND quantity_received > quantity_announced"
        " AND credit_quantity IS NULL",
        (row["return_id"], row["line"]),
    ).fetchone()
    return (found[0], found[1]) if found else None


def refuse_closing_an_over_receipt(conn: psycopg.Connection, row: dict, action: str) -> None:
    """An over-receipt's QUANTITY_MISMATCH closes only by choosing the quantity to credit: a plain resolve
    or dismiss would leave the line dispositioned with its credit held, no exception and no note."""
    held = over_receipt_held(conn, row)
    if held is None:
        return
    received, announced = held
    raise ExceptionActionError(
        f"cannot {action} exception {row['exception_id']}: line {row['subject_key']} received {received} of"
        f" {announced} announced, and its credit is held until the warehouse chooses how many units to credit"
        f" (0 to {received}; 0 closes the line with nothing owed). Use 'Credit this quantity' in the console,"
        f" or: returnledger exceptions credit {row['exception_id']} QUANTITY"
    )


def _close_and_replay(
    conn: psycopg.Connection,
    row: dict,
    *,
    status: str,
    action: str,
    actor: str,
    why: str,
    at: datetime,
    replay: Replay,
) -> dict:
    """Close the exception, send what ``replay`` names back through the sync, and audit both."""
    out = close(conn, row["exception_id"], status=status, actor=actor, resolution=why, at=at)
    replayed = _replay_for(conn, row, replay)
    audit_exception(
        conn,
        row,
        action,
        actor=actor,
        at=at,
        detail={"why": why, **({"replayed_events": replayed} if replayed else {})},
    )
    if replayed:
        out["replayed_events"] = replayed
    return out


def _replay_for(conn: psycopg.Connection, row: dict, replay: Replay) -> int:
    """Events a closed exception sent back through the sync (same path as a new delivery)."""
    if replay is Replay.RAW_EVENT and row["raw_id"] is not None:
        return replay_events(conn, [row["raw_id"]])
    if replay is Replay.HELD_EVENTS:
        # the events held against this exception, or against its return's (an order's) exception
        ids = [
            r[0]
            for r in conn.execute(
                "SELECT raw_id FROM ledger.held_event WHERE reason = %s"
                " AND (exception_id = %s OR (%s::text IS NOT NULL AND return_id = %s))",
                (str(row["type"]), row["exception_id"], row["return_id"], row["return_id"]),
            )
        ]
        return replay_events(conn, ids)
    return 0


def pick_event_body(
    dsn_or_conn, exception_id: int, raw_id: int, *, actor: str, at: datetime, why: str | None = None
) -> dict:
    """Resolve a conflict of bodies (an exception offering ``pick``) by choosing the body that is right,
    atomically.

    The chosen body goes on: if it was held for the conflict it is examined again by the next sync run
    (validated, then applied), and the line's other held events follow through the usual release. Every
    other body of the event id is SUPERSEDED (kept, never applied; an open INVALID_EVENT of one is
    resolved). A body the ledger already applied before the conflict was seen cannot be taken back, so
    when one was applied only that one can be chosen.
    """
    actor = required(actor, "actor")
    with unit_of_work(dsn_or_conn) as conn:
        row = lock_open(conn, exception_id, types=offering("pick"), action="pick a body for")
        return pick_body(conn, row, int(raw_id), actor=actor, at=at, why=why)


def _line_reason(conn: psycopg.Connection, row: dict) -> str:
    if row["return_id"] is None or row["line"] is None:
        raise ExceptionActionError(f"exception {row['exception_id']} names no return line")
    found = conn.execute(
        "SELECT reason FROM ledger.return_line WHERE return_id = %s AND line = %s",
        (row["return_id"], row["line"]),
    ).fetchone()
    if found is None:  # the line may be known only from the return order's payload
        found = conn.execute(
            "SELECT l->>'reason' FROM ledger.return_order o, jsonb_array_elements(o.payload->'lines') l"
            " WHERE o.return_id = %s AND (l->>'line')::int = %s",
            (row["return_id"], row["line"]),
        ).fetchone()
    if found is None or not found[0]:
        raise ExceptionActionError(
            f"exception {row['exception_id']}: the ReBound reason of line "
            f"{row['subject_key']} is not in the ledger"
        )
    return found[0]


def resolve_with_mapping(dsn, exception_id: int, amazon_reason: str, *, actor: str, at: datetime) -> dict:
    """Add the missing reason-code mapping and resolve the exception (one offering ``map``), atomically.

    The held events of every line with that reason are released by the next sync run.
    """
    actor, amazon_reason = required(actor, "actor"), required(amazon_reason, "amazon_reason")
    with unit_of_work(dsn) as conn:
        row = lock_open(conn, exception_id, types=offering("map"), action="resolve with a mapping")
        rebound_reason = _line_reason(conn, row)
        add_reason_mapping(
            conn, rebound_reason, amazon_reason, at=at, actor=actor, why=f"resolves exception {exception_id}"
        )
        why = f"mapped ReBound reason {rebound_reason} to {amazon_reason}"
        out = close_audited(
            conn,
            row,
            "resolve_with_mapping",
            why,
            actor=actor,
            at=at,
            detail={"why": why, "rebound_reason": rebound_reason, "amazon_reason": amazon_reason},
        )
    out["mapping"] = {"rebound_reason": rebound_reason, "amazon_reason": amazon_reason}
    return out


def resolve_with_sku(
    dsn, exception_id: int, asin: str, unit_cost, available: int, *, actor: str, at: datetime
) -> dict:
    """Add the missing SKU to the catalog and resolve the SKU_MISMATCH exception, atomically."""
    actor, asin = required(actor, "actor"), required(asin, "asin")
    with unit_of_work(dsn) as conn:
        row = lock_open(conn, exception_id, types=offering("sku"), action="resolve with a SKU")
        sku = row["sku"]
        if not sku and row["return_id"] is not None:
            found = conn.execute(
                "SELECT sku FROM ledger.return_line WHERE return_id = %s AND line = %s",
                (row["return_id"], row["line"]),
            ).fetchone()
            sku = found[0] if found else None
        if not sku:
            raise ExceptionActionError(f"exception {exception_id} names no SKU")
        add_sku(conn, sku, asin, Decimal(str(unit_cost)), int(available), at=at, actor=actor)
        why = f"added SKU {sku} (ASIN {asin}, unit cost {unit_cost}, available {available}) to the catalog"
        out = close_audited(
            conn,
            row,
            "resolve_with_sku",
            why,
            actor=actor,
            at=at,
            detail={
                "why": why,
                "sku": sku,
                "asin": asin,
                "unit_cost": str(unit_cost),
                "available": int(available),
            },
        )
    out["sku_added"] = {
        "sku": sku,
        "asin": asin,
        "unit_cost": Decimal(str(unit_cost)),
        "available": int(available),
    }
    return out


def resolve_over_receipt(
    dsn_or_conn, exception_id: int, quantity: int, *, actor: str, at: datetime, note: str = ""
) -> dict:
    """The warehouse resolves an over-receipt (received above announced) by choosing the units to credit.

    The credit was held (recon ON_HOLD) since the receipt; the chosen quantity, between 0 and the units
    received, is stored on the line and the next sync run sends exactly one credit note for it (if the
    choice comes before the disposition, the run that applies the disposition sends it). 0 closes the
    line with nothing owed. This is the only way to close such an exception (``resolve_exception`` and
    ``dismiss_exception`` refuse it). The choice is audited.
    """
    actor = required(actor, "actor")
    try:
        quantity = int(quantity)
    except (TypeError, ValueError):
        raise ExceptionActionError(
            f"the quantity to credit must be a whole number, got {quantity!r}"
        ) from None
    with unit_of_work(dsn_or_conn) as conn:
        row = lock_open(conn, exception_id, types=offering("credit"), action="choose the credit quantity for")
        if row["return_id"] is None or row["line"] is None:
            raise ExceptionActionError(f"exception {exception_id} names no return line")
        line = conn.execute(
            """SELECT quantity_announced, quantity_received, state, credit_quantity
                                 FROM ledger.return_line WHERE return_id = %s AND line = %s FOR UPDATE""",
            (row["return_id"], row["line"]),
        ).fetchone()
        if line is None:
            raise ExceptionActionError(f"line {row['subject_key']} is not in the ledger")
        announced, received, state, chosen = line
        if received is None or received <= announced:
            raise ExceptionActionError(
                f"line {row['subject_key']} received {received} of {announced} announced: only a receipt "
                "above the announced quantity holds the credit; resolve this exception instead"
            )
        if chosen is not None:
            raise ExceptionActionError(
                f"line {row['subject_key']} already has {chosen} unit(s) chosen to credit"
            )
        if not 0 <= quantity <= received:
            raise ExceptionActionError(
                f"the quantity to credit must be between 0 and the {received} unit(s) received"
            )
        conn.execute(
            "UPDATE ledger.return_line SET credit_quantity = %s, updated_at = %s"
            " WHERE return_id = %s AND line = %s",
            (quantity, at, row["return_id"], row["line"]),
        )
        if quantity == 0 and state == "DISPOSITIONED":
            conn.execute(
                "UPDATE ledger.return_line SET state = 'CLOSED' WHERE return_id = %s AND line = %s",
                (row["return_id"], row["line"]),
            )
            conn.execute(
                """INSERT INTO ledger.line_history
                                   (return_id, line, from_state, to_state, cause, batch_id, at)
                            VALUES (%s, %s, 'DISPOSITIONED', 'CLOSED', 'NO_CREDIT_CHOSEN', %s, %s)""",
                (row["return_id"], row["line"], f"manual:over_receipt:{exception_id}", at),
            )
        why = f"{actor} chose to credit {quantity} of {received} unit(s) received ({announced} announced)" + (
            f": {note}" if note else ""
        )
        out = close_audited(
            conn,
            row,
            "credit_quantity",
            why,
            actor=actor,
            at=at,
            detail={
                "credit_quantity": quantity,
                "received": received,
                "announced": announced,
                "note": note,
            },
        )
    out["credit_quantity"] = quantity
    return out


def open_over_receipt_exception(dsn_or_conn, return_id: str, line: int) -> int:
    """The id of the open QUANTITY_MISMATCH that holds line ``return_id|line``'s over-receipt credit."""
    subject = line_subject(return_id, int(line))
    with unit_of_work(dsn_or_conn) as conn:
        found = conn.execute(
            "SELECT exception_id FROM ledger.exception"
            " WHERE type = 'QUANTITY_MISMATCH' AND status = 'open' AND subject_key = %s",
            (subject,),
        ).fetchone()
    if found is None:
        raise ExceptionActionError(
            f"line {subject} has no open QUANTITY_MISMATCH: it was not received above the announced quantity"
            " (or not received yet), or its quantity was already chosen"
        )
    return found[0]


def resolve_over_receipt_of_line(
    dsn, return_id: str, line: int, quantity: int, *, actor: str, at: datetime, note: str = ""
) -> dict:
    """``resolve_over_receipt`` for the line's open over-receipt exception (a scenario's
    ``resolve_over_receipt`` operation names the line, the console the exception)."""
    exception_id = open_over_receipt_exception(dsn, return_id, line)
    return resolve_over_receipt(dsn, exception_id, quantity, actor=actor, at=at, note=note)
