"""Find a return, its story and the owner teams' queues in a real Airflow, from a demo month's ledger.

``returnledger demo`` runs the shipped month with faults (scenarios/small-month-faults.json) through
Airflow into a ledger of its own; ``airflow api-server`` then serves the console on that ledger (simple
auth manager, real logins, real tokens) and headless Chromium drives it:

* a Viewer finds one return by each of its references (return id, order reference, RMA, VRET, returns
  notice, SKU, credit note) and reads its story: its lines, every event with its payload, its exceptions
  and credit notes, each code beside its plain words;
* a team's queue lists its overdue exceptions first; the Browse menu shows each team's counts;
* a Viewer sees no action anywhere, and a Viewer's post is refused (403), the ledger unchanged.

The screenshots of each page go to docs/img/console-*.png (shown in the README and the operating guide).
``RETURNLEDGER_CONSOLE_DEMO_OUT=<OUT of an earlier make demo of that scenario>`` reuses that demo's ledger
instead of running the month again (it is then left in place).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest
import yaml

from airflow_api_server import running_api_server
from console_browser import MARKS, api_token, launch, login

ROOT = Path(__file__).resolve().parents[2]
IMG = ROOT / "docs" / "img"
AS_OF = "2026-11-04"  # the team queue's reference day: the day after the demo's last (its last run)

pytestmark = MARKS
OP, OP_PASSWORD = "olga.op", "console-returns-op-pw"
VIEWER, VIEWER_PASSWORD = "carl.customer", "console-returns-viewer-pw"


@pytest.fixture(scope="module")
def demo_ledger(demo):
    """The ledger of the demo month (tests/browser/conftest.py)."""
    return demo[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory, pg_server, demo_ledger):
    with running_api_server(
        tmp_path_factory.mktemp("console-returns"),
        pg_server,
        demo_ledger,
        users={OP: "op", VIEWER: "viewer"},
        passwords={OP: OP_PASSWORD, VIEWER: VIEWER_PASSWORD},
        dags_folder=ROOT / "dags",
        extra_env={"AIRFLOW__CORE__PARALLELISM": "4"},
    ) as base:
        yield base


def _sla_days(c) -> dict[str, int]:
    days = {
        t: v["sla_days"]
        for t, v in yaml.safe_load((ROOT / "include/reference/owners.yaml").read_text()).items()
    }
    days.update(dict(c.execute("SELECT exception_type, sla_days FROM ledger.owner_team").fetchall()))
    return days


def _a_return_with_everything(c) -> dict:
    """The demo return with the most events among those with every reference, a credit note and an
    exception: its references, as plain SQL reads them."""
    row = c.execute(
        """SELECT o.return_id, o.order_reference, o.rma_id, o.vret, o.returns_notice,
                  (SELECT min(sku) FROM ledger.return_line l WHERE l.return_id = o.return_id),
                  (SELECT min(credit_note_id) FROM ledger.credit_note n WHERE n.return_id = o.return_id)
             FROM ledger.return_order o
            WHERE o.order_reference IS NOT NULL AND o.rma_id IS NOT NULL AND o.vret IS NOT NULL
              AND o.returns_notice IS NOT NULL
              AND EXISTS (SELECT 1 FROM ledger.credit_note n WHERE n.return_id = o.return_id)
              AND EXISTS (SELECT 1 FROM ledger.exception x WHERE x.return_id = o.return_id)
            ORDER BY (SELECT count(*) FROM ledger.raw_event r WHERE r.return_id = o.return_id) DESC, 1
            LIMIT 1"""
    ).fetchone()
    assert row is not None, "the demo month has no return with a credit note and an exception"
    keys = ["return_id", "order_reference", "rma_id", "vret", "returns_notice", "sku", "credit_note_id"]
    return dict(zip(keys, row, strict=True))


def _find(page, base: str, text: str, return_id: str) -> None:
    """Type ``text`` in the search box; open the return from the results when there are several."""
    from playwright.sync_api import expect

    page.goto(f"{base}/returnledger/returns")
    page.fill("#find-q", text)
    page.click("#find-form button[type=submit]")
    page.wait_for_load_state()
    if "/returnledger/returns?" in page.url:  # several returns carry this reference: pick ours
        row = page.locator(f"#find-results tr[data-return-id='{return_id}']")
        expect(row).to_have_count(1)
        row.locator("a").first.click()
    expect(page.locator("h1")).to_have_text(f"Return {return_id}")


def test_a_viewer_finds_a_return_by_each_reference_and_reads_its_story(server, demo_ledger):
    from playwright.sync_api import expect, sync_playwright

    from returnledger.console.glossary import say

    with psycopg.connect(demo_ledger) as c:
        r = _a_return_with_everything(c)
        rid = r["return_id"]
        lines = c.execute(
            "SELECT line, state FROM ledger.return_line WHERE return_id = %s ORDER BY line", (rid,)
        ).fetchall()
        events = c.execute(
            "SELECT raw_id, event_id FROM ledger.raw_event WHERE return_id = %s ORDER BY raw_id", (rid,)
        ).fetchall()
        exceptions = c.execute(
            "SELECT count(*) FROM ledger.exception WHERE return_id = %s", (rid,)
        ).fetchone()[0]
        sharing_the_sku = c.execute(
            "SELECT count(DISTINCT return_id) FROM ledger.return_line WHERE sku = %s", (r["sku"],)
        ).fetchone()[0]
    IMG.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = login(browser, server, "/returnledger/returns", VIEWER, VIEWER_PASSWORD)
            expect(page.locator("nav")).to_contain_text(f"signed in as {VIEWER} (read only)")
            for field in (
                "return_id",
                "order_reference",
                "rma_id",
                "vret",
                "returns_notice",
                "credit_note_id",
            ):
                _find(page, server, r[field], rid)
            _find(page, server, r["rma_id"].lower(), rid)  # as an agent may type it
            # the SKU: every return with it is listed
            page.goto(f"{server}/returnledger/returns?q={r['sku']}")
            if sharing_the_sku > 1:
                expect(page.locator("#find-results tr[data-return-id]")).to_have_count(
                    min(sharing_the_sku, 500)
                )
                page.screenshot(path=str(IMG / "console-find-a-return.png"), full_page=False)
            _find(page, server, r["sku"], rid)
            # the story
            expect(page.locator("#lines tr[data-line]")).to_have_count(len(lines))
            for line, state in lines:
                expect(page.locator(f"#lines tr[data-line='{line}'] td.state")).to_contain_text(
                    f"{state} {say('line_state', state)}"
                )
            expect(page.locator("#events tr[data-did]")).to_have_count(len(events))
            expect(page.locator(f"#event-{events[0][0]}")).to_contain_text(events[0][1] or "")
            expect(page.locator(f"#event-{events[0][0]} pre")).to_contain_text('"return_id"')
            expect(page.locator("#exceptions tr[data-exception-id]")).to_have_count(exceptions)
            expect(page.locator(f"[id='note-{r['credit_note_id']}']")).to_contain_text(r["credit_note_id"])
            expect(page.locator("#timeline tr[data-kind='event']")).to_have_count(len(events))
            expect(page.locator("#timeline")).to_contain_text(say("story", "credit_note"))
            expect(page.locator("form[method=post]")).to_have_count(0)
            page.set_viewport_size({"width": 1400, "height": 1400})
            page.screenshot(path=str(IMG / "console-return-story.png"), full_page=False)
            out = ROOT / "test-output" / "browser"
            out.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out / "console-return-story-full.png"), full_page=True)
            page.goto(f"{server}/returnledger/glossary")
            expect(page.locator("table.glossary[data-kind='line_state']")).to_contain_text(
                say("line_state", "CREDIT_SUBMITTED")
            )
        finally:
            browser.close()


def test_a_team_queue_lists_its_overdue_exceptions_first_and_a_viewer_cannot_act(server, demo_ledger):
    from playwright.sync_api import expect, sync_playwright

    as_of = datetime.fromisoformat(AS_OF).replace(hour=23, minute=59, second=59, tzinfo=UTC)
    with psycopg.connect(demo_ledger) as c:
        sla = _sla_days(c)
        open_ = c.execute(
            "SELECT exception_id, owner, type, opened_at FROM ledger.exception WHERE status = 'open'"
        ).fetchall()
    overdue = {(i, o) for i, o, t, at in open_ if as_of > at + timedelta(days=sla[t])}
    by_team: dict[str, list[int]] = {}
    for i, o, _, _ in open_:
        by_team.setdefault(o, []).append(i)
    # the team with overdue and not-yet-due exceptions both, else the one with the most open
    team = max(
        by_team,
        key=lambda t: (0 < sum((i, t) in overdue for i in by_team[t]) < len(by_team[t]), len(by_team[t])),
    )
    expected_overdue = {i for i in by_team[team] if (i, team) in overdue}
    now = datetime.now(UTC)
    nav_counts = {
        t: (sum(now > at + timedelta(days=sla[ty]) for i, o, ty, at in open_ if o == t), len(ids))
        for t, ids in by_team.items()
    }

    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = login(browser, server, f"/returnledger/teams?as_of={AS_OF}", VIEWER, VIEWER_PASSWORD)
            cells = page.locator(f"#teams tr[data-team='{team}'] td")
            expect(cells.nth(1)).to_have_text(str(len(expected_overdue)))
            expect(cells.nth(2)).to_have_text(str(len(by_team[team])))
            page.screenshot(path=str(IMG / "console-team-queues.png"), full_page=False)
            page.locator(f"#teams tr[data-team='{team}'] a").click()
            rows = page.locator("#queue tr[data-exception-id]")
            expect(rows).to_have_count(len(by_team[team]))
            flags = rows.evaluate_all("rs => rs.map(r => [Number(r.dataset.exceptionId), r.dataset.overdue])")
            assert [f for _, f in flags] == sorted((f for _, f in flags), reverse=True)  # every 'yes' first
            assert {i for i, f in flags if f == "yes"} == expected_overdue
            expect(page.locator("#team-counts")).to_contain_text(
                f"{len(expected_overdue)} overdue of {len(by_team[team])} open"
            )
            expect(page.locator("form[method=post]")).to_have_count(0)
            page.screenshot(path=str(IMG / "console-team-queue.png"), full_page=False)
            # a Viewer opens the first one: no action, and a post is refused
            first = flags[0][0]
            rows.first.locator("a").first.click()
            expect(page.locator("#read-only")).to_contain_text("need the Op or Admin role")
            expect(page.locator("form[method=post]")).to_have_count(0)
            token = api_token(server, VIEWER, VIEWER_PASSWORD)
            refused = httpx.post(
                f"{server}/returnledger/exceptions/{first}/resolve",
                data={"resolution": "viewer tries"},
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            )
            assert refused.status_code == 403, refused.text
            # the navigation: each team's queue with its counts, for a Viewer too
            plugins = httpx.get(
                f"{server}/api/v2/plugins", headers={"Authorization": f"Bearer {token}"}, timeout=30
            )
            assert plugins.status_code == 200, plugins.text
            names = {v["name"] for pl in plugins.json()["plugins"] for v in pl["external_views"]}
            assert "Find a return" in names
            for t, (n_overdue, n_open) in nav_counts.items():
                assert f"Queue: {t} ({n_overdue} overdue / {n_open} open)" in names
            page.goto(f"{server}/")
            page.get_by_role("button", name="Browse").click()
            item = page.get_by_role("menuitem", name=f"Queue: {team} (", exact=False)
            expect(item).to_be_visible()
            page.screenshot(path=str(IMG / "console-nav.png"), full_page=False)
            item.click()
            # the UI's own route; it may append the embedded page's path once the frame has loaded
            expect(page).to_have_url(
                re.compile(f"/plugin/returns-queue-{team}(/returnledger/teams/{team})?$")
            )
            expect(page.frame_locator("iframe").locator("h1")).to_have_text(
                f"Queue of {team}", timeout=30_000
            )
        finally:
            browser.close()

    with psycopg.connect(demo_ledger) as c:
        assert c.execute(
            "SELECT status FROM ledger.exception WHERE exception_id = %s", (first,)
        ).fetchone() == ("open",)
    print(json.dumps({"team": team, "open": len(by_team[team]), "overdue": len(expected_overdue)}))
