"""The project's Assets, named by the standard URI schemes of what they are, for scheduling and lineage.

Tables of the ledger are ``postgres://<host>:<port>/<database>/ledger/<table>`` (the postgres provider's
asset URI scheme, AIP-60), files are their folder in the shared object store (``s3://<bucket>/<prefix>/
reports`` or ``file:///…/store/reports``, as returnledger.store.objects lays it out). Airflow schedules
on them (returns_sync's ledger update starts returns_reconciliation) and the OpenLineage provider turns
them into lineage datasets (namespace ``postgres://<host>:<port>``, name ``<database>.ledger.<table>``; an
object store path's bucket or ``file``), the names the SQL and storage integrations use for the same data.

An Asset's URI is fixed when the DAG file is parsed, so it is built without asking Airflow: the ledger's
address comes from ``AIRFLOW_CONN_RETURNS_DB`` (URI or JSON form; compose, ``make cluster``, ``make demo``
and the tests set it), the store from ``AIRFLOW_VAR_RETURNLEDGER_OBJECT_STORE`` (and
``..._REPORT_BASE`` / ``..._EXPORT_BASE``), else the documented defaults. Every component must see the
same values (the compose file and the cluster give them all one environment); a connection or Variable
kept only in the metadata database or a secrets backend leaves the Assets at the defaults below.
"""

from __future__ import annotations

import json
import os
from urllib.parse import unquote, urlsplit

from airflow.sdk import Asset

from returnledger.store.objects import EXPORTS, REPORTS

#: the ledger's schema (returnledger.store.db.SCHEMA) and the connection the DAGs reach it by
LEDGER_SCHEMA = "ledger"
LEDGER_CONN_ID = "returns_db"
#: where the ledger is when ``AIRFLOW_CONN_RETURNS_DB`` is not in the environment
DEFAULT_LEDGER = ("localhost", 5432, "returnledger")


def ledger_address(conn_id: str = LEDGER_CONN_ID) -> tuple[str, int, str]:
    """(host, port, database) of the ledger, from ``AIRFLOW_CONN_<CONN_ID>`` (URI or JSON), else the
    default."""
    raw = os.environ.get(f"AIRFLOW_CONN_{conn_id.upper()}", "").strip()
    if not raw:
        return DEFAULT_LEDGER
    if raw.startswith("{"):
        conn = json.loads(raw)
        host, port, database = conn.get("host"), conn.get("port"), conn.get("schema")
    else:
        parts = urlsplit(raw)
        host, port, database = parts.hostname, parts.port, unquote(parts.path.lstrip("/"))
    if not host or host.startswith("/"):  # a Unix socket (the embedded server): this machine's ledger
        host = DEFAULT_LEDGER[0]
    return (host, int(port or DEFAULT_LEDGER[1]), database or DEFAULT_LEDGER[2])


def _asset(uri: str, label: str) -> Asset:
    """An Asset named by its URI (the readable label in ``extra``): Airflow keeps names and URIs unique,
    so a fixed name on a URI that moves (a ledger on a new host or database, a demo's own ledger next to
    another's in one metadata database) would leave the new Asset inactive and fail the tasks naming it."""
    return Asset(name=uri, uri=uri, extra={"label": label})


def ledger_table(table: str, *, name: str) -> Asset:
    """The Asset of one ledger table: ``postgres://host:port/database/ledger/<table>``."""
    host, port, database = ledger_address()
    return _asset(f"postgres://{host}:{port}/{database}/{LEDGER_SCHEMA}/{table}", name)


def _store_uri(variable: str) -> str:
    """A store Variable's value as its URI, as known without asking Airflow (environment, else default)."""
    from returnledger.airflow import defaults

    value = os.environ.get(f"AIRFLOW_VAR_{variable.upper()}") or defaults._variable_defaults()[variable]
    if "://" not in value:
        value = "file://" + os.path.abspath(value)
    parts = urlsplit(value)
    if parts.scheme in ("s3", "s3a") and "@" in parts.netloc:  # s3://<conn_id>@bucket: the bucket is the data
        value = parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()
    return value.rstrip("/")


def store_folder(area: str, *, name: str, override: str | None = None) -> Asset:
    """The Asset of one folder of the shared object store (returnledger.store.objects: ``exports``,
    ``reports``, ...); ``override`` names the Variable that may put it elsewhere (export/report base)."""
    if override and os.environ.get(f"AIRFLOW_VAR_{override.upper()}"):
        return _asset(_store_uri(override), name)
    return _asset(f"{_store_uri('returnledger_object_store')}/{area}", name)


#: the ledger: returns_sync emits it, returns_reconciliation follows it
LEDGER = ledger_table("return_line", name="returns_ledger")
#: what returns_reconciliation produces (never LEDGER itself: that would trigger it again)
RECON_RESULTS = ledger_table("recon_result", name="returns_recon_results")
#: the month-end reports (``<period>/month_end_report.csv`` and ``.html`` under it)
REPORT = store_folder(REPORTS, name="returns_month_end_report", override="returnledger_report_base")
#: Amazon's Vendor Central returns exports, read by returns_reconciliation
AMAZON_EXPORTS = store_folder(
    EXPORTS, name="amazon_vendor_central_exports", override="returnledger_export_base"
)
