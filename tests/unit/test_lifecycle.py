"""The return-line lifecycle rules (ledger.lifecycle), one behaviour per test."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from returnledger.ledger.lifecycle import (
    LineEvent,
    LineView,
    apply_event,
    credit_unit_amount,
    on_credit_result,
    on_credit_submitted,
    replay,
)
from returnledger.models import ActionKind, Disposition, EventType, ExceptionType, LineState, ReconStatus
from returnledger.reference.policy import Policy

S = LineState
T0 = datetime(2026, 10, 5, 8, tzinfo=UTC)

POLICY = Policy(
    sellable_grades=frozenset({"A"}),
    credit={
        "RESTOCKED": Decimal("1"),
        "REFURBISH": Decimal("1"),
        "RECYCLE": Decimal("1"),
        "DESTROY": Decimal("1"),
        "RETURN_TO_SUPPLIER": Decimal("0.5"),
        "QUARANTINED": None,
        "REJECTED": Decimal("0"),
    },
    credit_window_days=7,
)


def ev(type_, hours=0, event_id=None, **kw) -> LineEvent:
    return LineEvent(
        event_id=event_id or f"ev-{type_}-{hours}",
        type=EventType(type_),
        occurred_at=T0 + timedelta(hours=hours),
        **kw,
    )


def line(state=S.ANNOUNCED, announced=2, **kw) -> LineView:
    return LineView(state=state, quantity_announced=announced, **kw)


def graded(grade="A", received=2, announced=2) -> LineView:
    return line(S.GRADED, announced, quantity_received=received, grade=grade)


def test_return_created_confirms_an_announced_line_and_changes_nothing_later():
    out = apply_event(line(), ev("RETURN_CREATED"), POLICY)
    assert out.line == line() and out.transitions == () and out.ignored is None and out.hold is None
    later = line(S.RECEIVED, quantity_received=2)
    out = apply_event(later, ev("RETURN_CREATED"), POLICY)
    assert out.line == later and out.transitions == () and out.ignored


def test_in_transit_moves_only_an_announced_line():
    out = apply_event(line(), ev("IN_TRANSIT"), POLICY)
    assert out.line.state == S.IN_TRANSIT and out.transitions == ((S.ANNOUNCED, S.IN_TRANSIT),)
    again = apply_event(out.line, ev("IN_TRANSIT", event_id="other"), POLICY)
    assert again.line == out.line and again.transitions == () and again.ignored


@pytest.mark.parametrize("start", [S.ANNOUNCED, S.IN_TRANSIT])
def test_received_records_the_quantity_and_never_earns_an_amazon_action(start):
    """Rule 1: the receipt starts the warehouse process only."""
    out = apply_event(line(start), ev("RECEIVED", quantity=2), POLICY)
    assert out.line.state == S.RECEIVED and out.line.quantity_received == 2
    assert out.transitions == ((start, S.RECEIVED),)
    assert out.actions == () and out.raised == () and out.hold is None


def test_received_short_raises_quantity_mismatch_and_still_moves_on():
    out = apply_event(line(S.IN_TRANSIT, announced=3), ev("RECEIVED", quantity=1), POLICY)
    assert out.line.state == S.RECEIVED and out.line.quantity_received == 1
    assert out.raised == ((ExceptionType.QUANTITY_MISMATCH, "received 1 of 3 announced"),)
    assert out.actions == ()


def test_received_more_than_announced_is_a_mismatch_too():
    out = apply_event(line(announced=1), ev("RECEIVED", quantity=2), POLICY)
    assert [t for t, _ in out.raised] == [ExceptionType.QUANTITY_MISMATCH]


@pytest.mark.parametrize(
    "state", [S.RECEIVED, S.GRADED, S.DISPOSITIONED, S.CREDIT_SUBMITTED, S.CLOSED, S.REJECTED]
)
def test_a_second_receipt_with_the_same_count_is_ignored(state):
    current = line(state, quantity_received=2, grade="A")
    out = apply_event(current, ev("RECEIVED", quantity=2, event_id="again"), POLICY)
    assert out.line == current and out.transitions == () and out.actions == () and out.raised == ()
    assert out.ignored and "same count" in out.ignored and out.recount is None


@pytest.mark.parametrize("state", [S.RECEIVED, S.GRADED])
@pytest.mark.parametrize(("announced", "first", "recount", "mismatch"), [(3, 1, 3, False), (3, 3, 1, True)])
def test_a_recount_before_the_disposition_stands_and_the_mismatch_follows_it(
    state, announced, first, recount, mismatch
):
    """Rule 10: the newest count is the line's; QUANTITY_MISMATCH only if it still differs."""
    current = line(state, announced, quantity_received=first, grade="A" if state == S.GRADED else None)
    out = apply_event(current, ev("RECEIVED", quantity=recount, event_id="recount"), POLICY)
    assert out.line.state == state and out.line.quantity_received == recount and out.actions == ()
    assert out.transitions == ((state, state),) and out.recount == (first, recount) and not out.ignored
    assert [t for t, _ in out.raised] == ([ExceptionType.QUANTITY_MISMATCH] if mismatch else [])


