"""The one place where the package meets Airflow: connections -> DSNs and clients.

DAG tasks call these inside task bodies (never at parse time). Everything
else in the package takes plain DSNs and client objects so it runs and is
tested without Airflow.

Connections (airflow_settings.yaml):
- ``returns_db``: postgres; the ledger database.
- ``rebound_api``: http; host = base URL, login/password = OAuth client id/secret,
  extra ``{"flow_key", "page_size", "timeout", "retry_after_max_s", "retry_budget_s", "max_empty_pages"}``.
- ``amazon_sp_api``: generic; host = SP-API endpoint, login/password = LWA client id/secret,
  extra ``{"refresh_token", "lwa_url", "marketplace_id", "region", "rate_per_s", "burst",
  "party_id", "warehouse_id", "currency"}``.
"""
from __future__ import annotations

from datetime import timedelta

DB_CONN_ID = "returns_db"
REBOUND_CONN_ID = "rebound_api"
AMAZON_CONN_ID = "amazon_sp_api"
AMAZON_POOL = "amazon_sp_api"
#: the ledger Asset returns_sync emits and returns_reconciliation follows
LEDGER_ASSET_NAME = "returns_ledger"
LEDGER_ASSET_URI = "returnledger://ledger/return_line"


def get_dsn(conn_id: str = DB_CONN_ID) -> str:
    """A libpq DSN for psycopg 3 built from the Airflow connection."""
    from airflow.sdk import BaseHook

    c = BaseHook.get_connection(conn_id)
    extra = c.extra_dejson or {}
    parts = {"host": c.host or "127.0.0.1", "port": c.port or 5432, "user": c.login or "postgres",
             "dbname": c.schema or "postgres"}
    if c.password:
        parts["password"] = c.password
    for key in ("sslmode", "options"):
        if key in extra:
            parts[key] = extra[key]
    import psycopg

    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in parts.items()})


def _base_url(c) -> str:
    host = c.host or "127.0.0.1"
    if "://" not in host:
        host = f"{c.schema or 'http'}://{host}"
    return f"{host}:{c.port}" if c.port else host


def rebound_client():
    from airflow.sdk import BaseHook

    from returnledger.clients.rebound import ReboundClient

    c = BaseHook.get_connection(REBOUND_CONN_ID)
    extra = c.extra_dejson or {}
    return ReboundClient(_base_url(c), c.login, c.password, flow_key=extra.get("flow_key"),
                         timeout=float(extra.get("timeout", 10)), page_size=int(extra.get("page_size", 500)),
                         retry_after_max_s=float(extra.get("retry_after_max_s", 120)),
                         retry_budget_s=float(extra.get("retry_budget_s", 300)),
                         max_empty_pages=int(extra.get("max_empty_pages", 10)))


def amazon_settings() -> dict:
    """Vendor identity for payloads (party id, warehouse id, currency) from the connection extra."""
    from airflow.sdk import BaseHook

    extra = BaseHook.get_connection(AMAZON_CONN_ID).extra_dejson or {}
    return {"party_id": extra.get("party_id", ""), "warehouse_id": extra.get("warehouse_id", ""),
            "currency": extra.get("currency", "GBP")}


def amazon_client():
    from airflow.sdk import BaseHook

    from returnledger.clients.amazon import AmazonVendorClient

    c = BaseHook.get_connection(AMAZON_CONN_ID)
    extra = c.extra_dejson or {}
    return AmazonVendorClient(_base_url(c), lwa_url=extra["lwa_url"], refresh_token=extra["refresh_token"],
                              lwa_client_id=c.login, lwa_client_secret=c.password,
                              marketplace_id=extra.get("marketplace_id", "A1F83G8C2ARO7P"),
                              region=extra.get("region", "eu"), rate_per_s=float(extra.get("rate_per_s", 10)),
                              burst=int(extra.get("burst", 10)))


#: no task may hold a worker (or the amazon_sp_api pool) longer than this; a push step's circuit breaker
#: and the clients' retry budgets end well before it, so a long outage leaves work PENDING for the next run
TASK_TIMEOUT = timedelta(minutes=45)


def default_args(owner: str = "returnledger") -> dict:
    """default_args every DAG of the project uses: owner, retries, failure notifiers, a hard time limit."""
    from returnledger.reports.notify import failure_callbacks

    return {"owner": owner, "retries": 2, "retry_delay": timedelta(minutes=2),
            "retry_exponential_backoff": True, "on_failure_callback": failure_callbacks(),
            "execution_timeout": TASK_TIMEOUT}


#: cron presets a user may set in RETURNLEDGER_SYNC_SCHEDULE, as the cron lines they stand for
CRON_PRESETS = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@weekly": "0 0 * * 0",
                "@monthly": "0 0 1 * *"}


def period_schedule(cron: str):
    """A schedule whose run for period P covers exactly [P, next P) in UTC, listed under P in the UI.

    Airflow 3 turns a cron preset such as ``@daily`` into a *trigger* timetable, whose run for D
    covers the moment D only; with that, the run labelled 8 October read what was delivered before
    8 October 00:00 (the day before). A data-interval timetable gives the run for D the interval
    [D, D+1): it starts once D is over and reads what was delivered before D+1 00:00.
    """
    from airflow.sdk import CronDataIntervalTimetable

    return CronDataIntervalTimetable(CRON_PRESETS.get(cron.strip(), cron.strip()), timezone="UTC")


def run_moment():
    """The moment a run stands for: data interval end, else logical date, else (manual run) run_after.

    Resolved from the run, never from the clock, so a cleared and rerun task sees the same moment.
    """
    return run_interval()[1]


def run_interval():
    """``(start, end)`` of the period this run covers, from the run (never the clock).

    A scheduled run of a data-interval timetable covers [data_interval_start, data_interval_end).
    A run without a data interval (asset-triggered) stands for the moment it was made for.
    """
    from airflow.sdk import get_current_context

    ctx = get_current_context()
    end = ctx.get("data_interval_end") or ctx.get("logical_date") or ctx["dag_run"].run_after
    start = ctx.get("data_interval_start") or end
    return start, end


def digest_dir() -> str:
    """Where the owner-team digests are written (Variable ``returnledger_digest_dir``)."""
    from airflow.sdk import Variable

    from returnledger.store.db import local_dir

    return Variable.get("returnledger_digest_dir", default=str(local_dir() / "digests"))
