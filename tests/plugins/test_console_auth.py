"""The exceptions console: every route needs an Airflow user, and the page works on a real ledger.

Tokens are signed and validated by Airflow's own SimpleAuthManager (same
JWT code as the api-server); only its revocation lookup, which needs the
Airflow metadata database, is left to the browser test. The ledger is a
fresh PostgreSQL database seeded with SQL.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone

import psycopg
import pytest

pytest.importorskip("airflow.api_fastapi.auth.managers.simple.simple_auth_manager")

from fastapi import FastAPI  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from returnledger.console import AirflowAuth, create_console_app, csrf_token_for  # noqa: E402

NOW = datetime(2026, 10, 6, 12, 0, tzinfo=timezone.utc)
PREFIX = "/returnledger"

SEED = """
INSERT INTO ledger.owner_team (exception_type, owner, sla_days, what_to_do) VALUES
 ('UNMAPPED_REASON_CODE', 'operations', 2, 'Add the ReBound reason to the reason-code map.'),
 ('SKU_MISMATCH', 'operations', 2, 'Add the SKU to the catalog.'),
 ('QUANTITY_MISMATCH', 'warehouse', 5, 'Recount the received units.'),
 ('INVALID_EVENT', 'integration', 3, 'Ask ReBound to resend.'),
 ('AMAZON_REJECTED', 'integration', 2, 'Read Amazon''s error and raise a corrected credit note.');
INSERT INTO ledger.return_order (return_id, returns_notice, rma_id, vret, created_at) VALUES
 ('RB-1001', 'RN-501', 'RMA-1', 'VRET-1', '2026-09-28T09:00Z'),
 ('RB-1002', 'RN-502', 'RMA-2', 'VRET-2', '2026-09-29T09:00Z'),
 ('RB-1003', 'RN-503', 'RMA-3', 'VRET-3', '2026-09-15T09:00Z');
INSERT INTO ledger.return_line (return_id, line, sku, reason, quantity_announced, quantity_received, grade,
                                disposition, state, received_at, dispositioned_at, updated_at) VALUES
 ('RB-1001', 1, 'SKU-KETTLE', 'LID_LOOSE', 1, NULL, NULL, NULL, 'IN_TRANSIT', NULL, NULL, '2026-09-30T10:00Z'),
 ('RB-1002', 1, 'SKU-NOT-IN-CATALOG', 'DEFECTIVE', 2, NULL, NULL, NULL, 'ANNOUNCED', NULL, NULL, '2026-09-29T10:00Z'),
 ('RB-1003', 1, 'SKU-TOASTER', 'DEFECTIVE', 3, 2, 'A', 'RESTOCKED', 'REJECTED', '2026-09-16T10:00Z',
  '2026-09-18T10:00Z', '2026-09-20T10:00Z');
INSERT INTO ledger.line_history (return_id, line, from_state, to_state, event_id, cause, batch_id, at) VALUES
 ('RB-1001', 1, NULL, 'ANNOUNCED', 'ev-1', 'RETURN_CREATED', 'returns_sync:2026-09-28', '2026-09-28T09:00Z'),
 ('RB-1001', 1, 'ANNOUNCED', 'IN_TRANSIT', 'ev-2', 'IN_TRANSIT', 'returns_sync:2026-09-30', '2026-09-30T10:00Z');
WITH seed (event_key, event_id, payload, delivered_at, received_at, batch_id, status) AS (VALUES
 ('ev-1', 'ev-1', '{"event_id": "ev-1", "type": "RETURN_CREATED", "return_id": "RB-1001"}',
  '2026-09-28T09:00Z', '2026-09-29T00:00Z', 'returns_sync:2026-09-28', 'APPLIED'),
 ('ev-3', 'ev-3', '{"event_id": "ev-3", "type": "RECEIVED", "return_id": "RB-1001", "line": 1, "quantity": 1}',
  '2026-10-01T09:00Z', '2026-10-02T00:00Z', 'returns_sync:2026-10-01', 'HELD'),
 ('ev-bad', 'ev-bad', '{"event_id": "ev-bad", "type": "GRADED", "return_id": "RB-1003", "grade": "Z"}',
  '2026-09-20T09:00Z', '2026-09-21T00:00Z', 'returns_sync:2026-09-20', 'INVALID')),
