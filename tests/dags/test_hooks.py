"""The Airflow hooks against the sandbox simulators: clients built from connections, the UI's Test button,
the ledger DSN through PostgresHook, and the provider entry that registers the connection types."""

from __future__ import annotations

import json
import socket
import tomllib
from pathlib import Path

import pytest

from scenario_parts import full_credit_policy, vendor

ROOT = Path(__file__).resolve().parents[2]

SCENARIO = {
    "format": "returns-scenario/1",
    "name": "hooks",
    "description": "two simulators for the hook tests",
    "vendor": vendor(),
    "run": {"from": "2026-10-05", "to": "2026-10-05", "close_period": "2026-10"},
    "policy": full_credit_policy(),
    "catalog": [{"sku": "SKU-H", "asin": "B0HOOK0001", "unit_cost": "10.00", "available": 5}],
    "reason_codes": [{"rebound_reason": "FAULTY", "amazon_reason": "CR-DEFECTIVE"}],
    "rebound": {
        "returns": [
            {
                "return_id": "RB-H-1",
                "order_reference": "203-0000001-0000000",
                "created_at": "2026-10-05T08:00:00Z",
                "amazon_refs": {"returns_notice": "RNH1", "rma_id": "RMAH1", "vret": "VRETH1"},
                "lines": [{"line": 1, "sku": "SKU-H", "quantity": 1, "reason": "FAULTY"}],
            }
        ],
        "events": [
            {
                "event_id": "ev-h-1",
                "type": "RETURN_CREATED",
                "return_id": "RB-H-1",
                "occurred_at": "2026-10-05T08:00:00Z",
            }
        ],
        "invalid_events": [],
    },
    "amazon": {"returns": [], "credit_outcomes": []},
    "operations": [],
    "faults": {},
}


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    from returnledger_dev.sandbox.harness import run_sandbox

    with run_sandbox(SCENARIO, tmp_path_factory.mktemp("hooks"), faults=False) as sb:
        yield sb


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens here once the socket is closed


def _rebound_conn(monkeypatch, url: str, secret: str = "sandbox-secret") -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_REBOUND_API",
        json.dumps(
            {
                "conn_type": "rebound",
                "host": url,
                "login": "sandbox-client",
                "password": secret,
                "extra": {"page_size": 50, "timeout": 2},
            }
        ),
    )


def _amazon_conn(monkeypatch, url: str, extra: dict) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_AMAZON_SP_API",
        json.dumps(
            {
                "conn_type": "amazon_sp_api",
                "host": url,
                "login": "sandbox-lwa-client",
                "password": "sandbox-lwa-secret",
                "extra": extra,
            }
        ),
    )


def test_rebound_hook_builds_the_client_from_its_connection(monkeypatch, sandbox):
    from returnledger.airflow.hooks import ReboundHook
    from returnledger.clients.rebound import ReboundClient

    _rebound_conn(monkeypatch, sandbox.rebound_url)
    with ReboundHook().get_conn() as client:
        assert isinstance(client, ReboundClient)
        assert client.page_size == 50
        assert client.get_return("RB-H-1")["return_id"] == "RB-H-1"


def test_amazon_hook_builds_the_client_and_the_vendor_identity(monkeypatch, sandbox):
    from returnledger.airflow.hooks import AmazonSpApiHook
    from returnledger.clients.amazon import AmazonVendorClient

    _amazon_conn(monkeypatch, sandbox.amazon_url, sandbox.amazon_extra)
    hook = AmazonSpApiHook()
    assert hook.vendor == {"party_id": "VNDR1", "warehouse_id": "UK-HUB-1", "currency": "GBP"}
    with hook.get_conn() as client:
        assert isinstance(client, AmazonVendorClient)
        assert client.marketplace.endpoint == sandbox.amazon_url


