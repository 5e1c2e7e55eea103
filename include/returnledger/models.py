"""Domain vocabulary shared by every part of the package.

ReBound's event names, grades and dispositions are *simulated* (the real
contract is not public, see docs/sandbox.md); the Amazon side follows the
published SP-API models.
"""
from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

#: what a ReBound return id may look like (anything else is an INVALID_EVENT, never a query parameter)
RETURN_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"


class EventType(StrEnum):
    RETURN_CREATED = "RETURN_CREATED"
    IN_TRANSIT = "IN_TRANSIT"
    RECEIVED = "RECEIVED"
    GRADED = "GRADED"
    DISPOSITIONED = "DISPOSITIONED"


LINE_EVENTS = frozenset({EventType.RECEIVED, EventType.GRADED, EventType.DISPOSITIONED})


class Grade(StrEnum):
    A = "A"
    B = "B"
    C = "C"
    D = "D"


class Disposition(StrEnum):
    RESTOCKED = "RESTOCKED"
    REFURBISH = "REFURBISH"
    RECYCLE = "RECYCLE"
    DESTROY = "DESTROY"
    RETURN_TO_SUPPLIER = "RETURN_TO_SUPPLIER"
    QUARANTINED = "QUARANTINED"
    REJECTED = "REJECTED"


class LineState(StrEnum):
    ANNOUNCED = "ANNOUNCED"
    IN_TRANSIT = "IN_TRANSIT"
    RECEIVED = "RECEIVED"
    GRADED = "GRADED"
    DISPOSITIONED = "DISPOSITIONED"
    CREDIT_SUBMITTED = "CREDIT_SUBMITTED"
    CREDIT_ACCEPTED = "CREDIT_ACCEPTED"
    CLOSED = "CLOSED"
    QUARANTINED = "QUARANTINED"
    REJECTED = "REJECTED"


class ExceptionType(StrEnum):
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
    EVENT_CONFLICT = "EVENT_CONFLICT"              # an event id delivered again with another body
    INVALID_RETURN_ORDER = "INVALID_RETURN_ORDER"  # a ReBound return order that fails its own checks


#: exceptions that hold a line's events until they are resolved
HOLDING_TYPES = frozenset({ExceptionType.UNMAPPED_REASON_CODE, ExceptionType.SKU_MISMATCH,
                           ExceptionType.OUT_OF_SEQUENCE})


class ExceptionStatus(StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"
    DISMISSED = "dismissed"


class ActionKind(StrEnum):
    CREDIT_NOTE = "CREDIT_NOTE"
    INVENTORY = "INVENTORY"


class ReconStatus(StrEnum):
    QUARANTINED = "QUARANTINED"
    PENDING = "PENDING"
    ON_HOLD = "ON_HOLD"
    NO_CREDIT_DUE = "NO_CREDIT_DUE"
    CREDIT_REJECTED = "CREDIT_REJECTED"
    CREDIT_MISSING = "CREDIT_MISSING"
    CREDIT_MISMATCH = "CREDIT_MISMATCH"
    MATCHED = "MATCHED"
    DARK_RETURN = "DARK_RETURN"


# --- ReBound events (simulated contract, scenarios/README.md) ---------------

class _Event(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    event_id: Annotated[str, Field(min_length=1)]
    return_id: Annotated[str, Field(pattern=RETURN_ID_PATTERN)]
    occurred_at: datetime
    delivered_at: datetime | None = None


class ReturnCreated(_Event):
    type: Literal[EventType.RETURN_CREATED]


class InTransit(_Event):
    type: Literal[EventType.IN_TRANSIT]


class Received(_Event):
    type: Literal[EventType.RECEIVED]
    line: Annotated[int, Field(ge=1)]
    quantity: Annotated[int, Field(ge=0)]


class Graded(_Event):
    type: Literal[EventType.GRADED]
    line: Annotated[int, Field(ge=1)]
    grade: Grade


class Dispositioned(_Event):
    type: Literal[EventType.DISPOSITIONED]
    line: Annotated[int, Field(ge=1)]
    disposition: Disposition


ReboundEvent = Annotated[ReturnCreated | InTransit | Received | Graded | Dispositioned,
                         Field(discriminator="type")]


class AmazonRefs(BaseModel):
    returns_notice: str
    rma_id: str | None = None
    vret: str | None = None


class ReturnLine(BaseModel):
    line: Annotated[int, Field(ge=1)]
    sku: str
    quantity: Annotated[int, Field(gt=0)]
    reason: str


class ReturnOrder(BaseModel):
    return_id: str
    order_reference: str | None = None
    created_at: datetime | None = None
    amazon_refs: AmazonRefs
    lines: list[ReturnLine]


# --- Amazon actions ------------------------------------------------------------

class CreditNoteLine(BaseModel):
    return_id: str
    line: int
    sku: str
    asin: str
    quantity: Annotated[int, Field(gt=0)]
    unit_amount: Decimal


class CreditNote(BaseModel):
    """One credit note per returns notice and batch; its id is the idempotency anchor."""
    id: str
    returns_notice: str
    rma_id: str | None
    vret: str | None
    goods_return_date: date
    currency: str
    lines: list[CreditNoteLine]


class InventoryUpdate(BaseModel):
    sku: str
    available: Annotated[int, Field(ge=0)]
