"""Load a ``returns-scenario/1`` file (see docs/sandbox.md and the scenarios README).

A scenario is one period of both external systems. The loader validates it in
bulk (one pydantic pass over the whole document, then a few set-based checks)
so that a 100k-return month loads in seconds, and it names the exact JSON path
of the first problem so a hand-edited scenario is quick to fix.

Invalid events stay raw dicts: they exist to be invalid. The parsed JSON is
kept on the model (``Scenario.raw``) because the simulators serve events and
return orders exactly as written in the file.
"""
from __future__ import annotations

import gc
import json
from contextlib import contextmanager
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    field_validator,
)

from returnledger.models import Disposition, EventType, Grade

FORMAT = "returns-scenario/1"


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message names the JSON path and the problem."""


# --- JSON parsing ----------------------------------------------------------------

def _fast_loads():
    """orjson's or msgspec's decoder, whichever is installed (None: neither)."""
    try:
        import orjson

        return orjson.loads
    except ImportError:
        pass
    try:
        import msgspec

        return msgspec.json.decode
    except ImportError:
        return None


def _json_loads(data: bytes) -> Any:
    """Fastest JSON decoder available: orjson, else msgspec, else the standard library.

    orjson and msgspec refuse lone surrogate escapes such as ``"\\ud800"``, which the format
    allows in ``rebound.invalid_events``; a file they refuse is read again with ``json``
    (which reads them, and raises the error reported for a file that is not JSON)."""
    fast = _fast_loads()
    if fast is not None:
        try:
            return fast(data)
        except Exception:  # decoder-specific error types; json decides below
            pass
    return json.loads(data)


def load_scenario_dict(path: str | Path) -> dict:
    """The scenario as parsed JSON (no validation beyond being a JSON object)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read ({exc.strerror})") from exc
    try:
        raw = _json_loads(data)
    except Exception as exc:  # decoder-specific error types
        raise ScenarioError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise ScenarioError(f"(root): expected a JSON object, got {type(raw).__name__}")
    return raw


# --- the format ------------------------------------------------------------------

_STRICT = ConfigDict(extra="forbid")
UtcDatetime = AwareDatetime
Id = Annotated[str, Field(min_length=1)]
Money = Annotated[Decimal, Field(ge=0)]
# what the feed serves must already have the right JSON types: no "2" for 2, no "true" for true
LineNo = Annotated[int, Field(strict=True, ge=1)]


class Vendor(BaseModel):
    model_config = _STRICT
    party_id: Id
    warehouse_id: Id
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
    marketplace_id: Id


