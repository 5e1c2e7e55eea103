"""Reconcile -> post-hoc returns -> month-end report, twice: same files, no duplicates, totals that tie
out."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from decimal import Decimal

import pytest
from test_reconcile_helpers import AS_OF, PERIOD, Ledger, build_month

from returnledger.reconciliation.dark_returns import create_post_hoc_returns
from returnledger.reconciliation.match import reconcile
from returnledger.reports.finance import CSV_NAME, HTML_NAME, REPORT_COLUMNS, write_month_end_report

pytestmark = pytest.mark.integration


class FakeRebound:
    """ReBound's post-hoc endpoint as the contract says: idempotent on the Amazon return id."""

    def __init__(self):
        self.records: dict[str, dict] = {}
        self.calls = 0

    def create_post_hoc_return(
        self, *, amazon_return_id, returns_notice, rma_id, sku, asin, quantity, returned_at, reason=None
    ):
        self.calls += 1
        rec = self.records.setdefault(
            amazon_return_id,
            {
                "return_id": f"RB-POSTHOC-{len(self.records) + 1}",
                "amazon_return_id": amazon_return_id,
                "returns_notice": returns_notice,
                "sku": sku,
                "quantity": quantity,
                "returned_at": returned_at,
            },
        )
        return dict(rec)


def close_period(dsn, client, out_uri):
    reconcile(dsn, PERIOD, as_of=AS_OF, batch_id="returns_reconciliation:2026-11-03")
    created = create_post_hoc_returns(dsn, client, at=AS_OF, batch_id="returns_reconciliation:2026-11-03")
    return created, write_month_end_report(dsn, PERIOD, out_uri)


@pytest.fixture
def led(fresh_db):
    ledger = Ledger(fresh_db)
    build_month(ledger)
    yield ledger
    ledger.close()


def test_close_twice_is_identical(led, tmp_path):
    client = FakeRebound()
    out = f"file://{tmp_path}/2026-10"
    created, totals = close_period(led.dsn, client, out)
    # AR-APRL-1, AR-1-X and September's AR-OLD-DARK (no September close reported it); AR-APRL-2 was linked
    assert created == 3 and client.calls == 3
    first_csv = (tmp_path / "2026-10" / CSV_NAME).read_bytes()
    first_html = (tmp_path / "2026-10" / HTML_NAME).read_bytes()
    exceptions = led.conn.execute(
        "SELECT exception_id, type, subject_key, status FROM ledger.exception ORDER BY 1"
    ).fetchall()
    orders = led.conn.execute(
        "SELECT * FROM ledger.return_order WHERE source = 'POST_HOC' ORDER BY 1"
    ).fetchall()
    assert [o[0] for o in orders] == ["RB-PH-2", "RB-POSTHOC-1", "RB-POSTHOC-2", "RB-POSTHOC-3"]

    created_again, totals_again = close_period(led.dsn, client, out)
    assert created_again == 0 and client.calls == 3  # nothing left to create; ReBound not asked again
    assert (tmp_path / "2026-10" / CSV_NAME).read_bytes() == first_csv
    assert (tmp_path / "2026-10" / HTML_NAME).read_bytes() == first_html
    assert totals_again == totals
    assert (
        led.conn.execute(
            "SELECT exception_id, type, subject_key, status FROM ledger.exception ORDER BY 1"
        ).fetchall()
        == exceptions
    )
    assert (
        led.conn.execute("SELECT * FROM ledger.return_order WHERE source = 'POST_HOC' ORDER BY 1").fetchall()
        == orders
    )


def test_report_rows_and_dark_returns(led, tmp_path):
    client = FakeRebound()
    _, totals = close_period(led.dsn, client, str(tmp_path))
    rows = list(csv.DictReader(io.StringIO((tmp_path / CSV_NAME).read_text())))
    assert list(rows[0])[: len(REPORT_COLUMNS)] == REPORT_COLUMNS
    keyed = {(r["return_id"] + "|" + r["line"]) if r["return_id"] else r["amazon_return_id"]: r for r in rows}
    assert len(keyed) == len(rows) == totals["rows"] == 19  # with September's RB-OLD|1 and AR-OLD-DARK
    dark = keyed["AR-APRL-1"]
    assert dark["recon_status"] == "DARK_RETURN" and dark["return_id"] == "" and dark["line"] == ""
    assert dark["post_hoc_return_id"] == client.records["AR-APRL-1"]["return_id"]
    assert keyed["RB-2|1"]["credited_amount"] == "10.00" and keyed["RB-2|1"]["charged_amount"] == "15.00"
    assert keyed["RB-2|1"]["amazon_return_id"] == "AR-2-1"
    html = (tmp_path / HTML_NAME).read_text()
    assert "<svg" in html and "CREDIT_MISMATCH" in html and "RN-RB-2" in html


