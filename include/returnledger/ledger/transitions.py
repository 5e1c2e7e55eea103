"""The lifecycle's common transitions as a table, generated from ``lifecycle.apply_event`` itself.

The set-based apply (returnledger.ledger.setapply) walks lines through their events in SQL by joining this
table; it never states a rule of its own. Every row is what ``apply_event`` answers for one class of inputs:
(line state, event type, condition) where the condition holds exactly the facts the rules read besides the
state (the count against the announced one; the grade against the line's; the disposition with the line's
grade and what was received). Only outcomes that change nothing but the line and its history are rows:
an event the rules hold, ignore, count again (rule 10) or raise an exception for has no row, so the set
path leaves its return to the per-event path. tests/unit/test_transitions.py enumerates every (state,
event) input and checks the table, as the SQL reads it, agrees with the rules.
"""

from __future__ import annotations

from datetime import UTC, datetime

from returnledger.ledger import lifecycle
from returnledger.models import Disposition, EventType, Grade, LineState

#: the condition of an event on a line, in SQL over a line ``w`` (state, qa, qr, grade) and an event ``e``
#: (type, quantity, grade, disposition); ``condition`` below is the same in Python, for the table's rows
CONDITION_SQL = """CASE e.type
    WHEN 'RECEIVED' THEN CASE WHEN e.quantity = w.qa THEN 'eq' ELSE 'ne' END
    WHEN 'GRADED' THEN CASE WHEN w.grade = e.grade THEN 'same' ELSE 'diff' END
    WHEN 'DISPOSITIONED' THEN e.disposition || '|' || COALESCE(w.grade, '') || '|'
        || CASE WHEN COALESCE(w.qr, 0) = 0 THEN 'zero' WHEN w.qr > w.qa THEN 'over' ELSE 'some' END
    ELSE '' END"""

#: the line after a step: the event's own field replaces the line's (the state comes from the table)
NEXT_FIELDS_SQL = """CASE WHEN e.type = 'RECEIVED' THEN e.quantity ELSE w.qr END,
    CASE WHEN e.type = 'GRADED' THEN e.grade ELSE w.grade END,
    CASE WHEN e.type = 'DISPOSITIONED' THEN e.disposition ELSE w.disp END"""

TRANSITION_COLUMNS = (
    ("from_state", "text"),
    ("type", "text"),
    ("cond", "text"),
    ("to_state", "text"),
    ("frs", "text[]"),
    ("tos", "text[]"),
    ("acts", "text[]"),
)

_ANNOUNCED = 2  # the representative line's announced quantity


def condition(line: lifecycle.LineView, event: lifecycle.LineEvent) -> str:
    """``CONDITION_SQL`` in Python (used to build the table's rows)."""
    if event.type == EventType.RECEIVED:
        return "eq" if event.quantity == line.quantity_announced else "ne"
    if event.type == EventType.GRADED:
        return "same" if line.grade is not None and line.grade == event.grade else "diff"
    if event.type == EventType.DISPOSITIONED:
        qr = line.quantity_received or 0
        got = "zero" if qr == 0 else "over" if qr > line.quantity_announced else "some"
        return f"{event.disposition}|{line.grade or ''}|{got}"
    return ""


def _representatives(state: LineState):
    """One (line, event) per condition class of each event type on a line in ``state``."""
    at = datetime(2026, 1, 1, tzinfo=UTC)  # the rules never read the time (only replay's order does)
    yield lifecycle.LineView(state, _ANNOUNCED), lifecycle.LineEvent("x", EventType.RETURN_CREATED, at)
    yield lifecycle.LineView(state, _ANNOUNCED), lifecycle.LineEvent("x", EventType.IN_TRANSIT, at)
    for quantity in (_ANNOUNCED, _ANNOUNCED + 1):
        line = lifecycle.LineView(state, _ANNOUNCED, _ANNOUNCED)
        yield line, lifecycle.LineEvent("x", EventType.RECEIVED, at, quantity=quantity)
    for line_grade in (None, Grade.A.value):
        line = lifecycle.LineView(state, _ANNOUNCED, _ANNOUNCED, line_grade)
        yield line, lifecycle.LineEvent("x", EventType.GRADED, at, grade=Grade.A.value)
    for disposition in Disposition:
        for grade in (None, *(g.value for g in Grade)):
            for received in (0, _ANNOUNCED, _ANNOUNCED + 1):
                line = lifecycle.LineView(state, _ANNOUNCED, received, grade)
                yield (
                    line,
                    lifecycle.LineEvent("x", EventType.DISPOSITIONED, at, disposition=disposition.value),
                )


def common_transitions(policy) -> list[tuple]:
    """The table's rows under ``policy``: (from state, event type, condition, to state, history from-states,
    history to-states, Amazon actions), one per condition class whose outcome the set path can write."""
    rows: dict[tuple[str, str, str], tuple] = {}
    for state in LineState:
        for line, event in _representatives(state):
            out = lifecycle.apply_event(line, event, policy)
            if out.hold is not None or out.ignored or out.raised or out.recount is not None:
                continue
            key = (state.value, event.type.value, condition(line, event))
            rows[key] = (
                *key,
                out.line.state.value,
                [f.value for f, _ in out.transitions],
                [t.value for _, t in out.transitions],
                [a.value for a in out.actions],
            )
    return list(rows.values())