ins AS (INSERT INTO ledger.raw_event (event_key, event_id, payload, delivered_at, received_at, batch_id)
        SELECT event_key, event_id, payload::jsonb, delivered_at::timestamptz, received_at::timestamptz, batch_id
        FROM seed RETURNING raw_id, event_key)
INSERT INTO ledger.event_outcome (raw_id, status, batch_id, decided_at)
SELECT ins.raw_id, seed.status, seed.batch_id, seed.received_at::timestamptz FROM ins JOIN seed USING (event_key)
WHERE seed.status <> 'NEW';
INSERT INTO ledger.exception (type, owner, status, subject_key, return_id, line, sku, raw_id, detail,
                              opened_at, opened_by_batch, resolved_at, resolved_by, resolution) VALUES
 ('UNMAPPED_REASON_CODE', 'operations', 'open', 'RB-1001|1', 'RB-1001', 1, 'SKU-KETTLE', NULL,
  'ReBound reason LID_LOOSE has no active Amazon mapping', '2026-10-01T09:00Z', 'returns_sync:2026-10-01',
  NULL, NULL, NULL),
 ('SKU_MISMATCH', 'operations', 'open', 'RB-1002|1', 'RB-1002', 1, 'SKU-NOT-IN-CATALOG', NULL,
  'SKU SKU-NOT-IN-CATALOG is not in the catalog', '2026-10-05T09:00Z', 'returns_sync:2026-10-05',
  NULL, NULL, NULL),
 ('QUANTITY_MISMATCH', 'warehouse', 'open', 'RB-1003|1', 'RB-1003', 1, 'SKU-TOASTER', NULL,
  'received 2 of 3 announced', '2026-09-16T10:00Z', 'returns_sync:2026-09-16', NULL, NULL, NULL),
 ('INVALID_EVENT', 'integration', 'resolved', 'raw:3', 'RB-1003', NULL, NULL, 3,
  'grade Z is not a grade', '2026-09-20T10:00Z', 'returns_sync:2026-09-20', '2026-09-22T10:00Z', 'ops',
  'ReBound resent the event'),
 ('AMAZON_REJECTED', 'integration', 'open', 'RB-1003|1', 'RB-1003', 1, 'SKU-TOASTER', NULL,
  'credit note CN-RN-503-1 failed: InvalidReturnsReference', '2026-09-21T10:00Z', 'returns_sync:2026-09-21',
  NULL, NULL, NULL);
INSERT INTO ledger.held_event (raw_id, return_id, line, reason, exception_id, held_at) VALUES
 (2, 'RB-1001', 1, 'UNMAPPED_REASON_CODE', 1, '2026-10-02T00:00Z');
INSERT INTO ledger.amazon_submission (idempotency_key, kind, return_id, line, sku, asin, quantity, unit_amount,
   currency, document_id, status, transaction_id, attempts, last_error, created_at, created_batch,
   submitted_at, resolved_at) VALUES
 ('credit:RB-1003:1', 'CREDIT_NOTE', 'RB-1003', 1, 'SKU-TOASTER', 'B0TOASTER1', 2, 24.99, 'GBP', 'CN-RN-503-1',
  'FAILED', 'tx-9', 1, '{"errors":[{"code":"InvalidReturnsReference"}]}', '2026-09-18T12:00Z',
  'returns_sync:2026-09-18', '2026-09-18T12:05Z', '2026-09-19T12:00Z');
