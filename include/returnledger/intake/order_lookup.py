"""Asking ReBound for return orders, and what an order it could not give means.

The lookup goes one batch at a time, so a failing batch loses no other. An order ReBound could not be
asked about (down through the retries, an answer without its ``returns`` list) is a feed failure, not a
failed run: SYNC_STALLED ``order-fetch:RID`` names it, the events that need it are held by screening
(check ``return_order_read``), and the first run ReBound answers for it releases them
(returnledger.intake.orders asks again on every run).
"""

from __future__ import annotations

import logging
from datetime import datetime

from returnledger.clients.rebound_feed import ReboundError
from returnledger.exception_queue.queue import (
    NewException,
    order_fetch_subject,
    raise_exceptions,
    replay_events,
    resolve_open,
)
from returnledger.ledger.runs import SYSTEM_ACTOR
from returnledger.models import ExceptionType

log = logging.getLogger(__name__)


def ask_rebound(client, ids: list[str]) -> tuple[list, list, list[str], ReboundError | None]:
    """ReBound's answer for ``ids``, one lookup batch at a time: (found orders, ids ReBound does not
    know, ids it could not be asked about, the last error). A batch that fails does not lose the others."""
    from returnledger.clients.rebound import BATCH_IDS

    found: list = []
    missing: list = []
    unread: list[str] = []
    problem: ReboundError | None = None
    for start in range(0, len(ids), BATCH_IDS):
        batch = ids[start : start + BATCH_IDS]
        try:
            got, gone = client.get_returns(batch)
        except ReboundError as exc:
            unread.extend(batch)
            problem = exc
            continue
        found.extend(got or [])
        missing.extend(gone or [])
    return found, missing, unread, problem


def report_unread(
    conn, asked: list[str], unread: list[str], problem: ReboundError | None, *, at: datetime, batch_id: str
) -> None:
    """SYNC_STALLED for each order ReBound could not be asked about; the orders it answered for resolve
    theirs and send the events held for them back through the sync (validated again in this run)."""
    if unread:
        log.error("return orders: %d could not be read from ReBound: %s", len(unread), problem)
        why = f"{type(problem).__name__}: {str(problem)[:300]}" if problem else "no answer"
        raise_exceptions(
            conn,
            [
                NewException(
                    ExceptionType.SYNC_STALLED,
                    order_fetch_subject(rid),
                    f"ReBound return order {rid} could not be read ({why}); its events wait and the order is"
                    " asked for again on every run",
                    return_id=rid,
                )
                for rid in unread
            ],
            at=at,
            batch_id=batch_id,
        )
    answered = sorted(set(asked) - set(unread))
    release_orders(
        conn,
        ExceptionType.SYNC_STALLED,
        answered,
        [order_fetch_subject(r) for r in answered],
        at=at,
        resolution="released: ReBound answered for the return order again",
    )


def release_orders(
    conn, kind: ExceptionType, return_ids: list[str], subjects: list[str], *, at: datetime, resolution: str
) -> None:
    """Close the orders' open ``kind`` exceptions and replay the events they held (the run's transaction)."""
    if not return_ids:
        return
    resolve_open(conn, kind, subjects, at=at, actor=SYSTEM_ACTOR, resolution=resolution)
    replay_events(
        conn,
        [
            r[0]
            for r in conn.execute(
                "SELECT raw_id FROM ledger.held_event WHERE reason = %s AND return_id = ANY(%s)",
                (str(kind), return_ids),
            )
        ],
    )
