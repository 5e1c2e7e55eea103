"""The shared object store as tasks see it: Airflow's ``ObjectStoragePath``, built here and only here.

Configured once, by the Variable ``returnledger_object_store`` (``s3://<bucket>/<prefix>`` in production,
read and written through the ``aws_default`` connection; default ``file://$RETURNLEDGER_HOME/.local/store``,
a folder meant for a single machine). What lives where under it is returnledger.store.objects; tasks call
``object_store(area)`` and pass the path down to business code, which never imports Airflow.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from returnledger.store.objects import EXPORTS, REPORTS, area

#: the Airflow connection of s3:// paths that name none (``s3://<conn_id>@bucket/...`` names its own)
OBJECT_STORAGE_CONN_ID = "aws_default"
_CONNECTED_SCHEMES = {"s3", "s3a"}


def storage_path(uri: str, conn_id: str | None = None):
    """Airflow's ObjectStoragePath of ``uri``. An ``s3://`` path is read and written through an Airflow
    connection: ``conn_id``, else the one the URI names, else ``RETURNLEDGER_OBJECT_STORAGE_CONN_ID``
    (default ``aws_default``): its credentials, region and endpoint, never whatever the process
    environment happens to hold."""
    from airflow.sdk import ObjectStoragePath

    parts = urlsplit(uri)
    if conn_id is None and parts.scheme in _CONNECTED_SCHEMES and "@" not in parts.netloc:
        conn_id = os.environ.get("RETURNLEDGER_OBJECT_STORAGE_CONN_ID") or OBJECT_STORAGE_CONN_ID
    return ObjectStoragePath(uri, conn_id=conn_id)


def store_base():
    """The base of the shared object store (Variable ``returnledger_object_store``)."""
    from returnledger.airflow.defaults import variable

    return storage_path(variable("returnledger_object_store"))


def object_store(name: str):
    """One folder of the shared object store (``digests``, ``validation``, ``data-docs``, ...)."""
    return area(store_base(), name)


def export_base():
    """Where Amazon's Vendor Central exports arrive: Variable ``returnledger_export_base`` when set, else
    the store's ``exports/``."""
    from returnledger.airflow.defaults import variable

    override = variable("returnledger_export_base")
    return storage_path(override) if override else object_store(EXPORTS)


def report_base():
    """Where month-end reports go (``<base>/<YYYY-MM>/``): Variable ``returnledger_report_base`` when set,
    else the store's ``reports/``."""
    from returnledger.airflow.defaults import variable

    override = variable("returnledger_report_base")
    return storage_path(override) if override else object_store(REPORTS)
