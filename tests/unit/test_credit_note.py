"""The credit note we send validates against Amazon's published vendorInvoices model."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import jsonschema

import returnledger_dev
from returnledger.amazon.credit_note import build_credit_note

MODELS = Path(returnledger_dev.__file__).parent / "sandbox" / "amazon_models"


def _validator():
    model = json.loads((MODELS / "vendorInvoices.json").read_text())
    defs = model["definitions"]
    defs["Decimal"] = dict(defs["Decimal"], pattern=r"^-?(0|([1-9]\d*))(\.\d+)?([eE][+-]?\d+)?$")
    return jsonschema.Draft4Validator(
        {"$ref": "#/definitions/SubmitInvoicesRequest", "definitions": defs},
        format_checker=jsonschema.FormatChecker(),
    )


def _rows():
    at = datetime(2026, 10, 5, tzinfo=UTC)
    base = {
        "currency": "GBP",
        "returns_notice": "RN01",
        "rma_id": "RMA01",
        "vret": "VRET01",
        "created_at": at,
    }
    return [
        {
            **base,
            "sku": "SKU-1",
            "asin": "B001",
            "quantity": 2,
            "unit_amount": Decimal("12.50"),
            "received_at": datetime(2026, 10, 3, 10, tzinfo=UTC),
        },
        {
            **base,
            "sku": "SKU-2",
            "asin": "B002",
            "quantity": 1,
            "unit_amount": Decimal("4.99"),
            "received_at": datetime(2026, 10, 4, 10, tzinfo=UTC),
        },
    ]


def test_credit_note_matches_the_model_and_the_scenario_contract():
    note = build_credit_note("CN-RN01-1", _rows(), party_id="VNDR1")
    errors = list(_validator().iter_errors({"invoices": [note]}))
    assert not errors, [e.message for e in errors]
    assert note["invoiceType"] == "CreditNote" and note["id"] == "CN-RN01-1"
    assert note["invoiceTotal"] == {"currencyCode": "GBP", "amount": "29.99"}
    d = note["creditNoteDetails"]
    assert d == {
        "returnsReferenceNumber": "RN01",
        "goodsReturnDate": "2026-10-04T10:00:00Z",
        "rmaId": "RMA01",
        "consignorsReferenceNumber": "VRET01",
    }
    assert [i["netCost"]["amount"] for i in note["items"]] == ["12.50", "4.99"]
    assert [i["invoicedQuantity"]["amount"] for i in note["items"]] == [2, 1]


def test_the_same_rows_give_the_same_credit_note():
    """A resubmission is byte-for-byte the same note: nothing in it comes from the clock."""
    assert json.dumps(build_credit_note("CN-X", _rows(), party_id="P")) == json.dumps(
        build_credit_note("CN-X", _rows(), party_id="P")
    )
