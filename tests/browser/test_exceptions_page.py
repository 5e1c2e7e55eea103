"""The exceptions page in a real Airflow: log in, filter, fix an unmapped reason code from the browser,
and see that a Viewer gets the same pages without a single button.

Starts ``airflow api-server`` (Airflow metadata and ledger both in fresh
PostgreSQL databases, simple auth manager with a known user, this repo's
plugins/ and dags/) and drives it with headless Chromium through the real
Airflow login page. Ends with the ledger checked and a screenshot in
``test-output/`` (git-ignored).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from airflow_api_server import running_api_server
from console_browser import MARKS, launch, login, sign_in

ROOT = Path(__file__).resolve().parents[2]

pytestmark = MARKS
USER, PASSWORD = "olivia.ops", "console-browser-test-pw"
VIEWER, VIEWER_PASSWORD = "vera.viewer", "console-browser-viewer-pw"

SEED = """
INSERT INTO ledger.owner_team (exception_type, owner, sla_days, what_to_do) VALUES
 ('UNMAPPED_REASON_CODE', 'operations', 2,
  'Add the ReBound reason to the reason-code map; held lines are released on the next sync.'),
 ('SKU_MISMATCH', 'operations', 2, 'Add the SKU to the catalog.'),
 ('QUANTITY_MISMATCH', 'warehouse', 5, 'Recount the received units against the returns notice.');
INSERT INTO ledger.return_order (return_id, returns_notice, rma_id, vret, created_at) VALUES
 ('RB-2001', 'RN-701', 'RMA-71', 'VRET-71', '2026-10-01T08:00Z'),
 ('RB-2002', 'RN-702', 'RMA-72', 'VRET-72', '2026-10-02T08:00Z'),
 ('RB-2003', 'RN-703', 'RMA-73', 'VRET-73', '2026-09-20T08:00Z');
INSERT INTO ledger.return_line (return_id, line, sku, reason, quantity_announced, quantity_received, state)
VALUES
 ('RB-2001', 1, 'SKU-KETTLE', 'LID_LOOSE', 1, NULL, 'IN_TRANSIT'),
 ('RB-2002', 1, 'SKU-UNKNOWN', 'DEFECTIVE', 1, NULL, 'ANNOUNCED'),
 ('RB-2003', 1, 'SKU-TOASTER', 'DEFECTIVE', 3, 2, 'RECEIVED');
INSERT INTO ledger.line_history (return_id, line, from_state, to_state, event_id, cause, batch_id, at) VALUES
 ('RB-2001', 1, NULL, 'ANNOUNCED', 'ev-21', 'RETURN_CREATED', 'returns_sync:2026-10-01', '2026-10-01T08:00Z'),
 ('RB-2001', 1, 'ANNOUNCED', 'IN_TRANSIT', 'ev-22', 'IN_TRANSIT', 'returns_sync:2026-10-02',
  '2026-10-02T08:00Z');
WITH seed (event_key, event_id, payload, delivered_at, received_at, batch_id, status) AS (VALUES
 ('ev-23', 'ev-23',
  '{"event_id": "ev-23", "type": "RECEIVED", "return_id": "RB-2001", "line": 1, "quantity": 1}',
  '2026-10-03T08:00Z', '2026-10-04T00:00Z', 'returns_sync:2026-10-03', 'HELD')),
ins AS (INSERT INTO ledger.raw_event (event_key, event_id, payload, delivered_at, received_at, batch_id)
        SELECT event_key, event_id, payload::jsonb, delivered_at::timestamptz, received_at::timestamptz,
               batch_id
        FROM seed RETURNING raw_id, event_key)
INSERT INTO ledger.event_outcome (raw_id, status, batch_id, decided_at)
SELECT ins.raw_id, seed.status, seed.batch_id, seed.received_at::timestamptz
FROM ins JOIN seed USING (event_key)
WHERE seed.status <> 'NEW';
INSERT INTO ledger.exception (type, owner, subject_key, return_id, line, sku, detail, opened_at,
                              opened_by_batch)
VALUES
 ('UNMAPPED_REASON_CODE', 'operations', 'RB-2001|1', 'RB-2001', 1, 'SKU-KETTLE',
  'ReBound reason LID_LOOSE has no active Amazon mapping', '2026-10-03T08:00Z', 'returns_sync:2026-10-03'),
 ('SKU_MISMATCH', 'operations', 'RB-2002|1', 'RB-2002', 1, 'SKU-UNKNOWN',
  'SKU SKU-UNKNOWN is not in the catalog', '2026-10-02T08:00Z', 'returns_sync:2026-10-02'),
 ('QUANTITY_MISMATCH', 'warehouse', 'RB-2003|1', 'RB-2003', 1, 'SKU-TOASTER',
  'received 2 of 3 announced', '2026-09-21T08:00Z', 'returns_sync:2026-09-21');