def test_totals_tie_out(led, tmp_path):
    _, totals = close_period(led.dsn, FakeRebound(), str(tmp_path))
    rows = list(csv.DictReader(io.StringIO((tmp_path / CSV_NAME).read_text())))
    per = defaultdict(lambda: defaultdict(Decimal))
    for r in rows:
        p = per[r["recon_status"]]
        p["rows"] += 1
        for col, measure in [
            ("quantity_received", "units_received"),
            ("amazon_quantity", "amazon_units"),
            ("credited_quantity", "credited_quantity"),
            ("credited_amount", "credited_amount"),
            ("charged_amount", "charged_amount"),
        ]:
            p[measure] += Decimal(r[col] or 0)
    # the file, the per-status totals and the grand total agree
    for status, measures in per.items():
        for m, v in measures.items():
            assert Decimal(str(totals["by_status"][status][m])) == v, (status, m)
    for m in [
        "rows",
        "units_received",
        "amazon_units",
        "credited_quantity",
        "credited_amount",
        "charged_amount",
    ]:
        assert sum(per[s][m] for s in per) == Decimal(str(totals["total"][m])), m
    assert Decimal(totals["total"]["credited_amount"]) == Decimal("12.50") * 2 + Decimal("10.00") + Decimal(
        "25.00"
    ) + Decimal("4.99") + Decimal("4.99") + Decimal("12.50") + Decimal("10.00") + Decimal(
        "10.00"
    )  # every credit note row of the period, whatever its status
    assert totals["by_status"]["DARK_RETURN"]["amazon_units"] == 4


def test_empty_period_is_refused(led, tmp_path):
    with pytest.raises(LookupError, match="2026-08"):
        write_month_end_report(led.dsn, "2026-08", str(tmp_path))
    assert not (tmp_path / CSV_NAME).exists()


def test_real_rebound_client_against_sandbox(led, tmp_path, scenarios_dir):
    """The post-hoc step with the real ReBound client against the simulated ReBound API."""
    from returnledger.clients.rebound import ReboundClient
    from returnledger_dev.sandbox.rebound_sim import build_rebound_app
    from returnledger_dev.sandbox.scenario import load_scenario
    from returnledger_dev.sandbox.server import serve_in_thread

    scenario = load_scenario(scenarios_dir / "small-month.json")
    app = build_rebound_app(scenario, out_dir=tmp_path, faults=False)
    with serve_in_thread(app) as url, ReboundClient(url, "sandbox-client", "sandbox-secret") as client:
        reconcile(led.dsn, PERIOD, as_of=AS_OF, batch_id="b")
        assert create_post_hoc_returns(led.dsn, client, at=AS_OF, batch_id="b") == 3
        assert create_post_hoc_returns(led.dsn, client, at=AS_OF, batch_id="b") == 0
    linked = dict(
        led.conn.execute(
            "SELECT amazon_return_id, linked_return_id FROM ledger.amazon_return"
            " WHERE linked_return_id IS NOT NULL"
        ).fetchall()
    )
    created = [json.loads(x) for x in (tmp_path / "rebound_created_returns.jsonl").read_text().splitlines()]
    assert sorted(r["amazon_return_id"] for r in created) == [
        "AR-1-X",
        "AR-APRL-1",
        "AR-OLD-DARK",
    ]  # once each
    assert linked == {"AR-APRL-2": "RB-PH-2", **{r["amazon_return_id"]: r["return_id"] for r in created}}
    orders = led.conn.execute(
        "SELECT return_id, source, amazon_return_id, returns_notice FROM ledger.return_order"
        " WHERE source = 'POST_HOC' AND amazon_return_id = 'AR-APRL-1'"
    ).fetchall()
    assert orders == [(linked["AR-APRL-1"], "POST_HOC", "AR-APRL-1", "RN-APRL-1")]
