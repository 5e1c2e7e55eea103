"""The connection form's Test button through Airflow's own REST endpoint (POST /api/v2/connections/test)
on a real api-server configured as docker-compose.yaml configures it (issue 24): both of this project's
connection types against the simulators, accepted with the right secret and refused, saying why, with a
wrong one."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from test_hooks import SCENARIO

from airflow_api_server import running_api_server

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_ENV = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())["x-airflow-common"]["environment"]

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    from returnledger_dev.sandbox.harness import run_sandbox

    with run_sandbox(SCENARIO, tmp_path_factory.mktemp("conn_test"), faults=False) as sb:
        yield sb


@pytest.fixture(scope="module")
def api(tmp_path_factory, pg_server):
    """(base URL, admin bearer headers) of an api-server with compose's [core] test_connection."""
    from returnledger.store import migrate
    from returnledger_dev import scratch_db

    tmp = tmp_path_factory.mktemp("conn_test_api")
    ledger = scratch_db.create_scratch_database(pg_server)
    password = secrets.token_urlsafe(12)
    try:
        migrate.migrate(ledger)
        with running_api_server(
            tmp,
            pg_server,
            ledger,
            users={"admin": "admin"},
            passwords={"admin": password},
            dags_folder=tmp / "no-dags",
            extra_env={
                "AIRFLOW__CORE__TEST_CONNECTION": str(COMPOSE_ENV.get("AIRFLOW__CORE__TEST_CONNECTION"))
            },
            migrate_timeout=300,
            up_timeout=120,
        ) as base:
            r = httpx.post(f"{base}/auth/token", json={"username": "admin", "password": password}, timeout=30)
            assert r.status_code == 201, r.text
            yield base, {"Authorization": f"Bearer {r.json()['access_token']}"}
    finally:
        scratch_db.drop_database(pg_server, ledger)


def _test(api, body: dict) -> dict:
    base, headers = api
    r = httpx.post(f"{base}/api/v2/connections/test", json=body, headers=headers, timeout=60)
    assert r.status_code == 200, r.text  # 403 "Testing connections is disabled" without the setting
    return r.json()


def _where(url: str) -> dict:
    u = urlsplit(url)
    return {"host": u.hostname, "port": u.port, "schema": u.scheme}


def test_rebound_connection_test_through_the_rest_api(api, sandbox):
    body = {
        "connection_id": "rebound_api",
        "conn_type": "rebound",
        **_where(sandbox.rebound_url),
        "login": sandbox.rebound_client_id,
        "password": sandbox.rebound_client_secret,
        "extra": json.dumps({"timeout": 5}),
    }
    ok = _test(api, body)
    assert ok["status"] is True, ok
    assert sandbox.rebound_url in ok["message"] and sandbox.rebound_client_id in ok["message"], ok
    refused = _test(api, {**body, "password": "not-the-secret"})
    assert refused["status"] is False, refused
    assert "ReBound at" in refused["message"] and "refused the client credentials" in refused["message"], (
        refused
    )


def test_amazon_connection_test_through_the_rest_api(api, sandbox):
    body = {
        "connection_id": "amazon_sp_api",
        "conn_type": "amazon_sp_api",
        **_where(sandbox.amazon_url),
        "login": sandbox.lwa_client_id,
        "password": sandbox.lwa_client_secret,
        "extra": json.dumps(sandbox.amazon_extra),
    }
    ok = _test(api, body)
    assert ok["status"] is True, ok
    assert sandbox.amazon_url in ok["message"], ok
    refused = _test(api, {**body, "password": "not-the-secret"})
    assert refused["status"] is False, refused
    assert sandbox.amazon_url in refused["message"] and "AmazonAuthError" in refused["message"], refused
