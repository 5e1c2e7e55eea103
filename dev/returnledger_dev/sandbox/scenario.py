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
from datetime import date, datetime
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
from returnledger_dev.sandbox.scenario_rules import ScenarioError, check_consistency, describe, raise_first

FORMAT = "returns-scenario/1"


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


def close_runs(run: dict) -> list[tuple[str, date]]:
    """The scenario's close runs, (period, day) in order: ``run.closes``, else one close of
    ``close_period`` on ``to`` (scenarios README, top level)."""
    closes = run.get("closes") or [{"period": run["close_period"], "on": run["to"]}]
    return [(c["period"], date.fromisoformat(c["on"])) for c in closes]


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


Period = Annotated[str, Field(pattern=r"^\d{4}-(0[1-9]|1[0-2])$")]


class Close(BaseModel):
    """One close run of the scenario: the month ``period`` closed on day ``on``, after that day's sync."""

    model_config = _STRICT
    period: Period
    on: date


class Run(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: Annotated[date, Field(alias="from")]
    to: date
    close_period: Period
    #: every close run in order; without it there is one, {period: close_period, on: to}
    closes: Annotated[list[Close], Field(min_length=1)] | None = None


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


ScenarioEvent = Annotated[
    ReturnCreatedEvent | InTransitEvent | ReceivedEvent | GradedEvent | DispositionedEvent,
    Field(discriminator="type"),
]


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


class ResolveOverReceipt(BaseModel):
    """The warehouse resolves an over-receipt's QUANTITY_MISMATCH: the units to credit, 0 to all."""

    model_config = _STRICT
    on: date
    action: Literal["resolve_over_receipt"]
    return_id: Id
    line: Annotated[int, Field(ge=1)]
    quantity: Annotated[int, Field(ge=0)]


Operation = Annotated[AddReasonMapping | AddSku | ResolveOverReceipt, Field(discriminator="action")]

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
    # a misbehaving Amazon: "empty" refuses a duplicate credit-note id without naming the transaction
    duplicate_details: Literal["named", "empty"] = "named"


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
        raise_first(exc)
    scenario._raw = raw
    check_consistency(scenario)
    _check_invalid_delivery_times(scenario)
    return scenario


def _check_invalid_delivery_times(s: Scenario) -> None:
    """Invalid events stay raw, but each needs a delivery time the feed can sort by."""
    for i, raw in enumerate(s.rebound.invalid_events):
        try:
            _INVALID_ADAPTER.validate_python(raw)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            _, problem = describe(err)
            raise ScenarioError(f"rebound.invalid_events[{i}].delivered_at: {problem}") from None


def load_scenario(path: str | Path) -> Scenario:
    """Parse and validate a scenario file; raises ScenarioError naming the JSON path of the problem."""
    with paused_gc():
        return _validate_inner(load_scenario_dict(path))
