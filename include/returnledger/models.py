"""Domain vocabulary shared by every part of the package.

ReBound's event names, grades and dispositions are *simulated* (the real
contract is not public, see docs/sandbox.md); the Amazon side follows the
published SP-API models.
"""

from __future__ import annotations

from enum import StrEnum

# ExceptionType is re-exported: it is built from the registry
from returnledger.exception_types import ExceptionType as ExceptionType
from returnledger.exception_types import holding_types

#: what a ReBound return id may look like (anything else is an INVALID_EVENT, never a query parameter)
RETURN_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"


class EventType(StrEnum):
    RETURN_CREATED = "RETURN_CREATED"
    IN_TRANSIT = "IN_TRANSIT"
    RECEIVED = "RECEIVED"
    GRADED = "GRADED"
    DISPOSITIONED = "DISPOSITIONED"


#: events about one line of a return (the others, RETURN_CREATED and IN_TRANSIT, concern the whole return)
LINE_EVENTS = frozenset({EventType.RECEIVED, EventType.GRADED, EventType.DISPOSITIONED})


def sql_list(values) -> str:
    """Vocabulary values as an SQL list literal, for ``IN`` in fixed statements: ``('A', 'B')``."""
    return "(" + ", ".join(f"'{v.value}'" for v in values) + ")"


#: the same set as an SQL list, in lifecycle order: ``event_type IN ('RECEIVED', ...)``
LINE_EVENTS_SQL = sql_list(t for t in EventType if t in LINE_EVENTS)


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
    REJECTED = "REJECTED"


#: the exception types and which of them hold a line: read from the registry, the one place a type is
#: described (returnledger.exception_types)
HOLDING_TYPES = holding_types()


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
