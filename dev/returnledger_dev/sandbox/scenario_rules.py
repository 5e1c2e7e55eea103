"""What a scenario must satisfy beyond its schema (unique ids, known returns and lines, redeliveries
that really are redeliveries), and every problem told in the words of a scenario's author: the JSON
path of the first problem, then what is wrong with it."""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING

from pydantic import ValidationError

from returnledger.models import Disposition, EventType, Grade

if TYPE_CHECKING:
    from returnledger_dev.sandbox.scenario import Scenario

DUPLICATE_CREDIT_NOTE_MODES = ("same_note", "reject")
_UNION_TAGS = frozenset(EventType) | {"add_reason_mapping", "add_sku", "resolve_over_receipt"}


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message names the JSON path and the problem."""


def _path(loc: tuple) -> str:
    out = ""
    prev_index = False
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            prev_index = True
            continue
        if prev_index and part in _UNION_TAGS:  # pydantic puts the union tag into the location
            prev_index = False
            continue
        prev_index = False
        if part in ("[key]", "[keys]"):  # pydantic's marker for a dict key
            continue
        out += f".{part}" if out else str(part)
    return out or "(root)"


def describe(err: dict) -> tuple[str, str]:
    """(path, problem) for one pydantic error, in the words a scenario author uses."""
    loc, kind, value = tuple(err["loc"]), err["type"], err.get("input")
    path = _path(loc)
    field = next(
        (
            p
            for p in reversed(loc)
            if isinstance(p, str) and p not in _UNION_TAGS and p not in ("[key]", "[keys]")
        ),
        "",
    )
    if kind == "missing":
        return path, "missing key"
    if kind == "extra_forbidden":
        return path, "unknown key"
    if kind in ("union_tag_not_found",):
        tag = "type" if "events" in loc else "action"
        return f"{path}.{tag}", "missing key"
    if kind == "union_tag_invalid":
        tag = "type" if "events" in loc else "action"
        return (
            f"{path}.{tag}",
            f"unknown {tag} {err['ctx']['tag']!r} (expected one of {err['ctx']['expected_tags']})",
        )
    if kind == "timezone_aware":
        return path, f"no time zone ({value!r}); write UTC times with a trailing Z"
    if kind.startswith("datetime") or kind.startswith("date_") or kind == "date_type":
        return path, f"not an ISO-8601 date ({value!r})"
    if kind == "enum" and (field == "disposition" or loc[:2] == ("policy", "credit")):
        return path, f"unknown disposition {value!r} (expected one of {', '.join(Disposition)})"
    if kind == "enum" and (field == "grade" or "sellable_grades" in loc):
        return path, f"unknown grade {value!r} (expected one of {', '.join(Grade)})"
    if field == "duplicate_credit_note":
        return path, (
            f"unknown value {value!r} (expected one of "
            f"{', '.join(repr(m) for m in DUPLICATE_CREDIT_NOTE_MODES)})"
        )
    if kind == "value_error" and field == "format":
        return path, str(err["ctx"]["error"])
    return path, f"{err['msg']} ({value!r})" if not isinstance(value, (dict, list)) else err["msg"]


def raise_first(exc: ValidationError) -> None:
    errors = exc.errors(include_url=False)
    # a wrong format tag explains every other error: report it first
    errors.sort(key=lambda e: tuple(e["loc"]) != ("format",))
    path, problem = describe(errors[0])
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    raise ScenarioError(f"{path}: {problem}{more}") from None


def _duplicates(items, key: str, where: str, what: str = "id") -> None:
    keys = [item.__dict__[key] for item in items]  # __dict__: no attribute machinery per item
    if len(set(keys)) == len(keys):
        return
    seen: set = set()
    for i, k in enumerate(keys):
        if k in seen:
            raise ScenarioError(f"{where}[{i}].{key}: duplicate {what} {k!r}")
        seen.add(k)


_ABSENT = object()


def _check_redeliveries(s: Scenario) -> None:
    """An event id listed more than once in ``rebound.events`` is ReBound redelivering the event
    (at-least-once delivery): every later listing must have the same body except ``delivered_at``,
    and a ``delivered_at`` later than the listing of that id before it (in file order)."""
    events = s.rebound.events
    ids = [e.__dict__["event_id"] for e in events]  # __dict__: no attribute machinery per item
    if len(set(ids)) == len(ids):
        return
    raw_events = s.raw["rebound"]["events"]
    first: dict[str, int] = {}  # event id -> index of its first listing
    prev: dict[str, int] = {}  # event id -> index of its latest listing so far
    for i, eid in enumerate(ids):
        j = first.get(eid)
        if j is None:
            first[eid] = prev[eid] = i
            continue
        a, b = raw_events[j], raw_events[i]
        differ = sorted(
            k for k in a.keys() | b.keys() if k != "delivered_at" and a.get(k, _ABSENT) != b.get(k, _ABSENT)
        )
        if differ:
            raise ScenarioError(
                f"rebound.events[{i}].event_id: duplicate id {eid!r} with a different body than "
                f"rebound.events[{j}] (differs in {', '.join(differ)}); an event may be listed again only as "
                "a redelivery: the same body with a later delivered_at"
            )
        p = prev[eid]
        before = events[p].delivery_time
        later = events[i].__dict__["delivered_at"]
        if later is None or later <= before:
            got = "no delivered_at" if later is None else f"delivered_at {later.isoformat()}"
            raise ScenarioError(
                f"rebound.events[{i}].delivered_at: redelivery of event {eid!r} must be delivered later than "
                f"rebound.events[{p}] ({before.isoformat()}), got {got}"
            )
        prev[eid] = i


def _check_closes(s: Scenario) -> None:
    """Each close runs on a scenario day after its month ended, months in order and closed once."""
    previous = None
    for i, c in enumerate(s.run.closes or []):
        y, m = map(int, c.period.split("-"))
        month_end = date(y + (m == 12), m % 12 + 1, 1)
        where = f"run.closes[{i}]"
        if not s.run.from_ <= c.on <= s.run.to:
            raise ScenarioError(f"{where}.on: {c.on} is not a day of the run ({s.run.from_}..{s.run.to})")
        if c.on < month_end:
            raise ScenarioError(f"{where}.on: {c.period} cannot be closed on {c.on}, before the month ended")
        if previous is not None and (c.period <= previous[0] or c.on < previous[1]):
            raise ScenarioError(
                f"{where}: closes must be in order of period and day, each period once "
                f"({c.period} on {c.on} after {previous[0]} on {previous[1]})"
            )
        previous = (c.period, c.on)


def check_consistency(s: Scenario) -> None:
    """The consistency rules that a schema cannot state (uniqueness, references, times)."""
    _duplicates(s.catalog, "sku", "catalog")
    _duplicates(s.reason_codes, "rebound_reason", "reason_codes", "mapping")
    _duplicates(s.rebound.returns, "return_id", "rebound.returns")
    _check_redeliveries(s)
    _duplicates(s.amazon.returns, "amazon_return_id", "amazon.returns")
    if s.run.to < s.run.from_:
        raise ScenarioError(f"run.to: before run.from ({s.run.to} < {s.run.from_})")
    _check_closes(s)
    lines: dict[str, set[int]] = {}
    for i, r in enumerate(s.rebound.returns):
        numbers = [ln.line for ln in r.lines]
        if len(set(numbers)) != len(numbers):
            dup = next(n for n in numbers if numbers.count(n) > 1)
            raise ScenarioError(f"rebound.returns[{i}].lines: duplicate line {dup}")
        lines[r.return_id] = set(numbers)
    for i, e in enumerate(s.rebound.events):
        fields = e.__dict__
        known = lines.get(fields["return_id"])
        if known is None:
            raise ScenarioError(
                f"rebound.events[{i}].return_id: unknown return {e.return_id!r} "
                "(events about unknown returns belong in rebound.invalid_events)"
            )
        line = fields.get("line")
        if line is not None and line not in known:
            raise ScenarioError(f"rebound.events[{i}].line: return {e.return_id!r} has no line {line}")
    for i, op in enumerate(s.operations):
        if op.action != "resolve_over_receipt":
            continue
        known = lines.get(op.return_id)
        if known is None or op.line not in known:
            raise ScenarioError(
                f"operations[{i}]: resolve_over_receipt names line {op.line} of return {op.return_id!r}, "
                "which rebound.returns does not have"
            )
        if not s.run.from_ <= op.on <= s.run.to:
            raise ScenarioError(
                f"operations[{i}].on: {op.on} is not a day of the run ({s.run.from_}..{s.run.to})"
            )