def test_test_connection_is_true_against_running_simulators(monkeypatch, sandbox):
    from returnledger.airflow.hooks import AmazonSpApiHook, ReboundHook

    _rebound_conn(monkeypatch, sandbox.rebound_url)
    _amazon_conn(monkeypatch, sandbox.amazon_url, sandbox.amazon_extra)
    ok, message = ReboundHook().test_connection()
    assert ok, message
    assert sandbox.rebound_url in message and "sandbox-client" in message
    ok, message = AmazonSpApiHook().test_connection()
    assert ok, message
    assert sandbox.amazon_url in message


def test_test_connection_is_false_with_a_clear_message_on_a_closed_port(monkeypatch):
    from returnledger.airflow.hooks import AmazonSpApiHook, ReboundHook

    url = f"http://127.0.0.1:{_closed_port()}"
    _rebound_conn(monkeypatch, url)
    _amazon_conn(monkeypatch, url, {"refresh_token": "t", "lwa_url": f"{url}/auth/o2/token"})
    ok, message = ReboundHook().test_connection()
    assert not ok
    assert url in message and "unreachable" in message.lower(), message
    ok, message = AmazonSpApiHook().test_connection()
    assert not ok
    assert url in message and "AmazonUnavailableError" in message, message


def test_test_connection_is_false_when_rebound_refuses_the_credentials(monkeypatch, sandbox):
    from returnledger.airflow.hooks import ReboundHook

    _rebound_conn(monkeypatch, sandbox.rebound_url, secret="wrong")
    ok, message = ReboundHook().test_connection()
    assert not ok
    assert "refused the client credentials" in message, message


def test_ledger_dsn_comes_through_postgres_hook(monkeypatch, pg_server):
    import psycopg

    from returnledger.airflow.hooks import ledger_dsn
    from returnledger_dev import scratch_db

    monkeypatch.setenv("AIRFLOW_CONN_RETURNS_DB", scratch_db.airflow_connection_json(pg_server))
    with psycopg.connect(ledger_dsn()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    # fields left empty fall back to the local defaults; extras PostgresHook passes on are kept
    bare = {"conn_type": "postgres", "extra": {"sslmode": "disable", "cursor": "dictcursor"}}
    monkeypatch.setenv("AIRFLOW_CONN_RETURNS_DB", json.dumps(bare))
    assert psycopg.conninfo.conninfo_to_dict(ledger_dsn()) == {
        "host": "127.0.0.1",
        "port": "5432",
        "user": "postgres",
        "dbname": "postgres",
        "sslmode": "disable",
    }


def test_provider_info_registers_both_connection_types():
    import importlib

    import jsonschema

    from returnledger.airflow.provider import get_provider_info

    info = get_provider_info()
    schema_file = Path(importlib.import_module("airflow").__file__).parent / "provider_info.schema.json"
    schema = json.loads(schema_file.read_text())
    jsonschema.validate(info, schema)
    for entry in info["connection-types"]:
        module, _, name = entry["hook-class-name"].rpartition(".")
        hook = getattr(importlib.import_module(module), name)
        assert hook.conn_type == entry["connection-type"]
        assert hook.hook_name == entry["hook-name"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["apache_airflow_provider"] == {
        "provider_info": "returnledger.airflow.provider:get_provider_info"
    }
    assert info["package-name"] == project["name"]


def test_airflow_lists_the_connection_types_with_their_forms(tmp_path, monkeypatch):
    """Through the installed entry point, as the UI sees them: testable, relabelled, one field per extra."""
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    from airflow.providers_manager import ProvidersManager
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    pm, runtime = ProvidersManager(), ProvidersManagerTaskRuntime()
    assert "returnledger" in pm.providers
    for conn_type, field in (("rebound", "page_size"), ("amazon_sp_api", "refresh_token")):
        assert runtime.hooks[conn_type].connection_testable
        assert pm.field_behaviours[conn_type]["relabeling"]["login"]
        assert f"extra__{conn_type}__{field}" in pm.connection_form_widgets
    assert pm.connection_form_widgets["extra__amazon_sp_api__refresh_token"].is_sensitive