def test_the_disposition_credits_the_recounted_quantity_and_holds_a_recounted_over_receipt():
    recounted = apply_event(
        graded(received=1, announced=3), ev("RECEIVED", quantity=3, event_id="rc"), POLICY
    )
    out = apply_event(recounted.line, ev("DISPOSITIONED", disposition="REFURBISH"), POLICY)
    assert out.actions == (ActionKind.CREDIT_NOTE,) and out.line.quantity_received == 3
    over = apply_event(graded(received=3, announced=3), ev("RECEIVED", quantity=4, event_id="rc"), POLICY)
    held = apply_event(over.line, ev("DISPOSITIONED", disposition="REFURBISH"), POLICY)
    assert held.actions == () and held.line.state == S.DISPOSITIONED  # rule 8: the warehouse chooses


@pytest.mark.parametrize("state", [S.DISPOSITIONED, S.CREDIT_SUBMITTED, S.CLOSED, S.REJECTED])
def test_a_recount_after_the_disposition_changes_nothing_and_shows_both_counts(state):
    current = line(state, 3, quantity_received=3, grade="A", disposition="RESTOCKED")
    out = apply_event(current, ev("RECEIVED", quantity=1, event_id="recount"), POLICY)
    assert out.line == current and out.actions == () and out.recount == (3, 1)
    [(etype, detail)] = out.raised
    assert etype == ExceptionType.QUANTITY_MISMATCH and "recounted 1" in detail and "counted 3" in detail


@pytest.mark.parametrize("quantity", [0, -1, None])
def test_a_receipt_below_one_unit_is_a_programming_error(quantity):
    """Screening refuses it as INVALID_EVENT before the rules see it."""
    with pytest.raises(ValueError, match="at least 1"):
        apply_event(line(), ev("RECEIVED", quantity=quantity), POLICY)


def test_graded_after_receipt_and_regrade_while_graded():
    out = apply_event(line(S.RECEIVED, quantity_received=2), ev("GRADED", grade="B"), POLICY)
    assert out.line.state == S.GRADED and out.line.grade == "B"
    assert out.transitions == ((S.RECEIVED, S.GRADED),)
    regrade = apply_event(out.line, ev("GRADED", 1, grade="A"), POLICY)
    assert regrade.line.grade == "A" and regrade.transitions == ((S.GRADED, S.GRADED),)
    same = apply_event(regrade.line, ev("GRADED", 2, grade="A"), POLICY)
    assert same.line == regrade.line and same.ignored and same.transitions == ()


@pytest.mark.parametrize("state", [S.ANNOUNCED, S.IN_TRANSIT])
def test_graded_before_receipt_is_held_out_of_sequence(state):
    out = apply_event(line(state), ev("GRADED", grade="A"), POLICY)
    assert out.hold == ExceptionType.OUT_OF_SEQUENCE and out.line == line(state)
    assert out.transitions == () and out.actions == () and out.hold_detail


