"""Judge a scenario run's outputs against the scenario's expected file (see scenarios/README.md).

    python -m returnledger_dev.scenarios.check SCENARIO.expected.json OUTPUT_DIR

Reads only the run's output files (never the ledger, never returnledger's own rules), so the verdict is
independent of the package under test. Six checks: credits (what Amazon took in with a 202, per returns
notice and SKU, each credit-note id once), every body POSTed to Amazon against Amazon's published models
(the copies in returnledger_dev/sandbox/amazon_models, read as the simulated SP-API reads them), the
simulator's final inventory, the exceptions the scenario must raise, each line's month-end recon status
(the last close's report), and the post-hoc returns created in ReBound. A scenario with several closes
(``closes`` in the expected file) adds one check per close: OUT/closes/<period>/month_end_report.csv
against that close's expected report, both ways (a row missing and a row that should not be there, e.g.
one an earlier close settled, both fail).
One line per check (``ok   NAME: ...`` or ``FAIL NAME: ...``), then ``N passed, M failed``; exit 1 on
any failure. Same verdicts as the team's reference checker (../shared/scenarios/check.py).
"""

from __future__ import annotations

import csv
import json
import sys
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

from returnledger_dev.sandbox.spapi_models import request_validator

INVOICES_PATH = "/vendor/payments/v1/invoices"
#: request path ending -> (Amazon's model file, the request definition a body must match)
BODY_MODELS = {
    INVOICES_PATH: ("vendorInvoices.json", "SubmitInvoicesRequest"),
    "/items": ("vendorDirectFulfillmentInventoryV1.json", "SubmitInventoryUpdateRequest"),
}

Problems = list


def _jsonl(path: Path) -> list[dict] | None:
    if not path.is_file():
        return None
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _csv_rows(path: Path) -> list[dict] | None:
    if not path.is_file():
        return None
    with path.open(newline="") as f:
        # text a spreadsheet would run as a formula is written with a leading apostrophe
        # (returnledger.render.spreadsheet_text): compare the value it stands for
        return [{k: _unquote(v) for k, v in row.items()} for row in csv.DictReader(f)]


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def _unquote(value):
    if isinstance(value, str) and value[:1] == "'" and value[1:2] and value[1:2] in _FORMULA_START:
        return value[1:]
    return value


def _body(request: dict):
    body = request.get("body")
    return json.loads(body) if isinstance(body, str) else body


def credits_from_requests(requests: list[dict]) -> dict[str, dict]:
    """{"NOTICE|SKU": {quantity, amount}} over the distinct credit-note ids Amazon answered with 202."""
    notes: dict[str, dict] = {}
    for r in requests:
        if (
            r.get("method") == "POST"
            and str(r.get("path", "")).endswith(INVOICES_PATH)
            and int(r.get("status", 0)) == 202
        ):
            for invoice in (_body(r) or {}).get("invoices", []):
                if invoice.get("invoiceType") == "CreditNote":
                    notes[invoice["id"]] = invoice  # a resubmitted id is the same note: it counts once
    totals: dict[str, list] = {}
    for note in notes.values():
        notice = (note.get("creditNoteDetails") or {}).get("returnsReferenceNumber", "")
        for item in note.get("items", []):
            units = Decimal(str(item["invoicedQuantity"]["amount"]))
            q_a = totals.setdefault(f"{notice}|{item.get('vendorProductIdentifier', '')}", [0, Decimal(0)])
            q_a[0] += int(units)
            q_a[1] += Decimal(str(item["netCost"]["amount"])) * units
    return {
        key: {"quantity": q, "amount": str(amount.quantize(Decimal("0.01")))}
        for key, (q, amount) in totals.items()
    }


def model_problems(requests: list[dict]) -> Problems:
    """Every POST body to a modelled path, validated against Amazon's published swagger definitions."""
    try:
        validators = {
            suffix: request_validator(*model, rfc3339_dates=False) for suffix, model in BODY_MODELS.items()
        }
    except ImportError:
        return ["the jsonschema package is needed to check bodies against Amazon's models"]
    problems: Problems = []
    for r in requests:
        path = str(r.get("path", ""))
        suffix = next((s for s in validators if path.endswith(s)), None)
        if r.get("method") != "POST" or suffix is None:
            continue
        try:
            body = _body(r)
        except ValueError:
            problems.append((path, "body is not JSON"))
            continue
        problems += [
            (path, "/".join(map(str, e.absolute_path)), e.message[:120])
            for e in validators[suffix].iter_errors(body)
        ]
    return problems


