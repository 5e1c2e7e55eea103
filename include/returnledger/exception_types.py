"""The exception-type registry: what each exception type is about, what it holds, what releases it, what
resolving or dismissing it sends back through the sync, which actions people have on it (the console and
the CLI offer the same ones) and which extra parts its page shows. People's data (owner team, SLA days,
what to do) stays in ``include/reference/owners.yaml``; a test checks both name the same types.

Everything else reads this table instead of naming types (``ExceptionType`` only lists the codes, and
``KINDS`` is keyed by it): the sync's holds and releases (``ledger.holds``, ``ledger.apply``), screening's
quarantine, the actions
(``exception_queue.actions``), the queue's detail, the console page and the CLI, the database's
``ledger.exception_type`` table (seeded by ``store.migrate``) and the operating guide's type table
(``render_guide_table``).

API (all read the registry when called, so a test may add a throwaway type to ``KINDS``):

- ``KINDS``: code -> ``ExceptionKind``; ``kind(code)``; ``is_known(code)``; ``all_codes()``.
- ``holding_types()``: types whose open exception holds its line's events (and the line's reconciliation).
- ``holds(code)``: True when the type's exceptions keep events waiting (any scope).
- ``blocking_types(scope)``: types that keep the held events of their line (``Holds.LINE``) or return
  (``Holds.RETURN``) waiting while open; ``replay_only_types()``: types whose held events go on only when
  sent back through screening, never by ``apply``'s release; ``released_by(release)``: types with that rule.
- ``offering(action)``: types on which ``action`` (one of ``ACTIONS``) may be taken.
- ``screening_outcome(code)``: "refuse" or "hold" for a screening check raising ``code``; ValueError for
  a type whose held event the same run would apply (the "silent trap" of issue 23).
  ``screening.suite.build_checks`` calls it for every check, so such a rule cannot be built.
- ``registry_problems()``: what is inconsistent (e.g. a holding type nothing releases).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Subject(StrEnum):
    """What one exception is about (its ``subject_key``)."""

    LINE = "line"  # RID|LINE
    RETURN = "return"  # order:RID
    EVENT = "event id"  # event:<event id>
    RAW_EVENT = "raw event"  # raw:<raw_id>
    AMAZON_ROW = "Amazon row"  # a reconciliation row key or Amazon return id
    FEED = "feed"  # the sync itself: submission:, held:, sync:, uncredited:, order-fetch:


class Holds(StrEnum):
    """What waits while the exception is open."""

    NOTHING = "nothing"
    LINE = "the line's events"
    RETURN = "the return's events"
    EVENT = "the event id's line"


class Release(StrEnum):
    """What lets held events go on."""

    NOTHING_HELD = "-"
    CLOSE = "a person resolves or dismisses it; the next sync applies the held events"
    REFERENCE_DATA = "the reference data now covers the line (next sync), or a person closes it"
    EARLIER_EVENT = "the missing earlier event arrives (next sync)"
    PICK = "a person picks the right body (pick); the next sync screens it again"
    ORDER_PASSES = "ReBound's order passes on a later fetch, or a person closes it (events screened again)"
    ORDER_READ = "ReBound answers for the order, or a person closes it (events screened again)"


#: releases under which the line's (return's) held events keep waiting while the exception is open
_BLOCKS_WHILE_OPEN = frozenset({Release.CLOSE, Release.REFERENCE_DATA, Release.ORDER_PASSES})
#: releases whose held events go on only when sent back through screening (replay), never by apply
_REPLAY_ONLY = frozenset({Release.PICK, Release.ORDER_PASSES, Release.ORDER_READ})


class Replay(StrEnum):
    """What closing the exception sends back through the sync (like a new delivery)."""

    NONE = "-"
    RAW_EVENT = "its raw event"
    HELD_EVENTS = "its held events"


#: the actions people take on an exception: name -> what it does. The console and the CLI offer each one
#: (CLI ``returnledger exceptions <name>``; console form posting to ``/exceptions/{id}/<CONSOLE_PATHS>``)
ACTIONS = {
    "resolve": "mark resolved: you fixed the cause",
    "dismiss": "dismiss: nothing to fix",
    "retry": "resubmit the same credit note on the next sync run",
    "map": "add the missing reason mapping and resolve",
    "sku": "add the SKU to the catalog and resolve",
    "credit": "over-receipt: choose the units to credit (0 closes the line, nothing owed)",
    "pick": "keep one stored body of the event id, supersede the others",
}
#: the console route of each action (``POST /exceptions/{id}/<path>``)
CONSOLE_PATHS = {a: a for a in ACTIONS} | {"map": "mapping", "credit": "credit-quantity"}

#: parts every exception page shows when they exist (``exception_queue.queries.exception_detail``)
COMMON_SECTIONS = ("return_order", "line", "history", "submissions", "held_events", "raw_events",
                   "amazon_return", "audit")  # fmt: skip
#: parts only some types show: the Amazon send log, every body of the event id, the rejected orders
EXTRA_SECTIONS = ("send_log", "event_bodies", "rejected_return_orders")


@dataclass(frozen=True)
class ExceptionKind:
    """One exception type. ``hold_key``: the subject of the exception a held event waits on, formatted with
    ``return_id``, ``line`` and ``event_id`` (None: the type holds nothing). ``released_when_sql``: for
    ``Release.REFERENCE_DATA``, the condition over the held line ``l`` (ledger.return_line) under which the
    sync resolves the exception itself."""

    code: str
    subject: Subject
    summary: str  # in plain words: the console's glossary and the operating guide show it
    holds: Holds = Holds.NOTHING
    released_by: Release = Release.NOTHING_HELD
    hold_key: str | None = None
    released_when_sql: str | None = None
    on_resolve: Replay = Replay.NONE
    on_dismiss: Replay = Replay.NONE
    actions: tuple[str, ...] = ("resolve", "dismiss")
    sections: tuple[str, ...] = ()  # of EXTRA_SECTIONS; COMMON_SECTIONS are always shown


class ExceptionType(StrEnum):
    """Exception types: one member per entry of ``KINDS`` below, which says what each one does (written out
    so that type checkers see the members; ``KINDS`` is keyed by them and a test checks the two agree).
    ``returnledger.models`` re-exports it."""

    UNMAPPED_REASON_CODE = "UNMAPPED_REASON_CODE"
    SKU_MISMATCH = "SKU_MISMATCH"
    INVALID_EVENT = "INVALID_EVENT"
    OUT_OF_SEQUENCE = "OUT_OF_SEQUENCE"
    QUANTITY_MISMATCH = "QUANTITY_MISMATCH"
    AMAZON_REJECTED = "AMAZON_REJECTED"
    CREDIT_MISSING = "CREDIT_MISSING"
    DARK_RETURN = "DARK_RETURN"
    CREDIT_MISMATCH = "CREDIT_MISMATCH"
    SYNC_STALLED = "SYNC_STALLED"
    EVENT_CONFLICT = "EVENT_CONFLICT"
    INVALID_RETURN_ORDER = "INVALID_RETURN_ORDER"


_LINE_KEY = "{return_id}|{line}"
KINDS: dict[str, ExceptionKind] = {
    k.code: k
    for k in (
        ExceptionKind(
            ExceptionType.UNMAPPED_REASON_CODE,
            Subject.LINE,
            "ReBound's return reason has no matching Amazon reason yet",
            Holds.LINE,
            Release.REFERENCE_DATA,
            _LINE_KEY,
            released_when_sql="EXISTS (SELECT 1 FROM ledger.reason_mapping m"
            " WHERE m.rebound_reason = l.reason AND m.active)",
            actions=("map", "resolve", "dismiss"),
        ),
        ExceptionKind(
            ExceptionType.SKU_MISMATCH,
            Subject.LINE,
            "the product (SKU) is not in our catalog",
            Holds.LINE,
            Release.REFERENCE_DATA,
            _LINE_KEY,
            released_when_sql="EXISTS (SELECT 1 FROM ledger.sku s WHERE s.sku = l.sku AND s.asin <> '')",
            actions=("sku", "resolve", "dismiss"),
        ),
        ExceptionKind(
            ExceptionType.INVALID_EVENT,
            Subject.RAW_EVENT,
            "ReBound sent an event the ledger cannot use",
            on_resolve=Replay.RAW_EVENT,
        ),
        ExceptionKind(
            ExceptionType.OUT_OF_SEQUENCE,
            Subject.LINE,
            "an event arrived before an earlier step of the same line",
            Holds.LINE,
            Release.EARLIER_EVENT,
            _LINE_KEY,
        ),
        ExceptionKind(
            ExceptionType.QUANTITY_MISMATCH,
            Subject.LINE,
            "the units received differ from the units announced",
            actions=("credit", "resolve", "dismiss"),
        ),
        ExceptionKind(
            ExceptionType.AMAZON_REJECTED,
            Subject.LINE,
            "Amazon refused the credit note or the stock update",
            actions=("retry", "resolve", "dismiss"),
            sections=("send_log",),
        ),
        ExceptionKind(
            ExceptionType.CREDIT_MISSING,
            Subject.AMAZON_ROW,
            "Amazon shows no credit for a return that is owed one",
            sections=("send_log",),
        ),
        ExceptionKind(
            ExceptionType.DARK_RETURN,
            Subject.AMAZON_ROW,
            "Amazon has a return that ReBound never told us about (prepaid label)",
        ),
        ExceptionKind(
            ExceptionType.CREDIT_MISMATCH,
            Subject.AMAZON_ROW,
            "Amazon's amount differs from the credit we sent",
            sections=("send_log",),
        ),
        ExceptionKind(
            ExceptionType.SYNC_STALLED,
            Subject.FEED,
            "something stopped moving (sync run or Amazon submission)",
            Holds.RETURN,
            Release.ORDER_READ,
            "order-fetch:{return_id}",
            on_resolve=Replay.HELD_EVENTS,
            on_dismiss=Replay.HELD_EVENTS,
        ),
        ExceptionKind(
            ExceptionType.EVENT_CONFLICT,
            Subject.EVENT,
            "the same ReBound event arrived twice with different contents",
            Holds.EVENT,
            Release.PICK,
            "event:{event_id}",
            actions=("pick", "resolve"),  # resolve must name the body ("keep raw <raw_id>"); no dismiss
            sections=("event_bodies",),
        ),
        ExceptionKind(
            ExceptionType.INVALID_RETURN_ORDER,
            Subject.RETURN,
            "ReBound's return order fails its own checks",
            Holds.RETURN,
            Release.ORDER_PASSES,
            "order:{return_id}",
            on_resolve=Replay.HELD_EVENTS,
            on_dismiss=Replay.HELD_EVENTS,
            sections=("rejected_return_orders",),
        ),
    )
}


def kind(code: str) -> ExceptionKind:
    try:
        return KINDS[str(code)]
    except KeyError:
        raise ValueError(f"unknown exception type {code!r}") from None


def is_known(code: str | None) -> bool:
    return code is not None and str(code) in KINDS


def all_codes() -> list[str]:
    return list(KINDS)


def _where(pred) -> frozenset[str]:
    return frozenset(c for c, k in KINDS.items() if pred(k))


def holds(code: str) -> bool:
    """Whether exceptions of this type keep events waiting."""
    k = kind(code)
    return k.holds is not Holds.NOTHING and k.released_by is not Release.NOTHING_HELD


def holding_types() -> frozenset[str]:
    """Types whose open exception holds its line's events (the line's reconciliation waits too)."""
    return _where(lambda k: k.holds is Holds.LINE)


def blocking_types(scope: Holds) -> frozenset[str]:
    """Types whose open exception keeps the held events of its line (return) waiting."""
    return _where(lambda k: k.holds is scope and k.released_by in _BLOCKS_WHILE_OPEN)


def replay_only_types() -> frozenset[str]:
    """Types whose held events go on only when sent back through screening, never by apply's release."""
    return _where(lambda k: k.released_by in _REPLAY_ONLY)