"""

ROUTES = [
    ("GET", f"{PREFIX}/"),
    ("GET", f"{PREFIX}/?owner=operations&status=open"),
    ("GET", f"{PREFIX}/exceptions/1"),
    ("POST", f"{PREFIX}/exceptions/1/resolve"),
    ("POST", f"{PREFIX}/exceptions/1/dismiss"),
    ("POST", f"{PREFIX}/exceptions/5/retry"),
    ("POST", f"{PREFIX}/exceptions/1/mapping"),
    ("POST", f"{PREFIX}/exceptions/2/sku"),
    ("GET", f"{PREFIX}/no-such-page"),
]
FORM = {"resolution": "done", "reason": "noise", "amazon_reason": "CR-DEFECTIVE", "asin": "B0NEW00001",
        "unit_cost": "12.50", "available": "4"}


class SimpleManagerAuth(AirflowAuth):
    """Airflow's SimpleAuthManager signs and checks the tokens; no metadata DB for revocations here."""

    def __init__(self):
        from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

        self.manager = SimpleAuthManager()

    def _manager(self):
        return self.manager

    async def user_from_token(self, token: str):
        claims = await self.manager._get_token_validator().avalidated_claims(token)
        return self.manager.deserialize_user(claims)


@pytest.fixture
def ledger(fresh_db):
    with psycopg.connect(fresh_db) as c:
        c.execute(SEED)
    return fresh_db


@pytest.fixture
def auth(monkeypatch):
    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "console-test-secret-not-for-production-" + "x" * 40)
    return SimpleManagerAuth()


def token_for(auth: SimpleManagerAuth, username: str, role: str | None = "OP", valid_for: int = 600) -> str:
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return auth.manager.generate_jwt(SimpleAuthManagerUser(username=username, role=role),
                                     expiration_time_in_seconds=valid_for)


@pytest.fixture
def client(ledger, auth):
    root = FastAPI()  # mounted like the api-server mounts plugin apps
    root.mount(PREFIX, create_console_app(dsn_provider=lambda: ledger, auth=auth, clock=lambda: NOW))
    with TestClient(root, base_url="http://airflow.test") as c:
        yield c


def ledger_state(dsn: str) -> tuple:
    with psycopg.connect(dsn) as c:
        return (c.execute("SELECT exception_id, status, resolved_by FROM ledger.exception ORDER BY 1").fetchall(),
                c.execute("SELECT count(*) FROM ledger.audit_log").fetchone()[0],
                c.execute("SELECT count(*) FROM ledger.reason_mapping").fetchone()[0],
                c.execute("SELECT count(*) FROM ledger.sku").fetchone()[0])


def listed_ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'data-exception-id="(\d+)"', html)]


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([0-9a-f]+)"', html).group(1)


# --- refusals ----------------------------------------------------------------------------------

@pytest.mark.parametrize("method,path", ROUTES)
def test_every_route_refuses_requests_without_a_token(client, ledger, method, path):
    before = ledger_state(ledger)
    r = client.request(method, path, data=FORM if method == "POST" else None)
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == "Bearer"
    assert ledger_state(ledger) == before


@pytest.mark.parametrize("method,path", ROUTES)
def test_every_route_refuses_forged_and_expired_tokens(client, auth, ledger, method, path):
    before = ledger_state(ledger)
    data = FORM if method == "POST" else None
    forged = token_for(auth, "mallory")[:-4] + "AAAA"  # signature no longer matches
    assert client.request(method, path, data=data, cookies={"_token": forged}).status_code == 403
    assert client.request(method, path, data=data,
                          headers={"Authorization": f"Bearer {forged}"}).status_code == 403
    assert client.request(method, path, data=data,
                          headers={"Authorization": "Bearer not-a-jwt"}).status_code == 403
    expired = token_for(auth, "ops1", valid_for=-3600)
    assert client.request(method, path, data=data,
                          headers={"Authorization": f"Bearer {expired}"}).status_code == 401
    # a valid token signed with another deployment's secret
    import jwt

    foreign = jwt.encode({"sub": "ops1", "role": "ADMIN", "exp": 4102444800, "iat": 0, "nbf": 0},
                         "another-deployment-secret-" + "y" * 50, algorithm="HS512")
    assert client.request(method, path, data=data,
                          headers={"Authorization": f"Bearer {foreign}"}).status_code == 403
    assert ledger_state(ledger) == before


