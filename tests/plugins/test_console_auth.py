"""The exceptions console: every route needs an Airflow user, only Op and Admin may act, and the page
works on a real ledger.

Most tests mount the console in a TestClient with Airflow's own SimpleAuthManager installed as the
api-server's auth manager, so tokens are signed and validated by Airflow's code (the console asks
Airflow's ``get_user``); only the revocation lookup, which needs the Airflow metadata database, is
stubbed there. ``test_roles_in_the_real_api_server`` then runs Viewer, User, Op and Admin against a
real ``airflow api-server`` with real tokens from its login endpoint. The ledger is a fresh
PostgreSQL database seeded with SQL.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import psycopg
import pytest

pytest.importorskip("airflow.api_fastapi.auth.managers.simple.simple_auth_manager")

from fastapi import FastAPI
from fastapi.testclient import TestClient

from returnledger.console.app import create_console_app
from returnledger.console.auth import AirflowAuth, csrf_token_for

NOW = datetime(2026, 10, 6, 12, 0, tzinfo=UTC)
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
 ('RB-1001', 1, 'SKU-KETTLE', 'LID_LOOSE', 1, NULL, NULL, NULL, 'IN_TRANSIT', NULL, NULL,
  '2026-09-30T10:00Z'),
 ('RB-1002', 1, 'SKU-NOT-IN-CATALOG', 'DEFECTIVE', 2, NULL, NULL, NULL, 'ANNOUNCED', NULL, NULL,
  '2026-09-29T10:00Z'),
 ('RB-1003', 1, 'SKU-TOASTER', 'DEFECTIVE', 3, 2, 'A', 'RESTOCKED', 'REJECTED', '2026-09-16T10:00Z',
  '2026-09-18T10:00Z', '2026-09-20T10:00Z');
INSERT INTO ledger.line_history (return_id, line, from_state, to_state, event_id, cause, batch_id, at) VALUES
 ('RB-1001', 1, NULL, 'ANNOUNCED', 'ev-1', 'RETURN_CREATED', 'returns_sync:2026-09-28', '2026-09-28T09:00Z'),
 ('RB-1001', 1, 'ANNOUNCED', 'IN_TRANSIT', 'ev-2', 'IN_TRANSIT', 'returns_sync:2026-09-30',
  '2026-09-30T10:00Z');
WITH seed (event_key, event_id, payload, delivered_at, received_at, batch_id, status) AS (VALUES
 ('ev-1', 'ev-1', '{"event_id": "ev-1", "type": "RETURN_CREATED", "return_id": "RB-1001"}',
  '2026-09-28T09:00Z', '2026-09-29T00:00Z', 'returns_sync:2026-09-28', 'APPLIED'),
 ('ev-3', 'ev-3',
  '{"event_id": "ev-3", "type": "RECEIVED", "return_id": "RB-1001", "line": 1, "quantity": 1}',
  '2026-10-01T09:00Z', '2026-10-02T00:00Z', 'returns_sync:2026-10-01', 'HELD'),
 ('ev-bad', 'ev-bad', '{"event_id": "ev-bad", "type": "GRADED", "return_id": "RB-1003", "grade": "Z"}',
  '2026-09-20T09:00Z', '2026-09-21T00:00Z', 'returns_sync:2026-09-20', 'INVALID')),
ins AS (INSERT INTO ledger.raw_event (event_key, event_id, payload, delivered_at, received_at, batch_id)
        SELECT event_key, event_id, payload::jsonb, delivered_at::timestamptz, received_at::timestamptz,
               batch_id
        FROM seed RETURNING raw_id, event_key)
INSERT INTO ledger.event_outcome (raw_id, status, batch_id, decided_at)
SELECT ins.raw_id, seed.status, seed.batch_id, seed.received_at::timestamptz
FROM ins JOIN seed USING (event_key)
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
INSERT INTO ledger.credit_note (credit_note_id, return_id, created_at, created_batch) VALUES
 ('CN-RN-503-1', 'RB-1003', '2026-09-18T12:00Z', 'returns_sync:2026-09-18');
INSERT INTO ledger.amazon_submission (idempotency_key, kind, return_id, line, sku, asin, quantity,
   unit_amount, currency, document_id, status, transaction_id, attempts, last_error, created_at,
   created_batch, submitted_at, resolved_at) VALUES
 ('credit:RB-1003:1', 'CREDIT_NOTE', 'RB-1003', 1, 'SKU-TOASTER', 'B0TOASTER1', 2, 24.99, 'GBP',
  'CN-RN-503-1', 'FAILED', 'tx-9', 1, '{"errors":[{"code":"InvalidReturnsReference"}]}',
  '2026-09-18T12:00Z', 'returns_sync:2026-09-18', '2026-09-18T12:05Z', '2026-09-19T12:00Z');
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
FORM = {
    "resolution": "done",
    "reason": "noise",
    "amazon_reason": "CR-DEFECTIVE",
    "asin": "B0NEW00001",
    "unit_cost": "12.50",
    "available": "4",
}


@pytest.fixture
def ledger(fresh_db):
    with psycopg.connect(fresh_db) as c:
        c.execute(SEED)
    return fresh_db


class SimpleManager:
    """The api-server's auth manager for these tests: Airflow's SimpleAuthManager, installed where
    ``get_auth_manager()`` finds it, so the console's default AirflowAuth (Airflow's own ``get_user``)
    validates the tokens. Only the revocation lookup, which needs the Airflow metadata database, is
    stubbed; the real one runs in the api-server tests at the end of this file."""

    def __init__(self, monkeypatch):
        from airflow.api_fastapi import app as airflow_app
        from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager
        from airflow.models.revoked_token import RevokedToken

        self.manager = SimpleAuthManager()
        monkeypatch.setattr(airflow_app._AuthManagerState, "instance", self.manager)
        monkeypatch.setattr(RevokedToken, "is_revoked", classmethod(lambda cls, jti, **kw: False))


@pytest.fixture
def auth(monkeypatch):
    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "console-test-secret-not-for-production-" + "x" * 40)
    return SimpleManager(monkeypatch)


def token_for(auth: SimpleManager, username: str, role: str | None = "OP", valid_for: int = 600) -> str:
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return auth.manager.generate_jwt(
        SimpleAuthManagerUser(username=username, role=role), expiration_time_in_seconds=valid_for
    )


@pytest.fixture
def client(ledger, auth):
    root = FastAPI()  # mounted like the api-server mounts plugin apps
    root.mount(PREFIX, create_console_app(dsn_provider=lambda: ledger, auth=AirflowAuth(), clock=lambda: NOW))
    with TestClient(root, base_url="http://airflow.test") as c:
        yield c


def ledger_state(dsn: str) -> tuple:
    """Everything a console action can change: exceptions, audit log, mappings, catalog, submissions,
    lines."""
    with psycopg.connect(dsn) as c:
        return tuple(
            c.execute(q).fetchall()
            for q in (
                "SELECT exception_id, status, resolved_by, resolution FROM ledger.exception ORDER BY 1",
                "SELECT count(*) FROM ledger.audit_log",
                "SELECT rebound_reason, amazon_reason, active, updated_by FROM ledger.reason_mapping"
                " ORDER BY 1",
                "SELECT sku, asin, unit_cost, available, updated_by FROM ledger.sku ORDER BY 1",
                "SELECT idempotency_key, status, attempts FROM ledger.amazon_submission ORDER BY 1",
                "SELECT return_id, line, state FROM ledger.return_line ORDER BY 1, 2",
            )
        )


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
    assert (
        client.request(method, path, data=data, headers={"Authorization": f"Bearer {forged}"}).status_code
        == 403
    )
    assert (
        client.request(method, path, data=data, headers={"Authorization": "Bearer not-a-jwt"}).status_code
        == 403
    )
    expired = token_for(auth, "ops1", valid_for=-3600)
    assert (
        client.request(method, path, data=data, headers={"Authorization": f"Bearer {expired}"}).status_code
        == 401
    )
    # a valid token signed with another deployment's secret
    import jwt

    foreign = jwt.encode(
        {"sub": "ops1", "role": "ADMIN", "exp": 4102444800, "iat": 0, "nbf": 0},
        "another-deployment-secret-" + "y" * 50,
        algorithm="HS512",
    )
    assert (
        client.request(method, path, data=data, headers={"Authorization": f"Bearer {foreign}"}).status_code
        == 403
    )
    assert ledger_state(ledger) == before


@pytest.mark.parametrize("method,path", ROUTES)
def test_user_without_a_role_is_forbidden(client, auth, ledger, method, path):
    token = token_for(auth, "nobody", role=None)
    r = client.request(
        method, path, data=FORM if method == "POST" else None, headers={"Authorization": f"Bearer {token}"}
    )
    assert r.status_code == 403


def test_browser_without_session_gets_401_page_with_airflow_login_link(client):
    r = client.get(f"{PREFIX}/?owner=operations", headers={"Accept": "text/html"})
    assert r.status_code == 401
    assert (
        'href="/auth/login?next=http%3A%2F%2Fairflow.test%2Freturnledger%2F%3Fowner%3Doperations"' in r.text
    )


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
    assert (
        client.post(path, data={"reason": "x", "csrf_token": "0" * 64}, cookies={"_token": token}).status_code
        == 403
    )
    good = csrf_of(client.get(f"{PREFIX}/exceptions/3", cookies={"_token": token}).text)
    assert good == csrf_token_for(token)
    assert (
        client.post(
            path,
            data={"reason": "x", "csrf_token": good},
            cookies={"_token": token},
            headers={"Origin": "https://evil.example"},
        ).status_code
        == 403
    )
    other_user = csrf_token_for(token_for(auth, "ops2"))
    assert (
        client.post(
            path, data={"reason": "x", "csrf_token": other_user}, cookies={"_token": token}
        ).status_code
        == 403
    )
    assert ledger_state(ledger) == before
    r = client.post(
        path,
        data={"reason": "duplicate of a recount", "csrf_token": good},
        cookies={"_token": token},
        headers={"Origin": "http://airflow.test"},
        follow_redirects=False,
    )
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
    assert overdue == {1, 3, 5}  # 5 > 2, 20 > 5, 15 > 2 days; #2 is 1 day old, #4 resolved


def test_detail_shows_line_history_and_raw_payloads(client, auth):
    h = {"Authorization": f"Bearer {token_for(auth, 'ops1')}"}
    html = client.get(f"{PREFIX}/exceptions/1", headers=h).text
    assert "UNMAPPED_REASON_CODE" in html and "LID_LOOSE" in html
    assert "IN_TRANSIT" in html and "returns_sync:2026-09-30" in html  # line history
    assert "&#34;quantity&#34;: 1" in html or "&quot;quantity&quot;: 1" in html  # raw payload, escaped JSON
    assert 'id="mapping-form"' in html and 'id="sku-form"' not in html
    assert "Add the ReBound reason to the reason-code map." in html
    html2 = client.get(f"{PREFIX}/exceptions/2", headers=h).text
    assert 'id="sku-form"' in html2 and 'id="mapping-form"' not in html2
    html5 = client.get(f"{PREFIX}/exceptions/5", headers=h).text
    assert 'id="retry-form"' in html5
    html4 = client.get(f"{PREFIX}/exceptions/4", headers=h).text  # resolved: no action forms
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
        return client.post(
            path,
            data={**data, "csrf_token": csrf},
            headers={"Origin": "http://airflow.test"},
            follow_redirects=True,
        )
    finally:
        client.cookies.clear()


def test_add_mapping_resolves_the_exception_as_the_signed_in_user(client, auth, ledger):
    r = _post_as(
        client, auth, "olivia.ops", f"{PREFIX}/exceptions/1/mapping", {"amazon_reason": "cr-defective"}
    )
    assert r.status_code == 200 and "resolved by olivia.ops" in r.text
    with psycopg.connect(ledger) as c:
        assert c.execute(
            "SELECT amazon_reason, active, updated_by FROM ledger.reason_mapping"
            " WHERE rebound_reason = 'LID_LOOSE'"
        ).fetchone() == ("CR-DEFECTIVE", True, "olivia.ops")
        status, by = c.execute(
            "SELECT status, resolved_by FROM ledger.exception WHERE exception_id = 1"
        ).fetchone()
        assert (status, by) == ("resolved", "olivia.ops")
        assert (
            c.execute("SELECT count(*) FROM ledger.audit_log WHERE actor = 'olivia.ops'").fetchone()[0] >= 1
        )


def test_add_mapping_refuses_a_code_amazon_does_not_have(client, auth, ledger):
    before = ledger_state(ledger)
    r = _post_as(
        client, auth, "olivia.ops", f"{PREFIX}/exceptions/1/mapping", {"amazon_reason": "BROKEN LID"}
    )
    assert r.status_code == 400 and "Could not add the mapping" in r.text
    assert ledger_state(ledger) == before


def test_add_sku_resolves_the_sku_mismatch(client, auth, ledger):
    r = _post_as(
        client,
        auth,
        "sam.ops",
        f"{PREFIX}/exceptions/2/sku",
        {"asin": "B0NEW00001", "unit_cost": "12.50", "available": "4"},
    )
    assert r.status_code == 200, r.text
    with psycopg.connect(ledger) as c:
        assert c.execute(
            "SELECT asin, unit_cost, available, updated_by FROM ledger.sku WHERE sku = 'SKU-NOT-IN-CATALOG'"
        ).fetchone()[::3] == ("B0NEW00001", "sam.ops")
        assert c.execute(
            "SELECT status, resolved_by FROM ledger.exception WHERE exception_id = 2"
        ).fetchone() == ("resolved", "sam.ops")


def test_add_sku_refuses_bad_numbers(client, auth, ledger):
    before = ledger_state(ledger)
    for bad in (
        {"asin": "B0X", "unit_cost": "twelve", "available": "4"},
        {"asin": "B0X", "unit_cost": "1.00", "available": "-2"},
    ):
        r = _post_as(client, auth, "sam.ops", f"{PREFIX}/exceptions/2/sku", bad)
        assert r.status_code == 400
    assert ledger_state(ledger) == before


def test_resolve_and_dismiss_record_actor_and_text(client, auth, ledger):
    assert (
        _post_as(
            client, auth, "wendy.wh", f"{PREFIX}/exceptions/3/resolve", {"resolution": "recounted: 2 units"}
        ).status_code
        == 200
    )
    assert (
        _post_as(
            client,
            auth,
            "ivan.int",
            f"{PREFIX}/exceptions/5/dismiss",
            {"reason": "credit raised by hand in Vendor Central"},
        ).status_code
        == 200
    )
    with psycopg.connect(ledger) as c:
        rows = c.execute(
            "SELECT exception_id, status, resolved_by, resolution, resolved_at FROM ledger.exception"
            " WHERE exception_id IN (3, 5) ORDER BY 1"
        ).fetchall()
    assert [r[:3] for r in rows] == [(3, "resolved", "wendy.wh"), (5, "dismissed", "ivan.int")]
    assert "recounted: 2 units" in rows[0][3] and "Vendor Central" in rows[1][3]
    assert all(r[4] == NOW for r in rows)
    # acting twice (a second tab, a double click) is refused, not silently repeated
    token = token_for(auth, "wendy.wh")
    client.cookies.set("_token", token)
    r = client.post(
        f"{PREFIX}/exceptions/3/resolve", data={"resolution": "again", "csrf_token": csrf_token_for(token)}
    )
    client.cookies.clear()
    assert r.status_code == 409 and "already resolved" in r.text


def test_retry_puts_the_rejected_credit_note_back_in_the_outbox(client, auth, ledger):
    r = _post_as(client, auth, "ivan.int", f"{PREFIX}/exceptions/5/retry", {})
    assert r.status_code == 200, r.text
    with psycopg.connect(ledger) as c:
        assert (
            c.execute(
                "SELECT status FROM ledger.amazon_submission WHERE idempotency_key = 'credit:RB-1003:1'"
            ).fetchone()[0]
            != "FAILED"
        )
        assert c.execute("SELECT count(*) FROM ledger.audit_log WHERE actor = 'ivan.int'").fetchone()[0] >= 1


def test_empty_required_fields_are_refused(client, auth, ledger):
    before = ledger_state(ledger)
    r = _post_as(client, auth, "wendy.wh", f"{PREFIX}/exceptions/3/resolve", {"resolution": "  "})
    assert r.status_code == 400 and "resolution is required" in r.text
    assert ledger_state(ledger) == before


# --- who may act: Viewer and User read, Op and Admin act ------------------------------------------

POSTS = [(path, FORM) for method, path in ROUTES if method == "POST"]
DETAIL_PAGES = [f"{PREFIX}/exceptions/{i}" for i in (1, 2, 3, 5)]  # the open ones, each with its forms
ACTION_FORMS = ("resolve-form", "dismiss-form", "retry-form", "mapping-form", "sku-form")


def _forms_on(html: str) -> set[str]:
    """The action forms on a page (any form that posts counts, named or not)."""
    found = {f for f in ACTION_FORMS if f'id="{f}"' in html}
    return found | {"(a form that posts)"} if 'method="post"' in html else found


@pytest.mark.parametrize(
    "role", ["VIEWER", "USER", "viewer", "user"]
)  # the users config writes them lower-case
def test_read_only_roles_get_403_on_every_post_and_nothing_changes(client, auth, ledger, role):
    token = token_for(auth, "vera", role=role)
    before = ledger_state(ledger)
    for path, data in POSTS:
        r = client.post(path, data=data, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 403, (path, r.text)
        assert "may read the returns exceptions but not act on them" in r.json()["detail"]
        assert "Op or Admin role" in r.json()["detail"]
        # from the browser, with a valid CSRF token and same origin: still the role that decides
        client.cookies.set("_token", token)
        r = client.post(
            path,
            data={**data, "csrf_token": csrf_token_for(token)},
            headers={"Origin": "http://airflow.test", "Accept": "text/html"},
        )
        client.cookies.clear()
        assert r.status_code == 403 and "Not allowed" in r.text and "Op or Admin role" in r.text, path
        assert "signed in as vera" in r.text
    assert ledger_state(ledger) == before


@pytest.mark.parametrize("role", ["VIEWER", "USER"])
def test_read_only_roles_see_no_action_forms(client, auth, role):
    h = {"Authorization": f"Bearer {token_for(auth, 'vera', role=role)}"}
    for path in DETAIL_PAGES:
        html = client.get(path, headers=h).text
        assert _forms_on(html) == set(), path
        assert 'id="read-only"' in html and "need the Op or Admin role" in html
        assert 'name="csrf_token"' not in html
    listing = client.get(f"{PREFIX}/", headers=h).text
    assert 'method="post"' not in listing and "(read only)" in listing


@pytest.mark.parametrize("role", ["OP", "ADMIN", "op", "admin"])
def test_op_and_admin_see_the_action_forms(client, auth, role):
    h = {"Authorization": f"Bearer {token_for(auth, 'olivia', role=role)}"}
    seen = set()
    for path in DETAIL_PAGES:
        html = client.get(path, headers=h).text
        assert 'id="read-only"' not in html and "(read only)" not in html
        seen |= _forms_on(html)
    assert seen >= set(ACTION_FORMS)


@pytest.mark.parametrize("role", ["ADMIN", "admin"])
def test_admin_acts_like_op(client, auth, ledger, role):
    token = token_for(auth, "ada", role=role)
    r = client.post(
        f"{PREFIX}/exceptions/3/resolve",
        data={"resolution": "recounted"},
        headers={"Authorization": f"Bearer {token}"},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    with psycopg.connect(ledger) as c:
        assert c.execute(
            "SELECT status, resolved_by FROM ledger.exception WHERE exception_id = 3"
        ).fetchone() == ("resolved", "ada")


def test_every_state_changing_route_carries_the_act_guard():
    from fastapi.routing import APIRoute

    from returnledger.console.auth import require_may_act

    app = create_console_app(dsn_provider=lambda: "postgresql://unused")
    changing = [r for r in app.routes if isinstance(r, APIRoute) and set(r.methods) - {"GET", "HEAD"}]
    # one route per action of the exception-type registry (the CLI offers the same actions)
    assert {r.path for r in changing} == {
        "/exceptions/{exception_id}/" + v
        for v in ("resolve", "dismiss", "retry", "mapping", "sku", "credit-quantity", "pick")
    } | {"/closes/{period}/reopen"}
    for r in changing:
        assert require_may_act in [d.call for d in r.dependant.dependencies], r.path


def _closed_october(dsn: str) -> None:
    """October closed (version 1), as a close run stores it."""
    import gzip
    import hashlib

    csv_bytes, html = b"return_id\n", b"<html></html>"
    with psycopg.connect(dsn) as c:
        c.execute(
            "INSERT INTO ledger.period_close (period, version, period_end, as_of, batch_id, rows, totals,"
            " csv_gzip, csv_sha256, html, html_sha256) VALUES ('2026-10', 1, '2026-11-01T00:00Z',"
            " '2026-11-04T00:00Z', 'close-run', 0, '{}', %s, %s, %s, %s)",
            (
                gzip.compress(csv_bytes),
                hashlib.sha256(csv_bytes).hexdigest(),
                html,
                hashlib.sha256(html).hexdigest(),
            ),
        )


@pytest.mark.parametrize("role", ["OP", "VIEWER"])
def test_only_an_admin_may_reopen_a_closed_month(client, auth, ledger, role):
    _closed_october(ledger)
    h = {"Authorization": f"Bearer {token_for(auth, 'olivia', role=role)}"}
    page = client.get(f"{PREFIX}/closes", headers=h)
    assert page.status_code == 200 and "2026-10" in page.text and 'id="reopen-form"' not in page.text
    r = client.post(
        f"{PREFIX}/closes/2026-10/reopen", data={"reason": "x"}, headers=h, follow_redirects=False
    )
    assert r.status_code == 403, r.text
    with psycopg.connect(ledger) as c:
        assert c.execute("SELECT reopened_at FROM ledger.period_close").fetchall() == [(None,)]
        assert c.execute(
            "SELECT count(*) FROM ledger.audit_log WHERE action = 'reopen_period'"
        ).fetchone() == (0,)


def test_an_admin_reopens_a_closed_month_audited_and_its_report_is_kept(client, auth, ledger):
    _closed_october(ledger)
    client.cookies.set("_token", token_for(auth, "ada", role="ADMIN"))
    try:
        page = client.get(f"{PREFIX}/closes").text
        assert 'id="reopen-form"' in page
        r = client.post(
            f"{PREFIX}/closes/2026-10/reopen",
            data={"reason": "late Amazon credit", "csrf_token": csrf_of(page)},
            headers={"Origin": "http://airflow.test"},
            follow_redirects=True,
        )
    finally:
        client.cookies.clear()
    assert r.status_code == 200 and "2026-10 reopened by ada" in r.text
    with psycopg.connect(ledger) as c:
        assert c.execute(
            "SELECT version, reopened_by, reopen_reason FROM ledger.period_close"
        ).fetchall() == [(1, "ada", "late Amazon credit")]
        assert c.execute(
            "SELECT actor, subject, detail->>'reason' FROM ledger.audit_log WHERE action = 'reopen_period'"
        ).fetchall() == [("ada", "2026-10", "late Amazon credit")]


def test_unknown_methods_and_paths_need_the_act_permission_too(client, auth, ledger):
    token = token_for(auth, "vera", role="VIEWER")
    before = ledger_state(ledger)
    for method in ("PUT", "PATCH", "DELETE"):
        r = client.request(method, f"{PREFIX}/exceptions/1", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 403
    assert (
        client.post(f"{PREFIX}/no-such-action", headers={"Authorization": f"Bearer {token}"}).status_code
        == 403
    )
    assert ledger_state(ledger) == before


# --- the same in the real api-server, with real tokens from its login endpoint --------------------
#
# `airflow api-server` with this repo's plugins/, the SimpleAuthManager configured as a deployment
# does (AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS and a passwords file), Airflow metadata and ledger
# in fresh PostgreSQL databases. Tokens come from POST /auth/token, are validated by the api-server's
# own auth manager (revocation lookup included) and are sent as a Bearer header or as the UI's cookie.

SERVER_USERS = {"vera.viewer": "viewer", "uma.user": "user", "olivia.ops": "op", "ada.admin": "admin"}
ACTIONS = {
    "mapping": {"amazon_reason": "CR-DEFECTIVE"},
    "sku": {"asin": "B0OVERWRT1", "unit_cost": "0.01", "available": "999"},
    "retry": {},
    "resolve": {"resolution": "recounted"},
    "dismiss": {"reason": "duplicate"},
}


def _server_seed(sets: str) -> str:
    """Per set X: one open exception for each action (mapping, sku, retry, resolve, dismiss).

    The SKU_MISMATCH names a SKU already in the catalog, so a successful post overwrites its ASIN and
    unit cost: exactly what a read-only user must not be able to do."""
    sql = [
        """INSERT INTO ledger.owner_team (exception_type, owner, sla_days, what_to_do) VALUES
 ('UNMAPPED_REASON_CODE', 'operations', 2, 'Map it.'), ('SKU_MISMATCH', 'operations', 2, 'Fix the SKU.'),
 ('QUANTITY_MISMATCH', 'warehouse', 5, 'Recount.'), ('AMAZON_REJECTED', 'integration', 2, 'Retry.');"""
    ]
    for x in sets:
        sql.append(f"""