def exception_problems(rows: list[dict], wanted: list[dict]) -> Problems:
    """Each listed exception was raised: by its subject when it names one, else by count of its type."""
    raised = {
        (r["type"], r.get("return_id") or "", str(r.get("line") or ""), r.get("amazon_return_id") or "")
        for r in rows
    }
    by_type = Counter(r["type"] for r in rows)
    problems: Problems = []
    unnamed: Counter = Counter()
    for e in wanted:
        if "return_id" in e or "amazon_return_id" in e:
            key = (e["type"], e.get("return_id", ""), str(e.get("line", "")), e.get("amazon_return_id", ""))
            if key not in raised:
                problems.append(key)
        else:
            unnamed[e["type"]] += 1
    problems += [(t, f"expected at least {n}", by_type[t]) for t, n in unnamed.items() if by_type[t] < n]
    return problems


def recon_statuses(rows: list[dict]) -> dict[str, str]:
    """The report's status per "RETURN|LINE", and per Amazon return id for dark returns."""
    got = {}
    for row in rows:
        if row.get("return_id"):
            got[f"{row['return_id']}|{row['line']}"] = row["recon_status"]
        if row.get("amazon_return_id") and row["recon_status"] == "DARK_RETURN":
            got[row["amazon_return_id"]] = row["recon_status"]
    return got


def _differences(expected: dict, got: dict, keys) -> Problems:
    return [(k, expected.get(k), got.get(k)) for k in sorted(keys) if expected.get(k) != got.get(k)]


def close_checks(closes: dict[str, dict[str, str]], out_dir: Path) -> list[tuple[str, Problems, int]]:
    """One check per close: its report's rows against the close's expected rows, compared both ways."""
    results: list[tuple[str, Problems, int]] = []
    for period, wanted in sorted(closes.items()):
        filename = f"closes/{period}/month_end_report.csv"
        rows = _csv_rows(out_dir / filename)
        if rows is None:
            results.append((f"close {period}", [f"{filename} missing"], 0))
            continue
        got = recon_statuses(rows)
        results.append((f"close {period}", _differences(wanted, got, set(wanted) | set(got)), len(wanted)))
    return results


def check(expected: dict, out_dir: Path) -> list[tuple[str, Problems, int]]:
    """(check name, problems, how many were checked) for each of the six checks, then one per close."""
    results: list[tuple[str, Problems, int]] = []
    requests = _jsonl(out_dir / "amazon_requests.jsonl")
    if requests is None:
        results.append(("credits", ["amazon_requests.jsonl missing"], 0))
    else:
        got = credits_from_requests(requests)
        keys = set(expected["credits"]) | set(got)
        results.append(("credits", _differences(expected["credits"], got, keys), len(expected["credits"])))
        results.append(("Amazon model", model_problems(requests), len(requests)))
    csv_checks: list[tuple[str, str, str, Callable[[list[dict]], Problems]]] = [
        (
            "inventory",
            "amazon_inventory.csv",
            "inventory",
            lambda rows: _differences(
                expected["inventory"], {r["sku"]: int(r["available"]) for r in rows}, expected["inventory"]
            ),
        ),
        (
            "exceptions",
            "exceptions.csv",
            "exceptions",
            lambda rows: exception_problems(rows, expected["exceptions"]),
        ),
        (
            "reconciliation",
            "month_end_report.csv",
            "recon",
            lambda rows: _differences(expected["recon"], recon_statuses(rows), expected["recon"]),
        ),
    ]
    for name, filename, key, compare in csv_checks:
        rows = _csv_rows(out_dir / filename)
        results.append(
            (name, [f"{filename} missing"], 0) if rows is None else (name, compare(rows), len(expected[key]))
        )
    results += close_checks(expected.get("closes") or {}, out_dir)
    created = _jsonl(out_dir / "rebound_created_returns.jsonl")
    if created is None:
        results.append(("post-hoc returns", ["rebound_created_returns.jsonl missing"], 0))
    else:
        text = json.dumps(created)
        results.append(
            (
                "post-hoc returns",
                [a for a in expected["post_hoc_returns"] if a not in text],
                len(expected["post_hoc_returns"]),
            )
        )
    return results


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    results = check(json.loads(Path(args[0]).read_text()), Path(args[1]))
    for name, problems, total in results:
        print(
            f"FAIL {name}: {len(problems)} of {total} differ; first: {problems[:5]}"
            if problems
            else f"ok   {name}: {total} checked"
        )
    failed = sum(1 for _, problems, _ in results if problems)
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