@pytest.mark.parametrize("state", [S.DISPOSITIONED, S.CREDIT_SUBMITTED, S.CLOSED, S.REJECTED])
def test_graded_after_disposition_is_ignored(state):
    current = line(state, quantity_received=2, grade="A", disposition="RESTOCKED")
    out = apply_event(current, ev("GRADED", grade="C"), POLICY)
    assert out.line == current and out.ignored and out.hold is None


def test_restocked_grade_a_earns_inventory_and_credit_note():
    """Rules 2 and 3: sellable restock -> inventory; policy credit > 0 -> credit note."""
    out = apply_event(graded("A"), ev("DISPOSITIONED", disposition="RESTOCKED"), POLICY)
    assert out.line.state == S.DISPOSITIONED and out.line.disposition == "RESTOCKED"
    assert set(out.actions) == {ActionKind.INVENTORY, ActionKind.CREDIT_NOTE}
    assert out.transitions == ((S.GRADED, S.DISPOSITIONED),)


@pytest.mark.parametrize("grade", ["B", "C", "D"])
def test_restocked_with_an_unsellable_grade_credits_but_does_not_restock(grade):
    out = apply_event(graded(grade), ev("DISPOSITIONED", disposition="RESTOCKED"), POLICY)
    assert out.actions == (ActionKind.CREDIT_NOTE,)


@pytest.mark.parametrize("disposition", ["REFURBISH", "RECYCLE", "DESTROY", "RETURN_TO_SUPPLIER"])
def test_other_credited_dispositions_credit_without_inventory_even_for_grade_a(disposition):
    out = apply_event(graded("A"), ev("DISPOSITIONED", disposition=disposition), POLICY)
    assert out.actions == (ActionKind.CREDIT_NOTE,) and out.line.state == S.DISPOSITIONED


def test_quarantined_disposition_is_held_by_policy_and_sends_nothing():
    out = apply_event(graded("A"), ev("DISPOSITIONED", disposition="QUARANTINED"), POLICY)
    assert out.line.state == S.DISPOSITIONED and out.actions == () and out.hold is None
    assert out.transitions == ((S.GRADED, S.DISPOSITIONED),)


def test_inspection_rejection_never_credits_and_ends_rejected():
    out = apply_event(graded("A"), ev("DISPOSITIONED", disposition="REJECTED"), POLICY)
    assert out.line.state == S.REJECTED and out.actions == ()
    assert out.transitions == ((S.GRADED, S.DISPOSITIONED), (S.DISPOSITIONED, S.REJECTED))


def test_inspection_rejection_never_credits_even_if_the_policy_table_says_so():
    generous = Policy(frozenset({"A"}), {**POLICY.credit, "REJECTED": Decimal("1")}, 7)
    out = apply_event(graded("A"), ev("DISPOSITIONED", disposition="REJECTED"), generous)
    assert out.actions == () and out.line.state == S.REJECTED


def test_policy_fraction_zero_closes_the_line_at_once():
    """Rule 4: closed when the policy says none is owed."""
    policy = Policy(frozenset({"A"}), {**POLICY.credit, "RECYCLE": Decimal("0")}, 7)
    out = apply_event(graded("B"), ev("DISPOSITIONED", disposition="RECYCLE"), policy)
    assert out.line.state == S.CLOSED and out.actions == ()
    assert out.transitions == ((S.GRADED, S.DISPOSITIONED), (S.DISPOSITIONED, S.CLOSED))


def test_nothing_received_means_nothing_owed_and_no_restock():
    out = apply_event(graded("A", received=0), ev("DISPOSITIONED", disposition="RESTOCKED"), POLICY)
    assert out.line.state == S.CLOSED and out.actions == ()


