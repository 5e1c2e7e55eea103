"""Object storage for the close: where Amazon's returns export is read and the month-end report written
(S3 in production, a local folder by default), always through an Airflow connection for ``s3://``."""

from __future__ import annotations

import os

#: the Airflow connection of s3:// paths that name none (``s3://<conn_id>@bucket/...`` names its own)
OBJECT_STORAGE_CONN_ID = "aws_default"
_CONNECTED_SCHEMES = {"s3", "s3a"}


def storage_path(uri: str, conn_id: str | None = None):
    """Airflow's ObjectStoragePath when Airflow is installed (connections, S3), else universal-pathlib.

    An ``s3://`` path is read and written through an Airflow connection: ``conn_id``, else the one the URI
    names, else ``RETURNLEDGER_OBJECT_STORAGE_CONN_ID`` (default ``aws_default``): its credentials,
    region and endpoint, never whatever the process environment happens to hold.
    """
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if conn_id is None and parts.scheme in _CONNECTED_SCHEMES and "@" not in parts.netloc:
        conn_id = os.environ.get("RETURNLEDGER_OBJECT_STORAGE_CONN_ID") or OBJECT_STORAGE_CONN_ID
    try:
        from airflow.sdk import ObjectStoragePath

        return ObjectStoragePath(uri, conn_id=conn_id)
    except ImportError:  # pragma: no cover - Airflow is part of the stack
        from upath import UPath

        return UPath(uri)


def join_uri(base_uri: str, name: str) -> str:
    """A file ``name`` in the folder ``base_uri``."""
    return base_uri.rstrip("/") + "/" + name
