"""The set-based apply's transition table agrees with the lifecycle rules on every (state, event) input.

Every line state x every event type x every value the rules read (counts below, at and above the announced
one, each grade against each line grade, each disposition on each grade with nothing, some or more than
announced received), under policies that hold, pay nothing, pay part and pay in full: the table is joined
in PostgreSQL exactly as the set path joins it (``CONDITION_SQL``, ``NEXT_FIELDS_SQL``) and its answer is
compared with ``lifecycle.apply_event``'s. An outcome the rules hold, ignore, recount or raise an exception
for must find no row (its return goes through the per-event path); every other must find the row that moves
the line where the rules move it, with the same history and Amazon actions.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from returnledger.ledger import lifecycle
from returnledger.ledger.transitions import CONDITION_SQL, NEXT_FIELDS_SQL, common_transitions
from returnledger.models import Disposition, EventType, Grade, LineState
from returnledger.reference.policy import Policy
from returnledger.store import db

pytestmark = pytest.mark.integration

AT = datetime(2026, 11, 2, tzinfo=UTC)
GRADES = [None, *(g.value for g in Grade)]
FRACTIONS = [None, Decimal("0"), Decimal("0.5"), Decimal("1")]


def _policies() -> list[Policy]:
    """Each disposition under each kind of fraction, with no, one and two sellable grades."""
    dispositions = [d.value for d in Disposition]
    out = []
    for shift, sellable in enumerate([(), ("A",), ("A", "B")]):
        for k in range(len(FRACTIONS)):
            credit = {d: FRACTIONS[(i + k + shift) % len(FRACTIONS)] for i, d in enumerate(dispositions)}
            out.append(Policy(sellable_grades=frozenset(sellable), credit=credit, credit_window_days=7))
    return out


def _inputs():
    """Every (line, event) the rules distinguish, with the announced quantity 2."""
    for state in LineState:
        for qr, grade in itertools.product([None, 0, 1, 2, 3], GRADES):
            line = lifecycle.LineView(state, 2, qr, grade, None)
            yield line, lifecycle.LineEvent("e", EventType.RETURN_CREATED, AT)
            yield line, lifecycle.LineEvent("e", EventType.IN_TRANSIT, AT)
            for q in (1, 2, 3):
                yield line, lifecycle.LineEvent("e", EventType.RECEIVED, AT, quantity=q)
            for g in GRADES[1:]:
                yield line, lifecycle.LineEvent("e", EventType.GRADED, AT, grade=g)
            for d in Disposition:
                yield line, lifecycle.LineEvent("e", EventType.DISPOSITIONED, AT, disposition=d.value)


def _table_answers(conn, policy, inputs) -> list:
    conn.execute("""CREATE TEMP TABLE set_transition (from_state text, type text, cond text, to_state text,
                    frs text[], tos text[], acts text[]) ON COMMIT DROP""")
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO set_transition VALUES (%s, %s, %s, %s, %s, %s, %s)", common_transitions(policy)
        )
    rows = conn.execute(
        f"""
        SELECT x.i, t.to_state, t.frs, t.tos, t.acts, {NEXT_FIELDS_SQL}
          FROM unnest(%s::int[], %s::text[], %s::int[], %s::int[], %s::text[], %s::text[],
                      %s::text[], %s::int[], %s::text[], %s::text[])
               AS x(i, state, qa, qr, grade, disp, type, quantity, egrade, disposition)
         CROSS JOIN LATERAL (SELECT x.state, x.qa, x.qr, x.grade, x.disp) AS w(state, qa, qr, grade, disp)
         CROSS JOIN LATERAL (SELECT x.type, x.quantity, x.egrade, x.disposition)
               AS e(type, quantity, grade, disposition)
          LEFT JOIN set_transition t
                 ON t.from_state = w.state AND t.type = e.type AND t.cond = ({CONDITION_SQL})
         ORDER BY x.i""",
        [
            list(range(len(inputs))),
            [str(ln.state) for ln, _ in inputs],
            [ln.quantity_announced for ln, _ in inputs],
            [ln.quantity_received for ln, _ in inputs],
            [ln.grade for ln, _ in inputs],
            [ln.disposition for ln, _ in inputs],
            [str(ev.type) for _, ev in inputs],
            [ev.quantity for _, ev in inputs],
            [ev.grade for _, ev in inputs],
            [ev.disposition for _, ev in inputs],
        ],
    ).fetchall()
    conn.rollback()
    return rows


def test_the_transition_table_and_the_rules_agree_on_every_input(pg_server):
    inputs = list(_inputs())
    common = 0
    with db.connect(pg_server) as conn:
        for policy in _policies():
            for (line, event), (_i, to, frs, tos, acts, qr, grade, disp) in zip(
                inputs, _table_answers(conn, policy, inputs), strict=True
            ):
                out = lifecycle.apply_event(line, event, policy)
                case = f"{line} + {event.type} {event.quantity or event.grade or event.disposition or ''}"
                if out.hold is not None or out.ignored or out.raised or out.recount is not None:
                    assert to is None, f"the set path would write what the rules do not: {case} -> {out}"
                    continue
                assert to is not None, f"no row for a common transition: {case} -> {out}"
                assert to == out.line.state, case
                assert list(zip(frs, tos, strict=True)) == [(str(f), str(t)) for f, t in out.transitions], (
                    case
                )
                assert acts == [str(a) for a in out.actions], case
                assert (qr, grade, disp) == (
                    out.line.quantity_received,
                    out.line.grade,
                    out.line.disposition,
                ), case
                common += 1
    assert common > 1000 and len(inputs) >= 3600, (common, len(inputs))


def test_the_table_holds_no_row_for_what_needs_the_per_event_path():
    """No row holds, ignores or recounts: a hold's or an exception's event never has a table row (checked
    above on every input); here, the table's keys are unique and name only real states and types."""
    for policy in _policies():
        rows = common_transitions(policy)
        keys = [r[:3] for r in rows]
        assert len(keys) == len(set(keys))
        assert {r[0] for r in rows} <= {s.value for s in LineState}
        assert {r[1] for r in rows} == {t.value for t in EventType}
