"""The return-line state machine: which ReBound event moves a line where, and
which Amazon action it earns (docs/architecture.md "One event, from the feed to an accepted credit note").

Pure functions, no I/O: the sync reads a line's current state from the
ledger, calls ``replay`` with the line's held events plus the new ones, and
writes back the outcome (state, history, actions, holds, exceptions). Keeping
the rules here means they can be tested exhaustively without a database and
that the money-relevant decisions (restock or not, credit or not) live in one
place.

A held event changes nothing and is re-applied on the next run; an ignored
event changed nothing because the line is already past it (a milestone
already reached, the same count again) and is never applied again. A second
receipt with another count is a recount (rule 10), never ignored.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import TYPE_CHECKING

from returnledger.models import ActionKind, Disposition, EventType, ExceptionType, LineState
from returnledger.money import to_pennies

if TYPE_CHECKING:  # the policy is reference data (reference.policy); the rules only read it
    from returnledger.reference.policy import Policy

# the members as plain attributes: an enum class attribute is a metaclass lookup (several times a global's
# cost), and the rules read a dozen per line-event; the members themselves are the enums' own
_S = SimpleNamespace(**LineState.__members__)
_E = SimpleNamespace(**EventType.__members__)
_D = SimpleNamespace(**Disposition.__members__)
_A = SimpleNamespace(**ActionKind.__members__)

#: progress of a line through the warehouse; REJECTED ranks with the final states
#: because it is only ever reached at or after the disposition
_RANK = {
    _S.ANNOUNCED: 0,
    _S.IN_TRANSIT: 1,
    _S.RECEIVED: 2,
    _S.GRADED: 3,
    _S.DISPOSITIONED: 4,
    _S.CREDIT_SUBMITTED: 5,
    _S.CREDIT_ACCEPTED: 6,
    _S.CLOSED: 7,
    _S.REJECTED: 7,
}

#: tie-break for events that carry the same timestamp: the lifecycle order
EVENT_ORDER = {
    EventType.RETURN_CREATED: 0,
    EventType.IN_TRANSIT: 1,
    EventType.RECEIVED: 2,
    EventType.GRADED: 3,
    EventType.DISPOSITIONED: 4,
}


def _state(value) -> LineState:
    """The state as the enum (a fast path: lines usually carry the member already)."""
    return value if type(value) is LineState else LineState(value)


@dataclass(frozen=True)
class LineView:
    """A line's current state (what the ledger row holds)."""

    state: LineState
    quantity_announced: int
    quantity_received: int | None = None
    grade: str | None = None
    disposition: str | None = None


@dataclass(frozen=True)
class LineEvent:
    """A parsed, validated line-level or return-level event."""

    event_id: str
    type: EventType
    occurred_at: datetime
    quantity: int | None = None
    grade: str | None = None
    disposition: str | None = None


@dataclass(frozen=True)
class Outcome:
    line: LineView  # state after the event (unchanged if held/ignored)
    transitions: tuple[tuple[LineState, LineState], ...]  # (from, to) for history; empty if none
    actions: tuple[ActionKind, ...]  # Amazon actions this event earns (INVENTORY, CREDIT_NOTE)
    hold: ExceptionType | None = None  # OUT_OF_SEQUENCE when the event must wait
    raised: tuple[
        tuple[ExceptionType, str], ...
    ] = ()  # e.g. (QUANTITY_MISMATCH, "received 1 of 2 announced")
    ignored: str | None = None  # why the event changed nothing (e.g. a redelivery)
    hold_detail: str | None = None  # why the event is held (the exception's detail)
    recount: tuple[int, int] | None = None  # rule 10: (count before, recount), see ``_recount``


def _to(
    line: LineView,
    state: LineState,
    *,
    quantity_received: int | None = None,
    grade: str | None = None,
    disposition: str | None = None,
) -> LineView:
    """The line moved to ``state`` (fields not given are kept): ``dataclasses.replace`` without its
    per-call field introspection, which showed in the sync's profile at hundreds of thousands of events."""
    return LineView(
        state,
        line.quantity_announced,
        line.quantity_received if quantity_received is None else quantity_received,
        line.grade if grade is None else grade,
        line.disposition if disposition is None else disposition,
    )


def _ignore(line: LineView, why: str) -> Outcome:
    return Outcome(line=line, transitions=(), actions=(), ignored=why)


def _hold(line: LineView, why: str) -> Outcome:
    return Outcome(line=line, transitions=(), actions=(), hold=ExceptionType.OUT_OF_SEQUENCE, hold_detail=why)