def test_a_disposition_the_policy_does_not_name_holds_rather_than_guessing_a_credit():
    partial = Policy(frozenset({"A"}), {"RESTOCKED": Decimal("1")}, 7)
    out = apply_event(graded("B"), ev("DISPOSITIONED", disposition="DESTROY"), partial)
    assert out.line.state == S.DISPOSITIONED and out.actions == ()


@pytest.mark.parametrize("state", [S.ANNOUNCED, S.IN_TRANSIT, S.RECEIVED])
def test_disposition_before_grading_is_held_out_of_sequence(state):
    current = line(state, quantity_received=2 if state == S.RECEIVED else None)
    out = apply_event(current, ev("DISPOSITIONED", disposition="RESTOCKED"), POLICY)
    assert out.hold == ExceptionType.OUT_OF_SEQUENCE and out.line == current and out.actions == ()


@pytest.mark.parametrize(
    "state", [S.DISPOSITIONED, S.CREDIT_SUBMITTED, S.CREDIT_ACCEPTED, S.CLOSED, S.REJECTED]
)
def test_a_second_disposition_is_ignored_and_never_credits_twice(state):
    current = line(state, quantity_received=2, grade="A", disposition="RESTOCKED")
    out = apply_event(current, ev("DISPOSITIONED", disposition="REFURBISH", event_id="second"), POLICY)
    assert out.line == current and out.actions == () and out.ignored


def test_quarantined_is_a_disposition_and_a_reconciliation_status_not_a_line_state():
    """No rule ever put a line in a QUARANTINED state: a held line keeps its state and its events wait."""
    assert "QUARANTINED" not in {s.value for s in S}
    assert "QUARANTINED" in {d.value for d in Disposition} | {r.value for r in ReconStatus}


def test_received_without_quantity_is_a_programming_error():
    with pytest.raises(ValueError):
        apply_event(line(), ev("RECEIVED"), POLICY)


def test_replay_orders_events_and_resolves_a_hold_when_the_receipt_arrives():
    """Rule 6: disposition and grade delivered a day before the receipt."""
    graded_ev = ev("GRADED", 30, grade="A")
    disp_ev = ev("DISPOSITIONED", 31, disposition="RESTOCKED")
    first, results = replay(line(S.IN_TRANSIT), [disp_ev, graded_ev], POLICY)
    assert first == line(S.IN_TRANSIT)
    assert [o.hold for _, o in results] == [ExceptionType.OUT_OF_SEQUENCE] * 2
    assert [e.type for e, _ in results] == [EventType.GRADED, EventType.DISPOSITIONED]

    received = ev("RECEIVED", 2, quantity=2)
    final, results = replay(first, [disp_ev, graded_ev, received], POLICY)
    assert final.state == S.DISPOSITIONED and final.grade == "A" and final.quantity_received == 2
    assert [e.type for e, _ in results] == [EventType.RECEIVED, EventType.GRADED, EventType.DISPOSITIONED]
    assert all(o.hold is None for _, o in results)
    assert set(results[-1][1].actions) == {ActionKind.INVENTORY, ActionKind.CREDIT_NOTE}


def test_replay_holds_everything_after_the_first_hold():
    events = [
        ev("GRADED", 1, grade="A"),
        ev("RECEIVED", 2, quantity=2),
        ev("DISPOSITIONED", 3, disposition="RESTOCKED"),
    ]
    final, results = replay(line(), events, POLICY)
    assert final == line()
    assert [o.hold for _, o in results] == [ExceptionType.OUT_OF_SEQUENCE] * 3
    assert "ev-GRADED-1" in results[1][1].hold_detail


def test_replay_breaks_timestamp_ties_by_lifecycle_order():
    events = [
        ev("DISPOSITIONED", 0, disposition="RESTOCKED"),
        ev("GRADED", 0, grade="A"),
        ev("RECEIVED", 0, quantity=2),
        ev("IN_TRANSIT", 0),
        ev("RETURN_CREATED", 0),
    ]
    final, results = replay(line(), events, POLICY)
    assert final.state == S.DISPOSITIONED
    assert [e.type for e, _ in results] == list(EventType)