def released_by(release: Release) -> frozenset[str]:
    return _where(lambda k: k.released_by is release)


def screening_outcome(code: str) -> str:
    """What screening does with an event that fails a check raising ``code``: ``"refuse"`` (a raw-event
    type that holds nothing: the event is INVALID) or ``"hold"`` (the event waits on the exception).
    Any other type is refused with ValueError: its held event would be applied by the same run (a type
    that holds must keep its line or return waiting while open, or release only by replay)."""
    k = kind(code)
    if k.subject is Subject.RAW_EVENT and k.holds is Holds.NOTHING:
        return "refuse"
    if code in blocking_types(Holds.LINE) | blocking_types(Holds.RETURN) | replay_only_types():
        return "hold"
    raise ValueError(
        f"{code} cannot be raised by a screening check: it neither refuses the event (a raw-event type that"
        " holds nothing) nor keeps it waiting until released (Release.CLOSE, REFERENCE_DATA, PICK,"
        " ORDER_PASSES, ORDER_READ); see returnledger.exception_types"
    )


def offering(action: str) -> frozenset[str]:
    """Types on which people may take ``action``."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    return _where(lambda k: action in k.actions)


def sql_in(codes) -> str:
    """Codes as an SQL list literal, sorted (``('A', 'B')``); ``(NULL)`` when empty."""
    codes = sorted(str(c) for c in codes)
    return "(" + ", ".join(f"'{c}'" for c in codes) + ")" if codes else "(NULL)"


def registry_problems() -> list[str]:
    """What is inconsistent in the registry (empty: all is well)."""
    out = []
    for c, k in KINDS.items():
        if c != k.code or not c.replace("_", "").isalnum() or not c.isupper():
            out.append(f"{c}: the key must be the code, in upper case")
        if (k.holds is Holds.NOTHING) != (k.released_by is Release.NOTHING_HELD):
            out.append(f"{c}: holds {k.holds.name} but released by {k.released_by.name}")
        if (k.holds is Holds.NOTHING) != (k.hold_key is None):
            out.append(f"{c}: a hold_key is needed exactly when the type holds")
        if (k.released_by is Release.REFERENCE_DATA) != (k.released_when_sql is not None):
            out.append(f"{c}: released_when_sql goes with Release.REFERENCE_DATA")
        if k.holds is not Holds.NOTHING and not {"resolve", "pick"} & set(k.actions):
            out.append(f"{c}: holds, yet no action closes it")
        out += [f"{c}: unknown action {a!r}" for a in k.actions if a not in ACTIONS]
        out += [f"{c}: unknown section {s!r}" for s in k.sections if s not in EXTRA_SECTIONS]
    return out


#: the operating guide's generated type table sits between these lines (docs/operating-guide.md)
GUIDE_BEGIN = "<!-- exception-types: generated from returnledger.exception_types and owners.yaml -->"
GUIDE_END = "<!-- /exception-types -->"


def render_guide_table(owners) -> str:
    """The operating guide's type table from the registry and ``owners`` (type -> an object with ``owner``
    and ``sla_days``: ``reference.owners.default_owners()``). ``python -m returnledger_dev.exception_guide``
    writes it into docs/operating-guide.md; a test checks the guide holds exactly this."""
    cols = ("exception", "in plain words", "about", "owner", "SLA", "what waits", "what lets it go on",
            "resolve / dismiss send back", "actions (console and CLI)")  # fmt: skip
    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for c, k in KINDS.items():
        o = owners[c]
        acts = ", ".join(f"`{a}`" for a in k.actions)
        rows.append(
            f"| **{c}** | {k.summary} | {k.subject} | {o.owner} | {o.sla_days} day(s) | {k.holds} |"
            f" {k.released_by} | {k.on_resolve} / {k.on_dismiss} | {acts} |"
        )
    return "\n".join([GUIDE_BEGIN, *rows, GUIDE_END])