INSERT INTO ledger.held_event (raw_id, return_id, line, reason, exception_id, held_at)
VALUES (1, 'RB-2001', 1, 'UNMAPPED_REASON_CODE', 1, '2026-10-04T00:00Z');
"""


@pytest.fixture
def airflow_server(tmp_path, pg_server, fresh_db):
    """A running api-server with the console plugin; yields (base_url, ledger_dsn)."""
    with psycopg.connect(fresh_db) as c:
        c.execute(SEED)
    with running_api_server(
        tmp_path,
        pg_server,
        fresh_db,
        users={USER: "op", VIEWER: "viewer"},
        passwords={USER: PASSWORD, VIEWER: VIEWER_PASSWORD},
        dags_folder=ROOT / "dags",
        extra_env={"AIRFLOW__CORE__PARALLELISM": "4"},
    ) as base:
        yield base, fresh_db


def test_exceptions_page_in_airflow(airflow_server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    base, ledger = airflow_server
    started = time.monotonic()
    assert httpx.get(f"{base}/returnledger/", timeout=5).status_code == 401  # mounted, and closed

    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_playwright() as p:
        browser = launch(p)
        try:
            # 1. unauthenticated: the console refuses and links to 2. the real Airflow login form
            page = login(browser, base, "/returnledger/?owner=operations", USER, PASSWORD, timeout=20_000)
            expect(page.locator("nav")).to_contain_text(f"signed in as {USER}")
            # 3. filter: operations' open unmapped reason codes
            page.select_option("select[name=owner]", "operations")
            page.select_option("select[name=type]", "UNMAPPED_REASON_CODE")
            page.click("#filters button[type=submit]")
            rows = page.locator("#exceptions tbody tr[data-exception-id]")
            expect(rows).to_have_count(1)
            expect(rows.first).to_contain_text("LID_LOOSE")
            page.screenshot(path=str(shots / "01-filtered.png"), full_page=True)
            # 4. open it: line history and the held raw payload are there
            rows.first.locator("a").first.click()
            expect(page.locator("h1")).to_contain_text("UNMAPPED_REASON_CODE")
            expect(page.locator("body")).to_contain_text("IN_TRANSIT")
            expect(page.locator("body")).to_contain_text('"quantity": 1')
            # 5. fix it: add the mapping
            page.fill("#mapping-form input[name=amazon_reason]", "CR-DEFECTIVE")
            page.screenshot(path=str(shots / "02-exception.png"), full_page=True)
            page.click("#mapping-form button[type=submit]")
            expect(page.locator(".msg")).to_contain_text(f"resolved by {USER}")
            expect(page.locator("h1")).to_contain_text("(resolved)")
            page.screenshot(path=str(shots / "03-resolved.png"), full_page=True)
            # 6. the console as Airflow's UI shows it (Browse > Returns exceptions, embedded)
            page.goto(f"{base}/plugin/returns-exceptions")
            frame = page.frame_locator("iframe")
            expect(frame.locator("nav")).to_contain_text(f"signed in as {USER}", timeout=30_000)
            page.screenshot(path=str(shots / "04-in-airflow-ui.png"), full_page=True)
            # 7. a Viewer, in a browser of their own: the same pages, no buttons
            viewer = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            viewer.set_default_timeout(20_000)
            viewer.goto(f"{base}/returnledger/exceptions/2")
            sign_in(viewer, base, VIEWER, VIEWER_PASSWORD)
            expect(viewer.locator("nav")).to_contain_text(f"signed in as {VIEWER} (read only)")
            expect(viewer.locator("h1")).to_contain_text("SKU_MISMATCH")
            expect(viewer.locator("#read-only")).to_contain_text("need the Op or Admin role")
            expect(viewer.locator("form[method=post]")).to_have_count(0)
            expect(viewer.locator("button", has_text="Add SKU")).to_have_count(0)
            viewer.screenshot(path=str(shots / "05-viewer-read-only.png"), full_page=True)
        finally:
            browser.close()

    with psycopg.connect(ledger) as c:
        assert c.execute(
            "SELECT amazon_reason, active, updated_by FROM ledger.reason_mapping"
            " WHERE rebound_reason = 'LID_LOOSE'"
        ).fetchone() == ("CR-DEFECTIVE", True, USER)
        assert c.execute(
            "SELECT status, resolved_by FROM ledger.exception WHERE exception_id = 1"
        ).fetchone() == ("resolved", USER)
        assert c.execute("SELECT status FROM ledger.exception WHERE exception_id IN (2, 3)").fetchall() == [
            ("open",),
            ("open",),
        ]
        audit = c.execute(
            "SELECT action, subject FROM ledger.audit_log WHERE actor = %s ORDER BY audit_id", (USER,)
        ).fetchall()
    assert ("exception.resolve_with_mapping", "exception:1") in audit

    out = ROOT / "test-output" / "browser"
    out.mkdir(parents=True, exist_ok=True)
    for shot in shots.iterdir():
        shutil.copy2(shot, out / shot.name)
    print(f"browser steps took {time.monotonic() - started:.1f}s; screenshots in {out}")
