"""The submitInvoices CreditNote Amazon receives for one credit note (fields of scenarios/README.md)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from returnledger.money import money_text


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_credit_note(credit_note_id: str, rows: list[dict], *, party_id: str) -> dict:
    """The credit note's body, built only from its stored submission rows (``ledger.amazon_submission``),
    so a resubmission is byte-for-byte the same credit note."""
    first = rows[0]
    currency = first["currency"]
    total = sum((Decimal(r["unit_amount"]) * r["quantity"] for r in rows), Decimal("0"))
    details = {
        "returnsReferenceNumber": first["returns_notice"],
        "goodsReturnDate": _iso(max(r["received_at"] for r in rows)),
    }
    if first.get("rma_id"):
        details["rmaId"] = first["rma_id"]
    if first.get("vret"):
        details["consignorsReferenceNumber"] = first["vret"]
    return {
        "invoiceType": "CreditNote",
        "id": credit_note_id,
        "date": _iso(first["created_at"]),
        "remitToParty": {"partyId": party_id},
        "invoiceTotal": {"currencyCode": currency, "amount": money_text(total)},
        "creditNoteDetails": details,
        "items": [
            {
                "itemSequenceNumber": i,
                "amazonProductIdentifier": r["asin"],
                "vendorProductIdentifier": r["sku"],
                "invoicedQuantity": {"amount": r["quantity"], "unitOfMeasure": "Eaches"},
                "netCost": {"currencyCode": currency, "amount": money_text(r["unit_amount"])},
                # Amazon's model carries creditNoteDetails on items; scenarios/README reads the invoice's
                "creditNoteDetails": details,
            }
            for i, r in enumerate(rows, start=1)
        ],
    }
