"""The scenario checker (returnledger_dev.scenarios.check): one verdict line per check, from the output files
alone, and exit status 1 when any check fails."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from returnledger_dev.scenarios import check

EXPECTED = {
    "credits": {},
    "inventory": {"SKU-1": 5},
    "exceptions": [{"type": "DARK_RETURN", "amazon_return_id": "AR-1"}, {"type": "INVALID_EVENT"}],
    "recon": {"RB-1|1": "MATCHED", "AR-1": "DARK_RETURN"},
    "post_hoc_returns": ["AR-1"],
}


def _write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


@pytest.fixture
def outputs(tmp_path) -> Path:
    """A run's output folder that meets EXPECTED."""
    (tmp_path / "amazon_requests.jsonl").write_text("")
    _write_csv(tmp_path / "amazon_inventory.csv", [{"sku": "SKU-1", "asin": "B1", "available": 5}])
    _write_csv(
        tmp_path / "exceptions.csv",
        [
            {"type": "DARK_RETURN", "return_id": "", "line": "", "amazon_return_id": "AR-1"},
            {"type": "INVALID_EVENT", "return_id": "", "line": "", "amazon_return_id": ""},
        ],
    )
    _write_csv(
        tmp_path / "month_end_report.csv",
        [
            {"return_id": "RB-1", "line": "1", "amazon_return_id": "", "recon_status": "MATCHED"},
            {"return_id": "", "line": "", "amazon_return_id": "AR-1", "recon_status": "DARK_RETURN"},
        ],
    )
    (tmp_path / "rebound_created_returns.jsonl").write_text(json.dumps({"amazon_return_id": "AR-1"}) + "\n")
    return tmp_path


def _verdict(outputs: Path, capsys) -> tuple[int, list[str]]:
    expected = outputs / "scenario.expected.json"
    expected.write_text(json.dumps(EXPECTED))
    rc = check.main([str(expected), str(outputs)])
    return rc, capsys.readouterr().out.splitlines()


def test_outputs_that_meet_the_expected_file_pass(outputs, capsys):
    rc, lines = _verdict(outputs, capsys)
    assert rc == 0 and lines[-1] == "6 passed, 0 failed", lines
    assert [line[:5] for line in lines[:-1]] == ["ok   "] * 6


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        (
            "inventory",
            lambda d: _write_csv(
                d / "amazon_inventory.csv", [{"sku": "SKU-1", "asin": "B1", "available": 6}]
            ),
        ),
        (
            "exceptions",
            lambda d: _write_csv(
                d / "exceptions.csv",
                [{"type": "DARK_RETURN", "return_id": "", "line": "", "amazon_return_id": "AR-1"}],
            ),
        ),
        (
            "reconciliation",
            lambda d: _write_csv(
                d / "month_end_report.csv",
                [{"return_id": "RB-1", "line": "1", "amazon_return_id": "", "recon_status": "PENDING"}],
            ),
        ),
        ("post-hoc returns", lambda d: (d / "rebound_created_returns.jsonl").write_text("")),
        ("credits", lambda d: (d / "amazon_requests.jsonl").unlink()),
    ],
)
def test_each_broken_output_fails_its_own_check(outputs, capsys, name, damage):
    damage(outputs)
    rc, lines = _verdict(outputs, capsys)
    assert rc == 1 and lines[-1].endswith("1 failed"), lines
    assert next(line for line in lines if line.startswith("FAIL")).startswith(f"FAIL {name}:")


def test_credits_count_each_note_id_taken_in_with_202_once():
    note = {
        "invoiceType": "CreditNote",
        "id": "CN-1",
        "creditNoteDetails": {"returnsReferenceNumber": "RN1"},
        "items": [
            {
                "vendorProductIdentifier": "SKU-1",
                "invoicedQuantity": {"amount": 2},
                "netCost": {"amount": "4.50"},
            }
        ],
    }
    post = {"method": "POST", "path": "/vendor/payments/v1/invoices", "body": {"invoices": [note]}}
    log = [
        dict(post, status=202),
        dict(post, status=202),
        dict(post, status=500),
        dict(post, status=202, body=json.dumps({"invoices": [dict(note, id="CN-2")]})),
    ]
    assert check.credits_from_requests(log) == {"RN1|SKU-1": {"quantity": 4, "amount": "18.00"}}