INSERT INTO ledger.sku (sku, asin, unit_cost, available, updated_at, updated_by)
 VALUES ('SKU-{x}', 'B0ORIGINAL', 24.99, 5, '2026-09-01T00:00Z', 'catalog');
INSERT INTO ledger.return_order (return_id, returns_notice, rma_id, vret, created_at) VALUES
 ('RB-{x}1', 'RN-{x}1', 'RMA-{x}1', 'VRET-{x}1', '2026-09-28T09:00Z'),
 ('RB-{x}2', 'RN-{x}2', 'RMA-{x}2', 'VRET-{x}2', '2026-09-28T09:00Z'),
 ('RB-{x}3', 'RN-{x}3', 'RMA-{x}3', 'VRET-{x}3', '2026-09-15T09:00Z'),
 ('RB-{x}4', 'RN-{x}4', 'RMA-{x}4', 'VRET-{x}4', '2026-09-15T09:00Z'),
 ('RB-{x}5', 'RN-{x}5', 'RMA-{x}5', 'VRET-{x}5', '2026-09-15T09:00Z');
INSERT INTO ledger.return_line (return_id, line, sku, reason, quantity_announced, quantity_received, grade,
                                disposition, state, received_at, dispositioned_at, updated_at) VALUES
 ('RB-{x}1', 1, 'SKU-KETTLE', 'LID_LOOSE_{x}', 1, NULL, NULL, NULL, 'IN_TRANSIT', NULL, NULL,
  '2026-09-30T10:00Z'),
 ('RB-{x}2', 1, 'SKU-{x}', 'DEFECTIVE', 1, NULL, NULL, NULL, 'ANNOUNCED', NULL, NULL, '2026-09-29T10:00Z'),
 ('RB-{x}3', 1, 'SKU-TOASTER', 'DEFECTIVE', 2, 2, 'A', 'RESTOCKED', 'REJECTED', '2026-09-16T10:00Z',
  '2026-09-18T10:00Z', '2026-09-20T10:00Z'),
 ('RB-{x}4', 1, 'SKU-TOASTER', 'DEFECTIVE', 3, 2, NULL, NULL, 'RECEIVED', '2026-09-16T10:00Z', NULL,
  '2026-09-16T10:00Z'),
 ('RB-{x}5', 1, 'SKU-TOASTER', 'DEFECTIVE', 3, 1, NULL, NULL, 'RECEIVED', '2026-09-16T10:00Z', NULL,
  '2026-09-16T10:00Z');