def apply_event(line: LineView, event: LineEvent, policy: Policy) -> Outcome:
    """Apply one event to a line (rules 1-4 and 6)."""
    state = _state(line.state)
    rank = _RANK[state]
    etype = event.type if type(event.type) is EventType else EventType(event.type)

    if etype == _E.RETURN_CREATED:
        if state == _S.ANNOUNCED:
            return Outcome(line=line, transitions=(), actions=())  # confirms what the line already says
        return _ignore(line, f"return created, but the line is already {state}")

    if etype == _E.IN_TRANSIT:
        if state == _S.ANNOUNCED:
            return Outcome(line=_to(line, _S.IN_TRANSIT), transitions=((state, _S.IN_TRANSIT),), actions=())
        return _ignore(line, f"in transit, but the line is already {state}")

    if etype == _E.RECEIVED:
        if event.quantity is None or event.quantity < 1:
            # screening refuses these (INVALID_EVENT): a receipt is at least one unit
            raise ValueError(f"RECEIVED event {event.event_id} needs a quantity of at least 1")
        if rank >= _RANK[_S.RECEIVED]:
            return _recount(line, event, state)
        raised: tuple[tuple[ExceptionType, str], ...] = ()
        if event.quantity != line.quantity_announced:
            raised = (
                (
                    ExceptionType.QUANTITY_MISMATCH,
                    f"received {event.quantity} of {line.quantity_announced} announced",
                ),
            )
        # Rule 1: the receipt starts the warehouse process only, it never earns an Amazon action.
        return Outcome(
            line=_to(line, _S.RECEIVED, quantity_received=event.quantity),
            transitions=((state, _S.RECEIVED),),
            actions=(),
            raised=raised,
        )

    if etype == _E.GRADED:
        if not event.grade:
            raise ValueError(f"GRADED event {event.event_id} needs a grade")
        if rank < _RANK[_S.RECEIVED]:
            return _hold(line, f"graded {event.grade} before the line was received (line is {state})")
        if rank > _RANK[_S.GRADED]:
            return _ignore(line, f"graded after the disposition (line is {state}); the disposition stands")
        if state == _S.GRADED and line.grade == event.grade:
            return _ignore(line, f"already graded {event.grade}")
        return Outcome(
            line=_to(line, _S.GRADED, grade=event.grade), transitions=((state, _S.GRADED),), actions=()
        )

    if etype == _E.DISPOSITIONED:
        if not event.disposition:
            raise ValueError(f"DISPOSITIONED event {event.event_id} needs a disposition")
        if rank < _RANK[_S.GRADED]:
            return _hold(
                line, f"dispositioned {event.disposition} before the line was graded (line is {state})"
            )
        if rank > _RANK[_S.GRADED]:
            return _ignore(line, f"already dispositioned {line.disposition}; a disposition is final")
        return _disposition(line, event.disposition, policy)

    raise ValueError(f"unknown event type {event.type!r}")


def _recount(line: LineView, event: LineEvent, state: LineState) -> Outcome:
    """Rule 10: another RECEIVED for a received line (a new event id: the sync dedupes ids before this).

    The same count again changes nothing. Before the disposition the newest count stands, and the line's
    QUANTITY_MISMATCH follows it (none when it now matches the announced quantity); the disposition then
    decides the credit on that count (an over-receipt holds it, rule 8). After the disposition nothing
    that was sent changes: QUANTITY_MISMATCH shows both counts, and finance decides."""
    before, now = line.quantity_received or 0, event.quantity or 0  # apply_event checked the quantity
    if before == now:
        return _ignore(line, f"already received {before} unit(s); the same count again changes nothing")
    if _RANK[state] > _RANK[_S.GRADED]:
        detail = (
            f"recounted {now} unit(s) after the disposition {line.disposition or state}; the receipt counted"
            f" {before} of {line.quantity_announced} announced. Nothing sent to Amazon changed: finance"
            " decides whether a correction is owed"
        )
        return Outcome(
            line=line,
            transitions=((state, state),),
            actions=(),
            raised=((ExceptionType.QUANTITY_MISMATCH, detail),),
            recount=(before, now),
        )
    detail = f"received {now} of {line.quantity_announced} announced (recounted; {before} before)"
    return Outcome(
        line=_to(line, state, quantity_received=now),
        transitions=((state, state),),
        actions=(),
        raised=((ExceptionType.QUANTITY_MISMATCH, detail),) if now != line.quantity_announced else (),
        recount=(before, now),
    )


