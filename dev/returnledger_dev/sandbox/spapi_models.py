"""Amazon's published SP-API models (``amazon_models/``, Apache-2.0) as request validators: how the
simulated SP-API judges a body, and what the scenario checker holds every body sent to Amazon to."""

from __future__ import annotations

import json
import re
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

MODELS_DIR = Path(__file__).resolve().parent / "amazon_models"
DECIMAL_PATTERN = r"^-?(0|([1-9]\d*))(\.\d+)?([eE][+-]?\d+)?$"  # stated in prose by the model
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def _date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True  # type errors are the "type" keyword's business
    if not RFC3339.match(value):
        return False
    try:
        datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


@cache
def request_validator(
    model_file: str, definition: str, models_dir: str = str(MODELS_DIR), *, rfc3339_dates: bool = True
):
    """Draft-4 validator of one request definition of Amazon's swagger model (as check.py builds it).

    ``rfc3339_dates``: the simulator holds ``date-time`` fields to RFC 3339 as Amazon does; the scenario
    checker leaves that to jsonschema's own format checker, as the team's reference checker does.
    """
    import jsonschema

    model = json.loads((Path(models_dir) / model_file).read_text())
    defs = model["definitions"]
    if "Decimal" in defs:
        defs["Decimal"] = dict(defs["Decimal"], pattern=DECIMAL_PATTERN)
    checker = jsonschema.FormatChecker()
    if rfc3339_dates:
        checker.checks("date-time")(_date_time)  # RFC 3339, as the model's format says (no extra package)
    schema = {"$ref": f"#/definitions/{definition}", "definitions": defs}
    return jsonschema.Draft4Validator(schema, format_checker=checker)


def model_errors(validator, body: Any) -> list[dict]:
    """Amazon-style error entries for every way ``body`` breaks the model."""
    out = []
    for err in sorted(validator.iter_errors(body), key=lambda e: list(map(str, e.absolute_path))):
        where = "/".join(map(str, err.absolute_path)) or "(body)"
        out.append({"code": "InvalidInput", "message": f"{where}: {err.message[:200]}", "details": where})
    return out


def invoice_rule_errors(body: dict) -> list[dict]:
    """Rules the invoices model states in prose: quantity and net cost above zero."""
    out = []
    for i, inv in enumerate(body.get("invoices") or []):
        for j, item in enumerate(inv.get("items") or []):
            qty = (item.get("invoicedQuantity") or {}).get("amount")
            cost = (item.get("netCost") or {}).get("amount")
            where = f"invoices/{i}/items/{j}"
            if isinstance(qty, int) and qty <= 0:
                out.append(
                    {
                        "code": "InvalidInput",
                        "message": f"{where}: invoicedQuantity must be greater than zero",
                        "details": f"{where}/invoicedQuantity/amount",
                    }
                )
            if isinstance(cost, str) and re.match(DECIMAL_PATTERN, cost) and float(cost) <= 0:
                out.append(
                    {
                        "code": "InvalidInput",
                        "message": f"{where}: netCost must not be zero or negative",
                        "details": f"{where}/netCost/amount",
                    }
                )
    return out