INSERT INTO ledger.credit_note (credit_note_id, return_id, created_at, created_batch) VALUES
 ('CN-RN-{x}3-1', 'RB-{x}3', '2026-09-18T12:00Z', 'returns_sync:2026-09-18');
INSERT INTO ledger.amazon_submission (idempotency_key, kind, return_id, line, sku, asin, quantity,
   unit_amount, currency, document_id, status, transaction_id, attempts, last_error, created_at,
   created_batch, submitted_at, resolved_at) VALUES
 ('credit:RB-{x}3:1', 'CREDIT_NOTE', 'RB-{x}3', 1, 'SKU-TOASTER', 'B0TOASTER1', 2, 24.99, 'GBP',
  'CN-RN-{x}3-1', 'FAILED', 'tx-{x}3', 1, '{{"errors":[{{"code":"InvalidReturnsReference"}}]}}',
  '2026-09-18T12:00Z', 'returns_sync:2026-09-18', '2026-09-18T12:05Z', '2026-09-19T12:00Z');
INSERT INTO ledger.exception (type, owner, subject_key, return_id, line, sku, detail, opened_at,
                              opened_by_batch) VALUES
 ('UNMAPPED_REASON_CODE', 'operations', 'RB-{x}1|1', 'RB-{x}1', 1, 'SKU-KETTLE', 'mapping {x}',
  '2026-10-01T09:00Z', 'returns_sync:2026-10-01'),
 ('SKU_MISMATCH', 'operations', 'RB-{x}2|1', 'RB-{x}2', 1, 'SKU-{x}', 'sku {x}', '2026-10-01T09:00Z',
  'returns_sync:2026-10-01'),
 ('AMAZON_REJECTED', 'integration', 'RB-{x}3|1', 'RB-{x}3', 1, 'SKU-TOASTER', 'retry {x}',
  '2026-09-21T10:00Z', 'returns_sync:2026-09-21'),
 ('QUANTITY_MISMATCH', 'warehouse', 'RB-{x}4|1', 'RB-{x}4', 1, 'SKU-TOASTER', 'resolve {x}',
  '2026-09-16T10:00Z', 'returns_sync:2026-09-16'),
 ('QUANTITY_MISMATCH', 'warehouse', 'RB-{x}5|1', 'RB-{x}5', 1, 'SKU-TOASTER', 'dismiss {x}',
  '2026-09-16T10:00Z', 'returns_sync:2026-09-16');""")
    return "\n".join(sql)


@pytest.fixture(scope="module")
def api_server(tmp_path_factory, pg_server):
    """`airflow api-server` with the console plugin and four users; yields (base_url, ledger_dsn,
    passwords)."""
    import secrets

    from airflow_api_server import running_api_server
    from returnledger.store import migrate
    from returnledger_dev import scratch_db

    tmp = tmp_path_factory.mktemp("api_server")
    ledger = scratch_db.create_scratch_database(pg_server)
    try:
        migrate.migrate(ledger)
        with psycopg.connect(ledger) as c:
            c.execute(_server_seed("AB"))
        passwords = {user: secrets.token_urlsafe(12) for user in SERVER_USERS}
        with running_api_server(
            tmp,
            pg_server,
            ledger,
            users=SERVER_USERS,
            passwords=passwords,
            dags_folder=tmp / "no-dags",
            migrate_timeout=300,
            up_timeout=120,
        ) as base:
            yield base, ledger, passwords
    finally:
        scratch_db.drop_database(pg_server, ledger)


class ServerSession:
    """One user against the real api-server: a real token from POST /auth/token."""

    def __init__(self, base: str, user: str, password: str):
        import httpx

        self.base, self.user = base, user
        r = httpx.post(f"{base}/auth/token", json={"username": user, "password": password}, timeout=30)
        assert r.status_code == 201, r.text
        self.token = r.json()["access_token"]
        self.http = httpx.Client(base_url=base, timeout=30, follow_redirects=False)

    def bearer(self, method: str, path: str, **kw):
        return self.http.request(method, path, headers={"Authorization": f"Bearer {self.token}"}, **kw)

    def browser(self, method: str, path: str, data: dict | None = None, csrf: str | None = None):
        """As the UI's browser: session cookie, same origin, the form's CSRF token."""
        cookies = {"_token": self.token}
        if method == "GET":
            return self.http.get(path, cookies=cookies, headers={"Accept": "text/html"})
        return self.http.post(
            path,
            cookies=cookies,
            data={**(data or {}), "csrf_token": csrf or ""},
            headers={"Origin": self.base, "Accept": "text/html"},
        )


def _server_exception_ids(ledger: str, x: str) -> dict[str, int]:
    """Set X's exception for each action."""
    with psycopg.connect(ledger) as c:
        rows = dict(
            c.execute(
                "SELECT detail, exception_id FROM ledger.exception WHERE detail LIKE %s", (f"% {x}",)
            ).fetchall()
        )
    return {action: rows[f"{action} {x}"] for action in ACTIONS}