class Run(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: Annotated[date, Field(alias="from")]
    to: date
    close_period: Annotated[str, Field(pattern=r"^\d{4}-(0[1-9]|1[0-2])$")]


class Policy(BaseModel):
    model_config = _STRICT
    sellable_grades: list[Grade]
    #: fraction of unit cost credited per disposition; None = hold, 0 = none owed
    credit: dict[Disposition, Annotated[float, Field(ge=0)] | None]
    credit_window_days: Annotated[int, Field(ge=0)]


class CatalogItem(BaseModel):
    model_config = _STRICT
    sku: Id
    asin: Id
    unit_cost: Money
    available: Annotated[int, Field(ge=0)]


class ReasonMapping(BaseModel):
    model_config = _STRICT
    rebound_reason: Id
    amazon_reason: Id


class AmazonRefs(BaseModel):
    model_config = _STRICT
    returns_notice: Id
    rma_id: str | None = None
    vret: str | None = None


class ReturnLine(BaseModel):
    model_config = _STRICT
    line: LineNo
    sku: Id
    quantity: Annotated[int, Field(strict=True, gt=0)]
    reason: Id


class ReturnOrder(BaseModel):
    model_config = _STRICT
    return_id: Id
    order_reference: str | None = None
    created_at: UtcDatetime | None = None
    amazon_refs: AmazonRefs
    lines: Annotated[list[ReturnLine], Field(min_length=1)]


class _Event(BaseModel):
    model_config = _STRICT
    event_id: Id
    return_id: Id
    occurred_at: UtcDatetime
    delivered_at: UtcDatetime | None = None
    duplicate: Annotated[bool, Field(strict=True)] = False

    @property
    def delivery_time(self) -> datetime:
        """When the feed makes the event visible: ``delivered_at``, else ``occurred_at``."""
        return self.delivered_at or self.occurred_at


class ReturnCreatedEvent(_Event):
    type: Literal[EventType.RETURN_CREATED]


class InTransitEvent(_Event):
    type: Literal[EventType.IN_TRANSIT]


class ReceivedEvent(_Event):
    type: Literal[EventType.RECEIVED]
    line: LineNo
    quantity: Annotated[int, Field(strict=True, ge=0)]


class GradedEvent(_Event):
    type: Literal[EventType.GRADED]
    line: LineNo
    grade: Grade


class DispositionedEvent(_Event):
    type: Literal[EventType.DISPOSITIONED]
    line: LineNo
    disposition: Disposition


ScenarioEvent = Annotated[ReturnCreatedEvent | InTransitEvent | ReceivedEvent | GradedEvent | DispositionedEvent,
                          Field(discriminator="type")]


class InvalidEvent(BaseModel):
    """Only what the feed needs: when to deliver it. The rest is deliberately unchecked."""
    model_config = ConfigDict(extra="allow")
    delivered_at: UtcDatetime


class Rebound(BaseModel):
    model_config = _STRICT
    returns: list[ReturnOrder]
    events: list[ScenarioEvent]
    invalid_events: list[dict[str, Any]] = []


class AmazonReturn(BaseModel):
    model_config = _STRICT
    amazon_return_id: Id
    returns_notice: Id
    rma_id: str | None = None
    vret: str | None = None
    asin: str  # empty when the SKU is not in the catalog
    sku: Id
    quantity: Annotated[int, Field(gt=0)]
    label: Literal["REBOUND", "APRL"]
    returned_at: date
    charged_amount: Money | None = None


class CreditOutcomeError(BaseModel):
    model_config = ConfigDict(extra="allow")
    code: Id
    message: str = ""


class CreditOutcome(BaseModel):
    model_config = _STRICT
    returns_notice: Id
    status: Literal["Failure", "Processing"]
    error: CreditOutcomeError | None = None


DUPLICATE_CREDIT_NOTE_MODES = ("same_note", "reject")


class Amazon(BaseModel):
    model_config = _STRICT
    returns: list[AmazonReturn]
    credit_outcomes: list[CreditOutcome] = []
    #: how Amazon answers a credit note whose id it already took in (see the scenarios README)
    duplicate_credit_note: Literal["same_note", "reject"] = "same_note"


class AddReasonMapping(BaseModel):
    model_config = _STRICT
    on: date
    action: Literal["add_reason_mapping"]
    rebound_reason: Id
    amazon_reason: Id


class AddSku(BaseModel):
    model_config = _STRICT
    on: date
    action: Literal["add_sku"]
    sku: Id
    asin: Id
    unit_cost: Money
    available: Annotated[int, Field(ge=0)]


Operation = Annotated[AddReasonMapping | AddSku, Field(discriminator="action")]

Rate = Annotated[float, Field(ge=0, le=1)]


class ReboundFaults(BaseModel):
    model_config = _STRICT
    error_rate: Rate = 0.0
    timeout_rate: Rate = 0.0


class Throttle(BaseModel):
    model_config = _STRICT
    rate: Annotated[float, Field(gt=0)]
    burst: Annotated[int, Field(ge=1)]


class AmazonFaults(BaseModel):
    model_config = _STRICT
    error_rate: Rate = 0.0
    lost_response_rate: Rate = 0.0
    throttle: Throttle | None = None


class Faults(BaseModel):
    model_config = _STRICT
    rebound: ReboundFaults = ReboundFaults()
    amazon: AmazonFaults = AmazonFaults()


class Scenario(BaseModel):
    model_config = _STRICT
    format: str
    name: str = ""
    description: str = ""
    vendor: Vendor
    run: Run
    policy: Policy
    catalog: list[CatalogItem]
    reason_codes: list[ReasonMapping]
    rebound: Rebound
    amazon: Amazon
    operations: list[Operation] = []
    faults: Faults = Faults()

    _raw: dict | None = PrivateAttr(default=None)

    @field_validator("format")
    @classmethod
    def _format_tag(cls, v: str) -> str:
        if v != FORMAT:
            raise ValueError(f"expected {FORMAT!r}, got {v!r}")
        return v

    @property
    def raw(self) -> dict:
        """The scenario as parsed JSON: what the simulators serve, byte for byte in meaning."""
        if self._raw is None:
            self._raw = self.model_dump(mode="json", by_alias=True, exclude_unset=True)
        return self._raw

    @classmethod
    def from_dict(cls, raw: dict) -> Scenario:
        """Validate a parsed scenario; raises ScenarioError naming the first problem."""
        return _validate(raw)


_ADAPTER = TypeAdapter(Scenario)
_INVALID_ADAPTER = TypeAdapter(InvalidEvent)
_UNION_TAGS = frozenset(EventType) | {"add_reason_mapping", "add_sku"}


# --- error messages ---------------------------------------------------------------

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


def _describe(err: dict) -> tuple[str, str]:
    """(path, problem) for one pydantic error, in the words a scenario author uses."""
    loc, kind, value = tuple(err["loc"]), err["type"], err.get("input")
    path = _path(loc)
    field = next((p for p in reversed(loc) if isinstance(p, str) and p not in _UNION_TAGS
                  and p not in ("[key]", "[keys]")), "")
    if kind == "missing":
        return path, "missing key"
    if kind == "extra_forbidden":
        return path, "unknown key"
    if kind in ("union_tag_not_found",):
        tag = "type" if "events" in loc else "action"
        return f"{path}.{tag}", "missing key"
    if kind == "union_tag_invalid":
        tag = "type" if "events" in loc else "action"
        return f"{path}.{tag}", f"unknown {tag} {err['ctx']['tag']!r} (expected one of {err['ctx']['expected_tags']})"
    if kind == "timezone_aware":
        return path, f"no time zone ({value!r}); write UTC times with a trailing Z"
    if kind.startswith("datetime") or kind.startswith("date_") or kind == "date_type":
        return path, f"not an ISO-8601 date ({value!r})"
    if kind == "enum" and (field == "disposition" or loc[:2] == ("policy", "credit")):
        return path, f"unknown disposition {value!r} (expected one of {', '.join(Disposition)})"
    if kind == "enum" and (field == "grade" or "sellable_grades" in loc):
        return path, f"unknown grade {value!r} (expected one of {', '.join(Grade)})"
    if field == "duplicate_credit_note":
        return path, (f"unknown value {value!r} (expected one of "
                      f"{', '.join(repr(m) for m in DUPLICATE_CREDIT_NOTE_MODES)})")
    if kind == "value_error" and field == "format":
        return path, str(err["ctx"]["error"])
    return path, f"{err['msg']} ({value!r})" if not isinstance(value, (dict, list)) else err["msg"]


def _raise_first(exc: ValidationError) -> None:
    errors = exc.errors(include_url=False)
    # a wrong format tag explains every other error: report it first
    errors.sort(key=lambda e: tuple(e["loc"]) != ("format",))
    path, problem = _describe(errors[0])
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
    first: dict[str, int] = {}   # event id -> index of its first listing
    prev: dict[str, int] = {}    # event id -> index of its latest listing so far
    for i, eid in enumerate(ids):
        j = first.get(eid)
        if j is None:
            first[eid] = prev[eid] = i
            continue
        a, b = raw_events[j], raw_events[i]
        differ = sorted(k for k in a.keys() | b.keys()
                        if k != "delivered_at" and a.get(k, _ABSENT) != b.get(k, _ABSENT))
        if differ:
            raise ScenarioError(
                f"rebound.events[{i}].event_id: duplicate id {eid!r} with a different body than "
                f"rebound.events[{j}] (differs in {', '.join(differ)}); an event may be listed again only as "
                "a redelivery: the same body with a later delivered_at")
        p = prev[eid]
        before = events[p].delivery_time
        later = events[i].__dict__["delivered_at"]
        if later is None or later <= before:
            got = "no delivered_at" if later is None else f"delivered_at {later.isoformat()}"
            raise ScenarioError(
                f"rebound.events[{i}].delivered_at: redelivery of event {eid!r} must be delivered later than "
                f"rebound.events[{p}] ({before.isoformat()}), got {got}")
        prev[eid] = i


def _check(s: Scenario) -> None:
    """The consistency rules that a schema cannot state (uniqueness, references, times)."""
    _duplicates(s.catalog, "sku", "catalog")
    _duplicates(s.reason_codes, "rebound_reason", "reason_codes", "mapping")
    _duplicates(s.rebound.returns, "return_id", "rebound.returns")
    _check_redeliveries(s)
    _duplicates(s.amazon.returns, "amazon_return_id", "amazon.returns")
    if s.run.to < s.run.from_:
        raise ScenarioError(f"run.to: before run.from ({s.run.to} < {s.run.from_})")
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
            raise ScenarioError(f"rebound.events[{i}].return_id: unknown return {e.return_id!r} "
                                "(events about unknown returns belong in rebound.invalid_events)")
        line = fields.get("line")
        if line is not None and line not in known:
            raise ScenarioError(f"rebound.events[{i}].line: return {e.return_id!r} has no line {line}")
    for i, raw in enumerate(s.rebound.invalid_events):
        try:
            _INVALID_ADAPTER.validate_python(raw)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            _, problem = _describe(err)
            raise ScenarioError(f"rebound.invalid_events[{i}].delivered_at: {problem}") from None


@contextmanager
def paused_gc():
    """Pause the cyclic GC: a bulk load allocates millions of acyclic objects, and each young-
    generation pass would otherwise rescan them (measured: 15 s instead of 4 s for 100k returns)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _validate(raw: dict) -> Scenario:
    with paused_gc():
        return _validate_inner(raw)


def _validate_inner(raw: dict) -> Scenario:
    if not isinstance(raw, dict):
        raise ScenarioError(f"(root): expected a JSON object, got {type(raw).__name__}")
    if "format" in raw and raw["format"] != FORMAT:
        raise ScenarioError(f"format: expected {FORMAT!r}, got {raw['format']!r}")
    try:
        scenario = _ADAPTER.validate_python(raw)
    except ValidationError as exc:
        _raise_first(exc)
    scenario._raw = raw
    _check(scenario)
    return scenario


def load_scenario(path: str | Path) -> Scenario:
    """Parse and validate a scenario file; raises ScenarioError naming the JSON path of the problem."""
    with paused_gc():
        return _validate_inner(load_scenario_dict(path))


# --- the feed as the simulated ReBound delivers it ----------------------------------

def delivery_time(raw_event: dict) -> datetime:
    """Delivery time of a raw feed object: ``delivered_at``, else ``occurred_at`` (aware, UTC)."""
    value = raw_event.get("delivered_at") or raw_event["occurred_at"]
    t = datetime.fromisoformat(value.replace("Z", "+00:00")) if isinstance(value, str) else value
    return t.astimezone(timezone.utc)


def feed_order(scenario: Scenario) -> list[dict]:
    """Every delivery of the simulated feed, in order: scenario events, then invalid events,
    stably sorted by delivery time; a ``duplicate`` event is delivered a second time right
    after the first, and an event listed again (a redelivery) is delivered again at its own
    later ``delivered_at``. Items are the raw objects of the file (shared, do not mutate)."""
    return [obj for _, obj in feed_deliveries(scenario)]


def feed_deliveries(scenario: Scenario) -> list[tuple[datetime, dict]]:
    """``feed_order`` with each delivery's time (aware UTC datetime)."""
    with paused_gc():
        raw = scenario.raw["rebound"]
        events = raw["events"]
        invalid = raw.get("invalid_events") or []
        # validated times: cheaper than re-parsing and identical by construction
        keyed = [(e.delivered_at or e.occurred_at, i) for i, e in enumerate(scenario.rebound.events)]
        base = len(events)
        keyed += [(delivery_time(e), base + j) for j, e in enumerate(invalid)]
        keyed.sort()
        out: list[tuple[datetime, dict]] = []
        for t, idx in keyed:
            obj = events[idx] if idx < base else invalid[idx - base]
            out.append((t, obj))
            if obj.get("duplicate") is True:
                out.append((t, obj))
        return out
