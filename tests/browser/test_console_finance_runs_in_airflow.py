"""Finance's page and the links from a run to what it did, in a real Airflow, from a demo month.

``returnledger demo`` runs the shipped month with faults (scenarios/small-month-faults.json, October closed on
November 3rd) through Airflow; ``airflow api-server`` then serves the console on that demo's ledger AND on
that demo's Airflow metadata database (its runs and task instances), with the simple auth manager, real
logins and real tokens; headless Chromium drives it:

* a Viewer opens Finance: the current month is the latest daily check's (the demo runs only the close,
  so the test makes November's daily check as of the demo's last day, as returns_reconciliation's daily
  run does); the closed month's figures (rows, credited and owed per status, their total, money at risk)
  equal the month-end report's CSV, downloaded from the page, which is byte for byte the report the close
  run wrote to the object store; a number opens its rows;
* a task of returns_sync that raised exceptions shows the extra link "exceptions raised by this run" (and
  the push_credits task that sent credit notes "credit notes sent by this run") in Airflow's task page;
  clicking it opens the console filtered to that run and task: the exceptions (credit notes) the ledger
  records for it, each linking back to the task instance's log.

Screenshots: docs/img/console-finance.png and console-run.png (README, operating guide).
``RETURNLEDGER_CONSOLE_DEMO_OUT=<OUT of an earlier make demo of that scenario>`` reuses that demo (its ledger
and its Airflow metadata database are left in place).
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import psycopg
import pytest

from airflow_api_server import running_api_server
from console_browser import MARKS, api_token, launch, login

ROOT = Path(__file__).resolve().parents[2]
IMG = ROOT / "docs" / "img"
PERIOD = "2026-10"
DAILY_KEY = "daily:2026-11-03"
DAILY_BATCH = "returns_reconciliation:daily:2026-11:2026-11-04T00:00"
AT_RISK = ("CREDIT_MISSING", "CREDIT_REJECTED", "PENDING")

pytestmark = MARKS
VIEWER, VIEWER_PASSWORD = "fiona.finance", "console-finance-viewer-pw"


def daily_check(ledger: str) -> str:
    """The daily check returns_reconciliation makes of the current month as of the demo's last day (the demo
    runs only the close): its result key."""
    from returnledger.reconciliation.match import reconcile

    as_of = datetime(2026, 11, 4, tzinfo=UTC)
    reconcile(ledger, "2026-11", as_of=as_of, batch_id=DAILY_BATCH, result_key=DAILY_KEY)
    return DAILY_KEY


@pytest.fixture(scope="module")
def server(tmp_path_factory, pg_server, demo):
    ledger, meta, out = demo
    daily_check(ledger)
    with running_api_server(
        tmp_path_factory.mktemp("console-finance"),
        pg_server,
        ledger,
        users={VIEWER: "viewer"},
        passwords={VIEWER: VIEWER_PASSWORD},
        dags_folder=ROOT / "dags",
        metadata_dsn=meta,
        # the store the demo's close runs wrote their reports to (OUT/closes/<period>/)
        extra_env={"AIRFLOW_VAR_RETURNLEDGER_REPORT_BASE": (out / "closes").as_uri()},
    ) as base:
        yield base


def _login(browser, base: str, path: str):
    """Signed in as the Viewer, in a page that may download (the report)."""
    return login(browser, base, path, VIEWER, VIEWER_PASSWORD, height=1100, accept_downloads=True)


def _csv_figures(data: bytes) -> tuple[dict, dict, Decimal]:
    by = defaultdict(lambda: {"rows": 0, "credited": Decimal(0), "owed": Decimal(0)})
    for r in csv.DictReader(io.StringIO(data.decode())):
        s = by[r["recon_status"]]
        s["rows"] += 1
        s["credited"] += Decimal(r["credited_amount"] or 0)
        s["owed"] += Decimal(r["amount_owed"] or 0)
    total = {k: sum((v[k] for v in by.values()), Decimal(0)) for k in ("rows", "credited", "owed")}
    at_risk = sum((v["owed"] for s, v in by.items() if s in AT_RISK), Decimal(0))
    return dict(by), total, at_risk


def test_finance_totals_equal_the_month_end_report(server, demo):
    from playwright.sync_api import expect, sync_playwright

    ledger, _, out = demo
    written = (out / "closes" / PERIOD / "month_end_report.csv").read_bytes()  # what the close run wrote
    by_status, total, at_risk = _csv_figures(written)
    assert total["rows"] > 0 and len(by_status) >= 3
    with psycopg.connect(ledger) as c:
        daily = sorted(
            r[0]
            for r in c.execute("SELECT DISTINCT period FROM ledger.recon_result WHERE period LIKE 'daily:%'")
        )
    assert DAILY_KEY in daily
    latest = daily[-1]

    IMG.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = _login(browser, server, "/returnledger/finance")
            expect(page.locator("nav")).to_contain_text(f"signed in as {VIEWER} (read only)")
            expect(page.locator("#current-title")).to_contain_text(f"daily check of {latest[6:]}")
            expect(page.locator(f"#closed-months tr[data-period='{PERIOD}'] td.rows")).to_have_text(
                str(total["rows"])
            )
            expect(page.locator("form[method=post]")).to_have_count(0)
            page.screenshot(path=str(IMG / "console-finance.png"), full_page=False)

            page.locator(f"#closed-months tr[data-period='{PERIOD}'] a").first.click()
            expect(page.locator("h1")).to_have_text(f"Closed month {PERIOD}")
            table = page.locator("#month-statuses")
            shown = {}
            for row in table.locator("tbody tr[data-status]").all():
                status = row.get_attribute("data-status")
                shown[status] = {
                    "rows": int(row.locator("td.rows").inner_text()),
                    "credited": Decimal(row.locator("td.credited").inner_text() or 0),
                    "owed": Decimal(row.locator("td.owed").inner_text() or 0),
                }
            assert shown == by_status
            foot = table.locator("tfoot tr[data-status='TOTAL']")
            assert int(foot.locator(".rows").inner_text()) == total["rows"]
            assert Decimal(foot.locator(".credited").inner_text()) == total["credited"]
            assert Decimal(foot.locator(".owed").inner_text()) == total["owed"]
            assert Decimal(page.locator("#month-at-risk").inner_text()) == at_risk
            # the report to download is the one the close wrote to the object store
            with page.expect_download() as dl:
                page.click("#download-csv")
            assert Path(dl.value.path()).read_bytes() == written
            # a number opens its rows
            status, figures = max(by_status.items(), key=lambda kv: (kv[1]["rows"] <= 500, kv[1]["rows"]))
            table.locator(f"tr[data-status='{status}'] td.rows a").click()
            expect(page.locator("#finance-rows tbody tr[data-row-key]")).to_have_count(figures["rows"])
        finally:
            browser.close()


def _a_task_that_raised(c) -> tuple[str, str, str, int]:
    row = c.execute(
        """SELECT run_dag_id, run_id, run_task_id, count(*) FROM ledger.exception
            WHERE run_dag_id = 'returns_sync' GROUP BY 1, 2, 3 ORDER BY 4 DESC, 2 LIMIT 1"""
    ).fetchone()
    assert row is not None, "no exception of the demo month names the run that raised it"
    return row


def test_the_extra_link_on_a_runs_task_opens_the_console_filtered_to_that_run(server, demo):
    from playwright.sync_api import expect, sync_playwright

    ledger, _, _ = demo
    with psycopg.connect(ledger) as c:
        dag_id, run_id, task_id, raised = _a_task_that_raised(c)
        tries = dict(
            c.execute(
                "SELECT exception_id, run_try_number FROM ledger.exception"
                " WHERE run_dag_id = %s AND run_id = %s AND run_task_id = %s",
                (dag_id, run_id, task_id),
            ).fetchall()
        )
        sent = c.execute(
            """SELECT run_id, count(DISTINCT document_id) FROM ledger.submission_attempt
                WHERE run_dag_id = 'returns_sync' AND run_task_id = 'push_credits' AND kind = 'CREDIT_NOTE'
                GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 1"""
        ).fetchone()
        assert sent is not None, "no credit note of the demo month names the run that sent it"
        silent = c.execute(
            """SELECT %s::text WHERE NOT EXISTS (SELECT 1 FROM ledger.exception
                WHERE run_dag_id = %s AND run_id = %s AND run_task_id = 'finish')""",
            ("finish", dag_id, run_id),
        ).fetchone()
    auth = {"Authorization": f"Bearer {api_token(server, VIEWER, VIEWER_PASSWORD)}"}

    def links(run: str, task: str) -> dict:
        r = httpx.get(
            f"{server}/api/v2/dags/{dag_id}/dagRuns/{run}/taskInstances/{task}/links",
            headers=auth,
            timeout=30,
        )
        assert r.status_code == 200, r.text
        return r.json()["extra_links"]

    raised_url = links(run_id, task_id)["exceptions raised by this run"]
    q = parse_qs(urlsplit(raised_url).query)
    assert urlsplit(raised_url).path == "/returnledger/runs"
    assert (q["dag_id"], q["run_id"], q["task_id"]) == ([dag_id], [run_id], [task_id])
    assert links(sent[0], "push_credits")["credit notes sent by this run"]
    if silent:  # a task that raised nothing gets no link
        assert links(run_id, "finish")["exceptions raised by this run"] is None

    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = _login(browser, server, "/returnledger/runs")
            page.goto(f"{server}/dags/{dag_id}/runs/{run_id}/tasks/{task_id}/details")  # its extra links
            link = page.get_by_role("link", name="exceptions raised by this run")
            expect(link).to_be_visible(timeout=60_000)
            link.click()
            page.wait_for_url("**/returnledger/runs?**")
            expect(page.locator("#run-task")).to_have_text(task_id)
            rows = page.locator("#run-exceptions tr[data-exception-id]")
            expect(rows).to_have_count(raised)
            first = int(rows.first.get_attribute("data-exception-id"))
            log_link = rows.first.locator("a.task-log")
            expected = f"/dags/{dag_id}/runs/"
            assert log_link.get_attribute("href").startswith(expected)
            assert log_link.get_attribute("href").endswith(f"/tasks/{task_id}?try_number={tries[first]}")
            page.screenshot(path=str(IMG / "console-run.png"), full_page=False)
            log_link.click()  # back to the task instance, its log
            page.wait_for_url(f"**/dags/{dag_id}/runs/**/tasks/{task_id}**")
            # the credit notes a push_credits task sent
            page.goto(f"{server}/dags/{dag_id}/runs/{sent[0]}/tasks/push_credits/details")
            page.get_by_role("link", name="credit notes sent by this run").click()
            page.wait_for_url("**/returnledger/runs?**")
            expect(page.locator("#run-credit-notes tr[data-credit-note]")).to_have_count(sent[1])
        finally:
            browser.close()