@pytest.mark.slow
def test_roles_in_the_real_api_server(api_server):
    base, ledger, passwords = api_server
    s = {u: ServerSession(base, u, passwords[u]) for u in SERVER_USERS}
    ids = {x: _server_exception_ids(ledger, x) for x in "AB"}

    # Viewer and User: read every page, see no action form, and every POST is refused (Bearer and
    # browser, CSRF token or not), leaving the ledger exactly as it was
    before = ledger_state(ledger)
    for user in ("vera.viewer", "uma.user"):
        me = s[user]
        listing = me.browser("GET", f"{PREFIX}/")
        assert (
            listing.status_code == 200
            and f"signed in as {user}" in listing.text
            and "(read only)" in listing.text
        )
        for x in "AB":
            for action, data in ACTIONS.items():
                path = f"{PREFIX}/exceptions/{ids[x][action]}"
                page = me.browser("GET", path)
                assert page.status_code == 200, page.text
                assert 'method="post"' not in page.text and 'name="csrf_token"' not in page.text, path
                assert 'id="read-only"' in page.text and "need the Op or Admin role" in page.text
                r = me.bearer("POST", f"{path}/{action}", data=data)
                assert r.status_code == 403, (user, action, r.text)
                assert r.json()["detail"] == (
                    f"{user} (role {SERVER_USERS[user]}) may read the returns exceptions"
                    " but not act on them: "
                    "resolving, dismissing, retrying and adding a mapping or a SKU need the Op or Admin role."
                )
                r = me.browser("POST", f"{path}/{action}", data, csrf=csrf_token_for(me.token))
                assert r.status_code == 403 and "Op or Admin role" in r.text, (user, action)
                r = me.browser("POST", f"{path}/{action}", data)
                assert r.status_code == 403, (user, action)
    assert ledger_state(ledger) == before

    # Op acts from the browser (cookie, CSRF token taken from the page); Admin through the API (Bearer)
    for user, x in (("olivia.ops", "A"), ("ada.admin", "B")):
        me = s[user]
        for action, data in ACTIONS.items():
            path = f"{PREFIX}/exceptions/{ids[x][action]}"
            if user == "olivia.ops":
                page = me.browser("GET", path)
                assert f'id="{action}-form"' in page.text and 'id="read-only"' not in page.text
                r = me.browser("POST", f"{path}/{action}", data, csrf=csrf_of(page.text))
            else:
                r = me.bearer("POST", f"{path}/{action}", data=data)
            assert r.status_code == 303, (user, action, r.text)
            assert r.headers["location"].startswith(f"{path}?msg=")

    with psycopg.connect(ledger) as c:
        closed = c.execute(
            "SELECT exception_id, status, resolved_by FROM ledger.exception ORDER BY 1"
        ).fetchall()
        mappings = c.execute(
            "SELECT rebound_reason, amazon_reason, updated_by FROM ledger.reason_mapping"
            " WHERE rebound_reason LIKE 'LID_LOOSE_%' ORDER BY 1"
        ).fetchall()
        skus = c.execute(
            "SELECT sku, asin, unit_cost, updated_by FROM ledger.sku WHERE sku IN ('SKU-A', 'SKU-B')"
            " ORDER BY 1"
        ).fetchall()
        submissions = c.execute(
            "SELECT idempotency_key, status FROM ledger.amazon_submission ORDER BY 1"
        ).fetchall()
        actors = dict(c.execute("SELECT actor, count(*) FROM ledger.audit_log GROUP BY actor").fetchall())
    by = {eid: (status, who) for eid, status, who in closed}
    for x, user in (("A", "olivia.ops"), ("B", "ada.admin")):
        for action in ACTIONS:
            assert by[ids[x][action]] == ("dismissed" if action == "dismiss" else "resolved", user), (
                x,
                action,
            )
    assert mappings == [
        ("LID_LOOSE_A", "CR-DEFECTIVE", "olivia.ops"),
        ("LID_LOOSE_B", "CR-DEFECTIVE", "ada.admin"),
    ]
    assert [(k, a, str(u), w) for k, a, u, w in skus] == [
        ("SKU-A", "B0OVERWRT1", "0.01", "olivia.ops"),
        ("SKU-B", "B0OVERWRT1", "0.01", "ada.admin"),
    ]
    assert all(status != "FAILED" for _, status in submissions)
    assert set(actors) == {"olivia.ops", "ada.admin"} and min(actors.values()) >= len(ACTIONS)
