"""Airflow hooks for the systems the ledger talks to: its PostgreSQL database, ReBound and Amazon SP-API.

A task makes a hook, which looks its connection up once, and passes what ``get_conn()`` builds (a DSN,
a ReBound client, an SP-API client) to the domain modules, which take plain DSNs and clients and so
run and are tested without Airflow. The hooks register their connection types
with the UI through returnledger.airflow.provider (the connection form; "Test" calls test_connection).

Connections (local values in airflow_settings.yaml; production: a secrets backend or ``AIRFLOW_CONN_*``):
- ``returns_db`` (postgres): the ledger database, read through the postgres provider's PostgresHook.
- ``rebound_api`` (``rebound``; ``http`` also works): host = base URL, login/password = OAuth client
  id/secret, extra ``{"flow_key", "page_size", "timeout", "retry_after_max_s", "retry_budget_s",
  "max_empty_pages"}``.
- ``amazon_sp_api`` (``amazon_sp_api``; ``generic`` also works): host = SP-API endpoint, login/password =
  LWA client id/secret, extra ``{"refresh_token", "lwa_url", "marketplace_id", "region", "rate_per_s",
  "burst", "party_id", "warehouse_id", "currency"}`` (the last three: the vendor identity in payloads).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

if TYPE_CHECKING:
    from airflow.sdk import Connection

    from returnledger.clients.amazon import AmazonVendorClient
    from returnledger.clients.rebound import ReboundClient

DB_CONN_ID = "returns_db"
REBOUND_CONN_ID = "rebound_api"
AMAZON_CONN_ID = "amazon_sp_api"
#: asked for by test_connection: an id no system holds, so a "not found" answer proves URL and login
PROBE_ID = "returnledger-connection-test"
#: used for a field the returns_db connection leaves empty (as libpq would not: it would try a socket)
LEDGER_DEFAULTS = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "postgres"}


def ledger_dsn(conn_id: str = DB_CONN_ID) -> str:
    """A libpq DSN for the ledger from the ``returns_db`` connection, read through PostgresHook.

    The package opens its own connections from a DSN (a unit of work per step, COPY, advisory locks),
    so it takes the parameters PostgresHook.get_conn would connect with rather than a connection:
    the same extras (sslmode, options, ...) and, with ``{"iam": true}``, an IAM token as password.
    """
    import psycopg
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    hook = PostgresHook(postgres_conn_id=conn_id)
    c = hook.connection
    login, password, port = c.login, c.password, c.port
    extra = c.extra_dejson or {}
    if extra.get("iam"):
        login, password, port = hook.get_iam_token(c)
    parts: dict[str, Any] = {"host": c.host, "port": port, "user": login, "dbname": c.schema}
    parts = {k: v if v not in (None, "") else LEDGER_DEFAULTS[k] for k, v in parts.items()}
    if password:
        parts["password"] = password
    parts.update((k, v) for k, v in extra.items() if k not in hook.ignored_extra_options)
    from returnledger.airflow.links import run_dsn  # inside a task: its run, for the rows it writes

    return run_dsn(psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in parts.items()}))


def base_url(c: Connection) -> str:
    """``scheme://host[:port]`` from a connection whose host may or may not carry the scheme."""
    host = c.host or "127.0.0.1"
    if "://" not in host:
        host = f"{c.schema or 'http'}://{host}"
    return f"{host}:{c.port}" if c.port else host