@pytest.mark.parametrize("method,path", ROUTES)
def test_user_without_a_role_is_forbidden(client, auth, ledger, method, path):
    token = token_for(auth, "nobody", role=None)
    r = client.request(method, path, data=FORM if method == "POST" else None,
                       headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 403


def test_browser_without_session_gets_401_page_with_airflow_login_link(client):
    r = client.get(f"{PREFIX}/?owner=operations", headers={"Accept": "text/html"})
    assert r.status_code == 401
    assert 'href="/auth/login?next=http%3A%2F%2Fairflow.test%2Freturnledger%2F%3Fowner%3Doperations"' in r.text


def test_valid_token_is_accepted_by_bearer_and_by_cookie(client, auth):
    token = token_for(auth, "ops1")
    assert client.get(f"{PREFIX}/", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    r = client.get(f"{PREFIX}/", cookies={"_token": token})
    assert r.status_code == 200 and "signed in as ops1" in r.text
    assert client.get(f"{PREFIX}/exceptions/1", cookies={"_token": token}).status_code == 200
    assert client.get(f"{PREFIX}/exceptions/999", cookies={"_token": token}).status_code == 404


# --- CSRF ----------------------------------------------------------------------------------------

def test_cookie_post_needs_the_forms_csrf_token_and_same_origin(client, auth, ledger):
    token = token_for(auth, "ops1")
    before = ledger_state(ledger)
    path = f"{PREFIX}/exceptions/3/dismiss"
    assert client.post(path, data={"reason": "x"}, cookies={"_token": token}).status_code == 403
    assert client.post(path, data={"reason": "x", "csrf_token": "0" * 64},
                       cookies={"_token": token}).status_code == 403
    good = csrf_of(client.get(f"{PREFIX}/exceptions/3", cookies={"_token": token}).text)
    assert good == csrf_token_for(token)
    assert client.post(path, data={"reason": "x", "csrf_token": good}, cookies={"_token": token},
                       headers={"Origin": "https://evil.example"}).status_code == 403
    other_user = csrf_token_for(token_for(auth, "ops2"))
    assert client.post(path, data={"reason": "x", "csrf_token": other_user},
                       cookies={"_token": token}).status_code == 403
    assert ledger_state(ledger) == before
    r = client.post(path, data={"reason": "duplicate of a recount", "csrf_token": good}, cookies={"_token": token},
                    headers={"Origin": "http://airflow.test"}, follow_redirects=False)
    assert r.status_code == 303, r.text
    assert r.headers["location"].startswith(f"{PREFIX}/exceptions/3?msg=")


# --- the page on a real ledger -------------------------------------------------------------------

def test_filters_by_owner_type_status_and_age(client, auth):
    h = {"Authorization": f"Bearer {token_for(auth, 'ops1', role='VIEWER')}"}
    assert sorted(listed_ids(client.get(f"{PREFIX}/", headers=h).text)) == [1, 2, 3, 5]  # open by default
    assert sorted(listed_ids(client.get(f"{PREFIX}/?status=all", headers=h).text)) == [1, 2, 3, 4, 5]
    assert listed_ids(client.get(f"{PREFIX}/?status=resolved", headers=h).text) == [4]
    assert sorted(listed_ids(client.get(f"{PREFIX}/?owner=operations", headers=h).text)) == [1, 2]
    assert listed_ids(client.get(f"{PREFIX}/?owner=warehouse", headers=h).text) == [3]
    assert listed_ids(client.get(f"{PREFIX}/?type=SKU_MISMATCH", headers=h).text) == [2]
    # as of 2026-10-06 12:00: #1 opened 5 days ago, #2 one day ago, #3 20 days, #5 15 days
    assert sorted(listed_ids(client.get(f"{PREFIX}/?min_age_days=3", headers=h).text)) == [1, 3, 5]
    assert sorted(listed_ids(client.get(f"{PREFIX}/?min_age_days=16", headers=h).text)) == [3]
    assert sorted(listed_ids(client.get(f"{PREFIX}/?owner=operations&min_age_days=3", headers=h).text)) == [1]
    page = client.get(f"{PREFIX}/?owner=operations", headers=h).text
    assert '<option value="operations" selected>' in page
    assert client.get(f"{PREFIX}/?type=NOT_A_TYPE", headers=h).status_code == 400
    assert client.get(f"{PREFIX}/?min_age_days=-1", headers=h).status_code == 400


def test_overdue_rows_are_flagged_against_the_owner_sla(client, auth):
    h = {"Authorization": f"Bearer {token_for(auth, 'ops1')}"}
    html = client.get(f"{PREFIX}/?status=all", headers=h).text
    overdue = {int(i) for i in re.findall(r'<tr class="overdue" data-exception-id="(\d+)"', html)}
    assert overdue == {1, 3, 5}   # 5 > 2, 20 > 5, 15 > 2 days; #2 is 1 day old, #4 resolved


def test_detail_shows_line_history_and_raw_payloads(client, auth):
    h = {"Authorization": f"Bearer {token_for(auth, 'ops1')}"}
    html = client.get(f"{PREFIX}/exceptions/1", headers=h).text
    assert "UNMAPPED_REASON_CODE" in html and "LID_LOOSE" in html
    assert "IN_TRANSIT" in html and "returns_sync:2026-09-30" in html        # line history
    assert "&#34;quantity&#34;: 1" in html or "&quot;quantity&quot;: 1" in html  # raw payload, escaped JSON
    assert 'id="mapping-form"' in html and 'id="sku-form"' not in html
    assert "Add the ReBound reason to the reason-code map." in html
    html2 = client.get(f"{PREFIX}/exceptions/2", headers=h).text
    assert 'id="sku-form"' in html2 and 'id="mapping-form"' not in html2
    html5 = client.get(f"{PREFIX}/exceptions/5", headers=h).text
    assert 'id="retry-form"' in html5
    html4 = client.get(f"{PREFIX}/exceptions/4", headers=h).text   # resolved: no action forms
    assert 'id="resolve-form"' not in html4 and "ReBound resent the event" in html4


def test_payload_text_is_escaped(client, auth, ledger):
    with psycopg.connect(ledger) as c:
        c.execute("UPDATE ledger.exception SET detail = '<script>alert(1)</script>' WHERE exception_id = 3")
    h = {"Authorization": f"Bearer {token_for(auth, 'ops1')}"}
    for path in (f"{PREFIX}/", f"{PREFIX}/exceptions/3"):
        html = client.get(path, headers=h).text
        assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def _post_as(client, auth, user, path, data):
    """Like the browser: session cookie, CSRF token from the exception page, then follow the redirect."""
    client.cookies.set("_token", token_for(auth, user))
    try:
        csrf = csrf_of(client.get(path.rsplit("/", 1)[0]).text)
        return client.post(path, data={**data, "csrf_token": csrf}, headers={"Origin": "http://airflow.test"},
                           follow_redirects=True)
    finally:
        client.cookies.clear()


def test_add_mapping_resolves_the_exception_as_the_signed_in_user(client, auth, ledger):
    r = _post_as(client, auth, "olivia.ops", f"{PREFIX}/exceptions/1/mapping", {"amazon_reason": "cr-defective"})
    assert r.status_code == 200 and "resolved by olivia.ops" in r.text
    with psycopg.connect(ledger) as c:
        assert c.execute("SELECT amazon_reason, active, updated_by FROM ledger.reason_mapping"
                         " WHERE rebound_reason = 'LID_LOOSE'").fetchone() == ("CR-DEFECTIVE", True, "olivia.ops")
        status, by = c.execute("SELECT status, resolved_by FROM ledger.exception WHERE exception_id = 1").fetchone()
        assert (status, by) == ("resolved", "olivia.ops")
        assert c.execute("SELECT count(*) FROM ledger.audit_log WHERE actor = 'olivia.ops'").fetchone()[0] >= 1


def test_add_mapping_refuses_a_code_amazon_does_not_have(client, auth, ledger):
    before = ledger_state(ledger)
    r = _post_as(client, auth, "olivia.ops", f"{PREFIX}/exceptions/1/mapping", {"amazon_reason": "BROKEN LID"})
    assert r.status_code == 400 and "Could not add the mapping" in r.text
    assert ledger_state(ledger) == before


def test_add_sku_resolves_the_sku_mismatch(client, auth, ledger):
    r = _post_as(client, auth, "sam.ops", f"{PREFIX}/exceptions/2/sku",
                 {"asin": "B0NEW00001", "unit_cost": "12.50", "available": "4"})
    assert r.status_code == 200, r.text
    with psycopg.connect(ledger) as c:
        assert c.execute("SELECT asin, unit_cost, available, updated_by FROM ledger.sku"
                         " WHERE sku = 'SKU-NOT-IN-CATALOG'").fetchone()[::3] == ("B0NEW00001", "sam.ops")
        assert c.execute("SELECT status, resolved_by FROM ledger.exception WHERE exception_id = 2"
                         ).fetchone() == ("resolved", "sam.ops")


def test_add_sku_refuses_bad_numbers(client, auth, ledger):
    before = ledger_state(ledger)
    for bad in ({"asin": "B0X", "unit_cost": "twelve", "available": "4"},
                {"asin": "B0X", "unit_cost": "1.00", "available": "-2"}):
        r = _post_as(client, auth, "sam.ops", f"{PREFIX}/exceptions/2/sku", bad)
        assert r.status_code == 400
    assert ledger_state(ledger) == before


def test_resolve_and_dismiss_record_actor_and_text(client, auth, ledger):
    assert _post_as(client, auth, "wendy.wh", f"{PREFIX}/exceptions/3/resolve",
                    {"resolution": "recounted: 2 units"}).status_code == 200
    assert _post_as(client, auth, "ivan.int", f"{PREFIX}/exceptions/5/dismiss",
                    {"reason": "credit raised by hand in Vendor Central"}).status_code == 200
    with psycopg.connect(ledger) as c:
        rows = c.execute("SELECT exception_id, status, resolved_by, resolution, resolved_at FROM ledger.exception"
                         " WHERE exception_id IN (3, 5) ORDER BY 1").fetchall()
    assert [r[:3] for r in rows] == [(3, "resolved", "wendy.wh"), (5, "dismissed", "ivan.int")]
    assert "recounted: 2 units" in rows[0][3] and "Vendor Central" in rows[1][3]
    assert all(r[4] == NOW for r in rows)
    # acting twice (a second tab, a double click) is refused, not silently repeated
    token = token_for(auth, "wendy.wh")
    client.cookies.set("_token", token)
    r = client.post(f"{PREFIX}/exceptions/3/resolve", data={"resolution": "again", "csrf_token": csrf_token_for(token)})
    client.cookies.clear()
    assert r.status_code == 409 and "already resolved" in r.text


def test_retry_puts_the_rejected_credit_note_back_in_the_outbox(client, auth, ledger):
    r = _post_as(client, auth, "ivan.int", f"{PREFIX}/exceptions/5/retry", {})
    assert r.status_code == 200, r.text
    with psycopg.connect(ledger) as c:
        assert c.execute("SELECT status FROM ledger.amazon_submission WHERE idempotency_key = 'credit:RB-1003:1'"
                         ).fetchone()[0] != "FAILED"
        assert c.execute("SELECT count(*) FROM ledger.audit_log WHERE actor = 'ivan.int'").fetchone()[0] >= 1


def test_empty_required_fields_are_refused(client, auth, ledger):
    before = ledger_state(ledger)
    r = _post_as(client, auth, "wendy.wh", f"{PREFIX}/exceptions/3/resolve", {"resolution": "  "})
    assert r.status_code == 400 and "resolution is required" in r.text
    assert ledger_state(ledger) == before
