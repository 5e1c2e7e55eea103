"""Month-end report pieces that need no database: tie-out check, chart geometry, HTML escaping."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from returnledger.render import cell
from returnledger.reports.finance import (
    EXTRA_COLUMNS,
    REPORT_COLUMNS,
    ReportDoesNotTieOut,
    _chart,
    _render_html,
    tie_out,
)


def grouped(*rows, total=None):
    """Rows shaped like _TOTALS_SQL: status, rows, units, amazon units, credited qty, credited £, charged £,
    is_total."""
    out = [(s, *m, 0) for s, *m in rows]
    if total is None:
        total = [sum(r[i] for r in rows) for i in range(1, 7)]
    return [*out, (None, *total, 1)]


def test_tie_out_orders_statuses_and_adds_up():
    by_status, total = tie_out(
        "2026-10",
        grouped(
            ("DARK_RETURN", 2, 0, 2, 0, Decimal("0"), Decimal("0")),
            ("MATCHED", 3, 4, 4, 4, Decimal("50.00"), Decimal("12.50")),
            ("PENDING", 1, 1, 1, 0, Decimal("0"), Decimal("0")),
        ),
    )
    assert list(by_status) == ["PENDING", "MATCHED", "DARK_RETURN"]  # ReconStatus order
    assert total["rows"] == 6 and total["credited_amount"] == Decimal("50.00")


def test_tie_out_refuses_totals_that_do_not_add_up():
    rows = grouped(
        ("MATCHED", 3, 4, 4, 4, Decimal("50.00"), Decimal("0")),
        total=[3, 4, 4, 4, Decimal("50.01"), Decimal("0")],
    )
    with pytest.raises(
        ReportDoesNotTieOut, match=r"credited_amount per status adds up to 50.00, the total is 50.01"
    ):
        tie_out("2026-10", rows)


def test_empty_period_totals_are_zero():
    by_status, total = tie_out("2026-10", [])
    assert by_status == {} and set(total.values()) == {0}


def test_chart_scales_to_the_largest_bar():
    bars = _chart(
        {"MATCHED": {"rows": 10}, "PENDING": {"rows": 5}, "ON_HOLD": {"rows": 0}}, "rows", width=200
    )
    assert [b["width"] for b in bars] == [200.0, 100.0, 0.0]
    assert [b["y"] for b in bars] == [0, 26, 52]
    assert _chart({}, "rows") == []


def test_cells():
    assert cell(None) == "" and cell(Decimal("12.5")) == "12.50" and cell(3) == "3"


def test_html_escapes_ledger_values():
    hostile = ["<script>alert(1)</script>", "1"] + [""] * (len(REPORT_COLUMNS) + len(EXTRA_COLUMNS) - 2)
    by_status = {
        "DARK_RETURN": dict(
            rows=1,
            units_received=0,
            amazon_units=1,
            credited_quantity=0,
            credited_amount=Decimal("0"),
            charged_amount=Decimal("0"),
        )
    }
    html = _render_html(
        "2026-10",
        (datetime(2026, 11, 4, tzinfo=UTC), "run<1>", "GBP"),
        by_status,
        dict(by_status["DARK_RETURN"]),
        {"DARK_RETURN": [hostile]},
        {"DARK_RETURN": 1},
    )
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "run&lt;1&gt;" in html and "2026-11-04T00:00:00+00:00" in html
    assert html.count("<svg") == 2


def test_money_at_risk_by_age_origin_and_first_report():
    from returnledger.reports.carry_over import carry_over, trend_chart, trend_of

    rows = [  # first_reported, origin month, age bucket, status, rows, credit owed
        ("2026-10", "2026-10", "31-60", "CREDIT_MISSING", 2, Decimal("20.00")),
        ("2026-10", "2026-10", "31-60", "ON_HOLD", 1, Decimal("0")),  # held by policy: not at risk
        ("2026-11", "2026-11", "0-30", "PENDING", 3, Decimal("15.00")),  # sent, in its window: at risk
        ("2026-11", "2026-11", "0-30", "PENDING", 1, Decimal("0")),  # not dispositioned: nothing owed yet
        ("2026-11", "2026-11", "0-30", "MATCHED", 5, Decimal("50.00")),
        ("2026-09", "2026-08", ">90", "CREDIT_REJECTED", 1, Decimal("7.50")),
    ]
    c = carry_over(rows, "2026-11")
    assert c["at_risk"] == Decimal("42.50")
    assert {b: (m["rows"], m["amount"]) for b, m in c["by_age"].items()} == {
        "0-30": (3, Decimal("15.00")),
        "31-60": (2, Decimal("20.00")),
        "61-90": (0, Decimal("0")),
        ">90": (1, Decimal("7.50")),
    }
    assert list(c["by_origin"]) == ["2026-08", "2026-10", "2026-11"]
    assert (c["carried_rows"], c["new_rows"]) == (4, 9)
    trend = trend_of(
        [("2026-10", 1, {"MATCHED": {"rows": 4, "amount_owed": "40.00"}})], "2026-11", c["statuses"]
    )
    assert [m["period"] for m in trend] == ["2026-10", "2026-11"]
    assert trend[1]["totals"]["PENDING"] == {"rows": 4, "amount_owed": "15.00"}
    chart = trend_chart(trend, {})
    assert [label["rows"] for label in chart["labels"]] == [4, 13]