def test_replay_applies_the_same_event_id_once():
    received = ev("RECEIVED", 1, quantity=1)
    final, results = replay(line(announced=1), [received, received], POLICY)
    assert final.quantity_received == 1
    assert results[0][1].transitions and results[1][1].ignored


def test_credit_submitted_then_success_closes_the_line():
    """Rule 4: closed only once Amazon accepted the credit note."""
    disp = line(S.DISPOSITIONED, quantity_received=2, grade="A", disposition="RESTOCKED")
    sub = on_credit_submitted(disp)
    assert sub.line.state == S.CREDIT_SUBMITTED and sub.transitions == (
        (S.DISPOSITIONED, S.CREDIT_SUBMITTED),
    )
    ok = on_credit_result(sub.line, accepted=True)
    assert ok.line.state == S.CLOSED
    assert ok.transitions == ((S.CREDIT_SUBMITTED, S.CREDIT_ACCEPTED), (S.CREDIT_ACCEPTED, S.CLOSED))
    assert ok.raised == ()


def test_credit_failure_rejects_the_line_and_raises_amazon_rejected():
    sub = line(S.CREDIT_SUBMITTED, quantity_received=1, grade="A", disposition="REFURBISH")
    out = on_credit_result(sub, accepted=False)
    assert out.line.state == S.REJECTED and out.transitions == ((S.CREDIT_SUBMITTED, S.REJECTED),)
    assert [t for t, _ in out.raised] == [ExceptionType.AMAZON_REJECTED]


def test_credit_result_for_an_unrecorded_submission_passes_through_it():
    disp = line(S.DISPOSITIONED, quantity_received=1, grade="A", disposition="REFURBISH")
    out = on_credit_result(disp, accepted=True)
    assert out.line.state == S.CLOSED and out.transitions[0] == (S.DISPOSITIONED, S.CREDIT_SUBMITTED)


def test_credit_callbacks_are_idempotent_and_refuse_impossible_states():
    closed = line(S.CLOSED, quantity_received=1, grade="A", disposition="RESTOCKED")
    assert on_credit_result(closed, accepted=True).ignored
    assert on_credit_submitted(closed).ignored
    assert on_credit_submitted(line(S.CREDIT_SUBMITTED)).ignored
    with pytest.raises(ValueError):
        on_credit_submitted(line(S.GRADED, quantity_received=1, grade="A"))
    with pytest.raises(ValueError):
        on_credit_result(line(S.RECEIVED, quantity_received=1), accepted=True)


@pytest.mark.parametrize(
    "cost,fraction,expected",
    [
        ("12.50", "1", "12.50"),
        ("9.99", "0.5", "5.00"),
        ("4.99", "0.5", "2.50"),
        ("0.01", "0.5", "0.01"),
        ("59.95", "0.3333", "19.98"),
        ("0", "1", "0.00"),
    ],
)
def test_credit_unit_amount_rounds_half_up_to_the_penny(cost, fraction, expected):
    assert credit_unit_amount(Decimal(cost), Decimal(fraction)) == Decimal(expected)


def test_policy_validates_fractions_and_reads_scenario_blocks():
    p = Policy.from_dict(
        {
            "sellable_grades": ["A"],
            "credit": {"RESTOCKED": 1.0, "QUARANTINED": None, "REJECTED": 0},
            "credit_window_days": 7,
        }
    )
    assert p.credit_fraction("RESTOCKED") == Decimal("1")
    assert p.credit_fraction("QUARANTINED") is None and p.credit_fraction("REJECTED") == 0
    with pytest.raises(ValueError):
        Policy(frozenset({"A"}), {"RESTOCKED": Decimal("1.5")}, 7)
    with pytest.raises(ValueError):
        Policy(frozenset({"A"}), {"RESTOCKED": Decimal("1")}, 0)
