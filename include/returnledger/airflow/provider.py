"""Provider info for Airflow: the ReBound and SP-API connection types, their forms and their Test button.

Registered as the ``apache_airflow_provider`` entry point in pyproject.toml. The form (labels, hidden
fields, one field per extra) is declared here, as Airflow 3.2+ asks (``conn-fields`` and
``ui-field-behaviour``; a hook's ``get_ui_field_behaviour`` is deprecated), so listing connection types
imports no hook; the Test button calls the hook's ``test_connection``.
"""

from __future__ import annotations


def _field(label: str, kind: str, default=None, description: str | None = None, secret: bool = False) -> dict:
    schema: dict = {"type": [kind, "null"]}
    if default is not None:
        schema["default"] = default
    if secret:
        schema["format"] = "password"
    return {"label": label, "schema": schema, **({"description": description} if description else {})}


def _connection_type(
    conn_type: str, hook: str, name: str, *, relabeling: dict[str, str], host: str, fields: dict[str, dict]
) -> dict:
    """A connection type of ours: its hook in returnledger.airflow.hooks, its form (schema and the raw extra
    hidden: each extra is a field of its own), ``host``: the placeholder of the host field."""
    return {
        "connection-type": conn_type,
        "hook-class-name": f"returnledger.airflow.hooks.{hook}",
        "hook-name": name,
        "ui-field-behaviour": {
            "hidden-fields": ["schema", "extra"],
            "relabeling": relabeling,
            "placeholders": {"host": host},
        },
        "conn-fields": fields,
    }


REBOUND = _connection_type(
    "rebound",
    "ReboundHook",
    "ReBound returns API",
    relabeling={"host": "Base URL", "login": "OAuth client id", "password": "OAuth client secret"},
    host="https://api.rebound.example",
    fields={
        "flow_key": _field("Flow key", "string", description="ReBound flow key, when the account uses one"),
        "page_size": _field("Feed page size", "integer", 500, "events per feed page (1..1000)"),
        "timeout": _field("Request timeout (s)", "number", 10),
        "retry_after_max_s": _field("Longest Retry-After waited for (s)", "number", 120),
        "retry_budget_s": _field("Total wait per request (s)", "number", 300),
        "max_empty_pages": _field("Empty pages before the feed counts as stalled", "integer", 10),
    },
)

AMAZON = _connection_type(
    "amazon_sp_api",
    "AmazonSpApiHook",
    "Amazon SP-API (Vendor Central)",
    relabeling={"host": "SP-API endpoint", "login": "LWA client id", "password": "LWA client secret"},
    host="https://sellingpartnerapi-eu.amazon.com",
    fields={
        "refresh_token": _field("LWA refresh token", "string", secret=True),
        "lwa_url": _field("LWA token URL", "string", "https://api.amazon.com/auth/o2/token"),
        "marketplace_id": _field("Marketplace id", "string", "A1F83G8C2ARO7P"),
        "region": _field("Region", "string", "eu"),
        "rate_per_s": _field("Requests per second per operation", "number", 10),
        "burst": _field("Burst", "integer", 10),
        "party_id": _field("Vendor party id", "string", description="sellingParty in credit notes and stock"),
        "warehouse_id": _field("Warehouse id", "string", description="the warehouse stock updates are for"),
        "currency": _field("Currency", "string", "GBP"),
    },
)


def get_provider_info() -> dict:
    return {
        "package-name": "returnledger",
        "name": "returnledger",
        "description": "Connections of the returns ledger: ReBound's returns API and Amazon SP-API"
        " (Vendor Central).",
        "connection-types": [REBOUND, AMAZON],
    }