class _ClientHook(BaseHook, ABC):
    """One connection lookup per hook (so per task); subclasses build the client from it."""

    conn_name_attr = "conn_id"
    default_conn_name = ""
    system = ""

    def __init__(self, conn_id: str | None = None, **client_kwargs: Any):
        super().__init__()
        self.conn_id = conn_id or self.default_conn_name
        #: passed on to the client, over the connection's values (test_connection asks for one attempt)
        self.client_kwargs = client_kwargs

    @cached_property
    def connection(self) -> Connection:
        return self.get_connection(self.conn_id)

    def extra(self, key: str, default: Any = None) -> Any:
        """A value of the connection's extra; one left empty in the connection form counts as not set."""
        value = (self.connection.extra_dejson or {}).get(key)
        return default if value in (None, "") else value

    @abstractmethod
    def _probe(self) -> None:
        """The cheapest real call the service answers (a 404 for an unknown id counts as reachable)."""

    def test_connection(self) -> tuple[bool, str]:
        """One cheap real call with a single attempt; ``(ok, message)`` for the UI's Test button."""
        url = base_url(self.connection)
        try:
            self._probe()
        except Exception as e:
            return False, f"{self.system} at {url} did not answer as expected: {type(e).__name__}: {e}"
        return True, f"{self.system} at {url} accepted the credentials of {self.connection.login}"


class ReboundHook(_ClientHook):
    """ReBound's headless API: returns the ReboundClient the sync and reconciliation take."""

    default_conn_name = REBOUND_CONN_ID
    conn_type = "rebound"
    hook_name = "ReBound returns API"
    system = "ReBound"

    def get_conn(self) -> ReboundClient:
        return self._client()

    def _client(self, **overrides: Any) -> ReboundClient:
        from returnledger.clients.rebound import ReboundClient

        c, extra = self.connection, self.extra
        settings: dict[str, Any] = {
            "flow_key": extra("flow_key"),
            "timeout": float(extra("timeout", 10)),
            "page_size": int(extra("page_size", 500)),
            "retry_after_max_s": float(extra("retry_after_max_s", 120)),
            "retry_budget_s": float(extra("retry_budget_s", 300)),
            "max_empty_pages": int(extra("max_empty_pages", 10)),
        }
        settings.update(self.client_kwargs, **overrides)
        return ReboundClient(base_url(c), c.login or "", c.password or "", **settings)

    def _probe(self) -> None:
        """Log in and ask for a return order that does not exist (ReBound answers 404: fine)."""
        with self._client(max_attempts=1) as client:
            client.get_return(PROBE_ID)


class AmazonSpApiHook(_ClientHook):
    """Amazon Vendor Central (SP-API): returns the AmazonVendorClient the pushes and confirm take,
    and the vendor identity (party id, warehouse id, currency) their payloads carry."""

    default_conn_name = AMAZON_CONN_ID
    conn_type = "amazon_sp_api"
    hook_name = "Amazon SP-API (Vendor Central)"
    system = "Amazon SP-API"

    @property
    def vendor(self) -> dict[str, str]:
        """Who we are in Amazon's payloads: ``party_id``, ``warehouse_id``, ``currency``."""
        return {
            "party_id": self.extra("party_id", ""),
            "warehouse_id": self.extra("warehouse_id", ""),
            "currency": self.extra("currency", "GBP"),
        }

    def get_conn(self) -> AmazonVendorClient:
        return self._client()

    def _client(self, **overrides: Any) -> AmazonVendorClient:
        from returnledger.clients.amazon import LWA_URL, UK_MARKETPLACE_ID, AmazonVendorClient

        c, extra = self.connection, self.extra
        if not extra("refresh_token"):
            raise ValueError(f"connection {self.conn_id} has no LWA refresh_token in its extra")
        settings: dict[str, Any] = {
            "lwa_url": extra("lwa_url", LWA_URL),
            "refresh_token": extra("refresh_token"),
            "lwa_client_id": c.login,
            "lwa_client_secret": c.password,
            "marketplace_id": extra("marketplace_id", UK_MARKETPLACE_ID),
            "region": extra("region", "eu"),
            "rate_per_s": float(extra("rate_per_s", 10)),
            "burst": int(extra("burst", 10)),
        }
        settings.update(self.client_kwargs, **overrides)
        return AmazonVendorClient(base_url(c), **settings)

    def _probe(self) -> None:
        """Get an LWA token and ask for a transaction that does not exist: Amazon's 404 proves both."""
        from returnledger.clients.amazon import AmazonRequestError

        with self._client(max_attempts=1) as client:
            try:
                client.get_transaction(PROBE_ID)
            except AmazonRequestError as e:
                if e.status != 404:
                    raise
