"""Properties of the lifecycle that must hold for every event sequence ReBound can deliver
(at least once, out of order, redelivered under the same or another event id)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from returnledger.ledger.lifecycle import LineEvent, LineView, apply_event, replay
from returnledger.models import ActionKind, Disposition, EventType, Grade, LineState
from returnledger.reference.policy import Policy

T0 = datetime(2026, 10, 1, tzinfo=UTC)
STORY = [
    EventType.RETURN_CREATED,
    EventType.IN_TRANSIT,
    EventType.RECEIVED,
    EventType.GRADED,
    EventType.DISPOSITIONED,
]
GRADES = [g.value for g in Grade]
DISPOSITIONS = [d.value for d in Disposition]
#: every state a line can be in when events reach the lifecycle
STATES = list(LineState)

policies = st.builds(
    Policy,
    sellable_grades=st.frozensets(st.sampled_from(GRADES), min_size=1),
    credit=st.fixed_dictionaries(
        {d: st.sampled_from([None, Decimal("0"), Decimal("0.5"), Decimal("1")]) for d in DISPOSITIONS}
    ),
    credit_window_days=st.integers(1, 30),
)


@st.composite
def lines(draw) -> LineView:
    state = draw(st.sampled_from(STATES))
    rank = STATES.index(state)
    announced = draw(st.integers(1, 4))
    received = draw(st.integers(0, 5)) if rank >= STATES.index(LineState.RECEIVED) else None
    grade = draw(st.sampled_from(GRADES)) if rank >= STATES.index(LineState.GRADED) else None
    disposition = (
        draw(st.sampled_from(DISPOSITIONS)) if rank >= STATES.index(LineState.DISPOSITIONED) else None
    )
    return LineView(state, announced, received, grade, disposition)


@st.composite
def any_events(draw) -> list[LineEvent]:
    """Arbitrary event sequences: any types, values, times, and duplicate ids."""
    n = draw(st.integers(0, 12))
    ids = draw(st.lists(st.sampled_from([f"e{i}" for i in range(8)]), min_size=n, max_size=n))
    out = []
    for event_id in ids:
        type_ = draw(st.sampled_from(STORY))
        out.append(
            LineEvent(
                event_id=event_id,
                type=type_,
                occurred_at=T0 + timedelta(hours=draw(st.integers(0, 48))),
                quantity=draw(st.integers(1, 5)) if type_ == EventType.RECEIVED else None,
                grade=draw(st.sampled_from(GRADES)) if type_ == EventType.GRADED else None,
                disposition=draw(st.sampled_from(DISPOSITIONS)) if type_ == EventType.DISPOSITIONED else None,
            )
        )
    return out


@st.composite
def stories(draw) -> tuple[LineView, list[LineEvent]]:
    """One line's true story (a prefix of the lifecycle), each event possibly redelivered,
    under the same event id or another one, in lifecycle order."""
    announced = draw(st.integers(1, 3))
    received = draw(st.integers(1, announced + 1))
    grade = draw(st.sampled_from(GRADES))
    disposition = draw(st.sampled_from(DISPOSITIONS))
    steps = draw(st.integers(0, len(STORY)))
    events = []
    for i, type_ in enumerate(STORY[:steps]):
        base = dict(
            type=type_,
            occurred_at=T0 + timedelta(days=i, hours=draw(st.integers(0, 23))),
            quantity=received if type_ == EventType.RECEIVED else None,
            grade=grade if type_ == EventType.GRADED else None,
            disposition=disposition if type_ == EventType.DISPOSITIONED else None,
        )
        events.append(LineEvent(event_id=f"ev-{i}", **base))
        for copy in range(draw(st.integers(0, 2))):
            same_id = draw(st.booleans())
            events.append(LineEvent(event_id=f"ev-{i}" if same_id else f"ev-{i}-re{copy}", **base))
    return LineView(LineState.ANNOUNCED, announced), events


def apply_all(line: LineView, events, policy):
    """Apply events one by one as delivered; a held event is simply skipped."""
    outcomes = []
    for e in events:
        out = apply_event(line, e, policy)
        outcomes.append(out)
        line = out.line
    return line, outcomes


@given(lines(), st.integers(1, 6), policies)
def test_received_alone_never_yields_an_amazon_action(line, quantity, policy):
    out = apply_event(line, LineEvent("r", EventType.RECEIVED, T0, quantity=quantity), policy)
    assert out.actions == ()


@settings(max_examples=300)
@given(any_events(), policies)
def test_at_most_one_credit_note_and_one_restock_per_line_whatever_the_sequence(events, policy):
    start = LineView(LineState.ANNOUNCED, 2)
    for outcomes in (apply_all(start, events, policy)[1], [o for _, o in replay(start, events, policy)[1]]):
        actions = [a for o in outcomes for a in o.actions]
        assert actions.count(ActionKind.CREDIT_NOTE) <= 1
        assert actions.count(ActionKind.INVENTORY) <= 1


@settings(max_examples=300)
@given(lines(), any_events(), policies)
def test_actions_only_for_what_the_warehouse_confirmed(line, events, policy):
    """INVENTORY only for a received, sellable-grade RESTOCKED line; CREDIT_NOTE only after a
    disposition the policy credits, never for an inspection rejection."""
    for out in apply_all(line, events, policy)[1]:
        after = out.line
        if out.actions:  # closed at once when no credit is owed, but a restock still goes out
            assert after.state in (LineState.DISPOSITIONED, LineState.CLOSED) and after.disposition
            assert after.quantity_received and after.quantity_received > 0
        if ActionKind.INVENTORY in out.actions:
            assert after.disposition == Disposition.RESTOCKED and after.grade in policy.sellable_grades
        if ActionKind.CREDIT_NOTE in out.actions:
            fraction = policy.credit_fraction(after.disposition)
            assert after.disposition != Disposition.REJECTED and fraction is not None and fraction > 0


@settings(max_examples=300)
@given(stories(), policies, st.randoms(use_true_random=False))
def test_any_delivery_order_reaches_the_true_state_or_holds(story, policy, rnd):
    line, ordered = story
    expected, _ = apply_all(line, ordered, policy)
    shuffled = list(ordered)
    rnd.shuffle(shuffled)
    final, outcomes = apply_all(line, shuffled, policy)
    assert final.state == expected.state or any(o.hold for o in outcomes)


@settings(max_examples=300)
@given(stories(), policies, st.randoms(use_true_random=False))
def test_replay_of_any_permutation_gives_the_ordered_result(story, policy, rnd):
    line, ordered = story
    expected, _ = apply_all(line, ordered, policy)
    shuffled = list(ordered)
    rnd.shuffle(shuffled)
    final, results = replay(line, shuffled, policy)
    assert final == expected
    assert not any(o.hold for _, o in results)


@settings(max_examples=300)
@given(stories(), policies, st.randoms(use_true_random=False), st.integers(1, 4))
def test_deliveries_spread_over_runs_converge_like_the_sync(story, policy, rnd, runs):
    """The sync replays held events plus each run's new ones; whatever the split and order,
    the line ends where the ordered story puts it, with at most one credit note."""
    line, ordered = story
    expected, _ = apply_all(line, ordered, policy)
    shuffled = list(ordered)
    rnd.shuffle(shuffled)
    cuts = sorted(rnd.randint(0, len(shuffled)) for _ in range(runs - 1))
    batches = [shuffled[a:b] for a, b in zip([0, *cuts], [*cuts, len(shuffled)], strict=True)]
    held: list[LineEvent] = []
    applied_ids: set[str] = set()
    credit_notes = 0
    for batch in batches:
        new = [e for e in batch if e.event_id not in applied_ids]  # the sync dedupes by event id
        line, results = replay(line, held + new, policy)
        held = [e for e, o in results if o.hold]
        applied_ids |= {e.event_id for e, o in results if not o.hold}
        credit_notes += sum(o.actions.count(ActionKind.CREDIT_NOTE) for _, o in results)
    assert line == expected and held == []
    assert credit_notes <= 1
