"""The ledger's codes in plain words, in one place: what the console writes next to each code so that a
customer-team agent reads a return's story without knowing the ledger's vocabulary.

``say(kind, code)`` is the one lookup (the templates get it as ``say``); an unknown code is said as the
code itself, so a new code shows up unexplained rather than breaking a page. ``glossary()`` is the whole
mapping (``GLOSSARY`` here, the exception types' words from the exception-type registry's summaries), also
shown as the console's glossary page.
"""

from __future__ import annotations

from returnledger.exception_types import KINDS

GLOSSARY: dict[str, dict[str, str]] = {
    "line_state": {
        "ANNOUNCED": "ReBound has announced the return; nothing has been sent back yet",
        "IN_TRANSIT": "the parcel is on its way to the returns hub",
        "RECEIVED": "the parcel arrived at the hub and the units were counted",
        "GRADED": "the items were inspected and given a grade",
        "DISPOSITIONED": "the hub decided what happens to the items (restock, refurbish, recycle, ...)",
        "CREDIT_SUBMITTED": "the credit note was sent to Amazon; waiting for Amazon to accept it",
        "CREDIT_ACCEPTED": "Amazon accepted the credit note",
        "CLOSED": "finished: nothing more is owed or expected on this line",
        "REJECTED": "the return was rejected at the hub; no credit is due",
    },
    "event_type": {
        "RETURN_CREATED": "the customer's return was created in ReBound",
        "IN_TRANSIT": "the parcel was handed to the carrier",
        "RECEIVED": "the parcel was received at the hub",
        "GRADED": "the items were graded",
        "DISPOSITIONED": "the hub decided what to do with the items",
    },
    "event_outcome": {
        "APPLIED": "applied: the ledger updated the line with it",
        "HELD": "held: waiting until an exception is fixed, then applied",
        "INVALID": "invalid: the event could not be read or broke a rule; an exception says why",
        "IGNORED": "ignored: a repeat of an event already applied",
        "SUPERSEDED": "superseded: another version of the same event was chosen (conflict)",
        "NEW": "not processed yet: the next sync run takes it",
        "CONFLICT": "conflict: ReBound sent this event id with different contents; someone must pick one",
    },
    # in plain words from the exception-type registry (returnledger.exception_types), one per type
    "exception_type": {code: k.summary for code, k in KINDS.items()},
    "exception_status": {
        "open": "open: someone has to act",
        "resolved": "resolved: fixed",
        "dismissed": "dismissed: closed without a fix (not needed)",
    },
    "submission_status": {
        "PENDING": "waiting to be sent to Amazon on the next run",
        "SENDING": "being sent to Amazon right now",
        "SUBMITTED": "sent; Amazon has not confirmed it yet",
        "ACCEPTED": "Amazon accepted it",
        "FAILED": "Amazon refused it; an exception says why",
    },
    "submission_kind": {
        "CREDIT_NOTE": "credit note (money back from Amazon)",
        "INVENTORY": "stock update to Amazon (units back in stock)",
    },
    "attempt_outcome": {
        "SENDING": "about to send: recorded before the request left for Amazon",
        "ACCEPTED_202": "Amazon took the request in (answer 202)",
        "RETRY": "Amazon was busy or failed; sent again",
        "REFUSED": "Amazon refused the request",
        "NO_ANSWER": "no answer from Amazon (timeout); sent again",
    },
    "confirmed_by": {
        "SUCCESS": "Amazon confirmed the credit note",
        "DUPLICATE": "Amazon already had this credit note (counted once)",
        "LEGACY": "confirmed before the send log existed",
    },
    "recon_status": {
        "QUARANTINED": "items in quarantine: no credit until someone decides",
        "PENDING": "still in progress: not yet due a credit",
        "ON_HOLD": "held by an open exception",
        "NO_CREDIT_DUE": "nothing is owed for this line",
        "CREDIT_REJECTED": "Amazon refused our credit note",
        "CREDIT_MISSING": "owed a credit that Amazon has not accepted",
        "CREDIT_MISMATCH": "Amazon's amount differs from ours",
        "MATCHED": "credited and matched with Amazon's records",
        "DARK_RETURN": "return known only to Amazon (prepaid label)",
    },
    "disposition": {
        "RESTOCKED": "back in stock",
        "REFURBISH": "to be refurbished",
        "RECYCLE": "recycled",
        "DESTROY": "destroyed",
        "RETURN_TO_SUPPLIER": "sent back to the supplier",
        "QUARANTINED": "kept in quarantine",
        "REJECTED": "rejected",
    },
    "grade": {
        "A": "as new: resell",
        "B": "good: minor signs of use",
        "C": "fair: needs work",
        "D": "poor: not resellable",
    },
    "story": {
        "order": "the return order reached the ledger",
        "event": "ReBound event received",
        "transition": "line changed state",
        "exception_opened": "exception opened",
        "exception_closed": "exception closed",
        "held": "event held back",
        "credit_note": "credit note created",
        "attempt": "sent to Amazon",
        "submission": "Amazon submission",
        "confirmed": "Amazon confirmed the credit note",
        "inventory": "stock update for Amazon",
        "recon": "reconciliation",
    },
}

#: headings of the glossary page, one per kind of code
KIND_TITLES = {
    "line_state": "Line states",
    "event_type": "ReBound events",
    "event_outcome": "What the ledger did with an event",
    "exception_type": "Exceptions",
    "exception_status": "Exception status",
    "submission_status": "Amazon submissions",
    "submission_kind": "Kinds of Amazon submission",
    "attempt_outcome": "Send log: one request to Amazon",
    "confirmed_by": "Credit note confirmation",
    "recon_status": "Reconciliation status (month-end and daily check)",
    "disposition": "Dispositions",
    "grade": "Grades",
}


def glossary() -> dict[str, dict[str, str]]:
    """Every kind of code with its words: ``GLOSSARY``, the exception types' words read from the
    exception-type registry's summaries now (``returnledger.exception_types``)."""
    return {**GLOSSARY, "exception_type": {code: k.summary for code, k in KINDS.items()}}


def say(kind: str, code: object) -> str:
    """``code`` of ``kind`` in plain words; the code itself when the glossary has no words for it."""
    if code is None:
        return ""
    return GLOSSARY.get(kind, {}).get(str(code), str(code))