CLOSES = {  # two closes: October's settled RB-1 and reported AR-1; November carries RB-2 only
    "2026-10": {"RB-1|1": "MATCHED", "RB-2|1": "PENDING", "AR-1": "DARK_RETURN"},
    "2026-11": {"RB-2|1": "CREDIT_MISSING"},
}


def _close_report(out: Path, period: str, rows: list[tuple[str, str, str, str]]) -> None:
    folder = out / "closes" / period
    folder.mkdir(parents=True, exist_ok=True)
    _write_csv(
        folder / "month_end_report.csv",
        [{"return_id": r, "line": n, "amazon_return_id": a, "recon_status": s} for r, n, a, s in rows],
    )


@pytest.fixture
def closed(outputs) -> Path:
    """The outputs of a run with two closes that meet CLOSES."""
    _close_report(
        outputs,
        "2026-10",
        [("RB-1", "1", "", "MATCHED"), ("RB-2", "1", "", "PENDING"), ("", "", "AR-1", "DARK_RETURN")],
    )
    _close_report(outputs, "2026-11", [("RB-2", "1", "", "CREDIT_MISSING")])
    return outputs


def _closes_verdict(out: Path, capsys) -> tuple[int, list[str]]:
    expected = out / "scenario.expected.json"
    expected.write_text(json.dumps({**EXPECTED, "closes": CLOSES}))
    rc = check.main([str(expected), str(out)])
    return rc, capsys.readouterr().out.splitlines()


def test_every_close_is_checked(closed, capsys):
    rc, lines = _closes_verdict(closed, capsys)
    assert rc == 0 and lines[-1] == "8 passed, 0 failed", lines
    assert "ok   close 2026-10: 3 checked" in lines and "ok   close 2026-11: 1 checked" in lines


@pytest.mark.parametrize(
    ("period", "rows"),
    [
        # a row an earlier close settled is reported again: a row that should not be there
        ("2026-11", [("RB-2", "1", "", "CREDIT_MISSING"), ("RB-1", "1", "", "MATCHED")]),
        # a dark return reported twice
        ("2026-11", [("RB-2", "1", "", "CREDIT_MISSING"), ("", "", "AR-1", "DARK_RETURN")]),
        # the carried-over line is missing
        ("2026-11", []),
        # the wrong status
        (
            "2026-10",
            [("RB-1", "1", "", "MATCHED"), ("RB-2", "1", "", "PENDING"), ("", "", "AR-1", "MATCHED")],
        ),
    ],
    ids=["settled-row-repeated", "dark-return-repeated", "carried-row-missing", "wrong-status"],
)
def test_a_close_with_a_row_too_many_or_too_few_fails(closed, capsys, period, rows):
    (closed / "closes" / period / "month_end_report.csv").unlink()
    if rows:
        _close_report(closed, period, rows)
    else:
        (closed / "closes" / period / "month_end_report.csv").write_text(
            "return_id,line,amazon_return_id,recon_status\n"
        )
    rc, lines = _closes_verdict(closed, capsys)
    assert rc == 1 and lines[-1] == "7 passed, 1 failed", lines
    assert [line.split(":")[0] for line in lines if line.startswith("FAIL")] == [f"FAIL close {period}"]


def test_a_close_without_its_report_fails(closed, capsys):
    (closed / "closes" / "2026-10" / "month_end_report.csv").unlink()
    rc, lines = _closes_verdict(closed, capsys)
    assert rc == 1 and lines[-1] == "7 passed, 1 failed", lines
    assert (
        "FAIL close 2026-10: 1 of 0 differ; first: ['closes/2026-10/month_end_report.csv missing']" in lines
    )