def _disposition(line: LineView, disposition: str, policy: Policy) -> Outcome:
    """Rules 2-4: the final disposition decides the restock, the credit note and whether the line closes."""
    disposition = str(disposition)
    after = _to(line, _S.DISPOSITIONED, disposition=disposition)
    steps: list[tuple[LineState, LineState]] = [(_S.GRADED, _S.DISPOSITIONED)]
    received = line.quantity_received or 0
    fraction = policy.credit_fraction(disposition)
    actions: list[ActionKind] = []

    if disposition == _D.REJECTED:
        # inspection rejection never credits and never restocks, whatever the policy table says
        steps.append((_S.DISPOSITIONED, _S.REJECTED))
        return Outcome(line=_to(after, _S.REJECTED), transitions=tuple(steps), actions=())

    if disposition == _D.RESTOCKED and line.grade in policy.sellable_grades and received > 0:
        actions.append(_A.INVENTORY)

    if received == 0:
        final = _S.CLOSED  # nothing came back, so nothing is owed
    elif received > line.quantity_announced and fraction:
        # rule 8: more came back than was announced. The credit waits (recon ON_HOLD) until the warehouse
        # resolves the QUANTITY_MISMATCH and chooses the quantity to credit; never credit it in full.
        final = _S.DISPOSITIONED
    elif fraction is None:
        final = _S.DISPOSITIONED  # held by policy: no credit note until the policy says so
    elif fraction == 0:
        final = _S.CLOSED  # rule 4: the policy says none is owed
    else:
        final = _S.DISPOSITIONED
        actions.append(_A.CREDIT_NOTE)
    if final != _S.DISPOSITIONED:
        steps.append((_S.DISPOSITIONED, final))
    return Outcome(line=_to(after, final), transitions=tuple(steps), actions=tuple(actions))


def _sort_key(event: LineEvent):
    return (
        event.occurred_at,
        EVENT_ORDER[event.type if type(event.type) is EventType else EventType(event.type)],
        event.event_id,
    )


def replay(
    line: LineView, events: Iterable[LineEvent], policy: Policy
) -> tuple[LineView, list[tuple[LineEvent, Outcome]]]:
    """Apply a line's events in lifecycle order; after the first hold, hold the rest (never guess the order).

    The sync passes the line's held events plus the new ones on every run, so a hold resolves itself
    once the missing event arrives. The same event id given twice is applied once (the second copy is
    reported as ignored).
    """
    current = line
    results: list[tuple[LineEvent, Outcome]] = []
    held_by: LineEvent | None = None
    seen: set[str] = set()
    for event in sorted(events, key=_sort_key):
        if event.event_id in seen:
            results.append((event, _ignore(current, f"event {event.event_id} given twice")))
            continue
        seen.add(event.event_id)
        if held_by is not None:
            results.append(
                (event, _hold(current, f"waits for held event {held_by.event_id} ({held_by.type})"))
            )
            continue
        outcome = apply_event(current, event, policy)
        if outcome.hold is not None:
            held_by = event
        current = outcome.line
        results.append((event, outcome))
    return current, results


def on_credit_submitted(line: LineView) -> Outcome:
    """Amazon took the credit note (202): DISPOSITIONED -> CREDIT_SUBMITTED."""
    state = _state(line.state)
    if state == _S.DISPOSITIONED:
        return Outcome(
            line=_to(line, _S.CREDIT_SUBMITTED), transitions=((state, _S.CREDIT_SUBMITTED),), actions=()
        )
    if _RANK[state] > _RANK[_S.DISPOSITIONED]:
        return _ignore(line, f"credit note already past submission (line is {state})")
    raise ValueError(f"a credit note cannot be submitted for a line that is {state} (rule 3)")


def on_credit_result(line: LineView, accepted: bool) -> Outcome:
    """Amazon's transaction status for the credit note: Success closes the line (rule 4), Failure
    rejects it."""
    state = _state(line.state)
    if state not in (_S.DISPOSITIONED, _S.CREDIT_SUBMITTED):
        if _RANK[state] > _RANK[_S.CREDIT_SUBMITTED]:
            return _ignore(line, f"credit result already recorded (line is {state})")
        raise ValueError(f"a credit result cannot arrive for a line that is {state}")
    steps: list[tuple[LineState, LineState]] = []
    if state == _S.DISPOSITIONED:  # the submission was not recorded (lost response): pass through it
        steps.append((_S.DISPOSITIONED, _S.CREDIT_SUBMITTED))
    if accepted:
        steps += [(_S.CREDIT_SUBMITTED, _S.CREDIT_ACCEPTED), (_S.CREDIT_ACCEPTED, _S.CLOSED)]
        return Outcome(line=_to(line, _S.CLOSED), transitions=tuple(steps), actions=())
    steps.append((_S.CREDIT_SUBMITTED, _S.REJECTED))
    return Outcome(
        line=_to(line, _S.REJECTED),
        transitions=tuple(steps),
        actions=(),
        raised=((ExceptionType.AMAZON_REJECTED, "Amazon answered the credit note with Failure"),),
    )


def credit_unit_amount(unit_cost: Decimal, fraction: Decimal) -> Decimal:
    """Credit per unit: unit cost times the policy fraction, to the penny (half up, as finance rounds)."""
    return to_pennies(Decimal(str(unit_cost)) * Decimal(str(fraction)))


__all__ = [
    "EVENT_ORDER",
    "LineEvent",
    "LineView",
    "Outcome",
    "apply_event",
    "credit_unit_amount",
    "on_credit_result",
    "on_credit_submitted",
    "replay",
]
