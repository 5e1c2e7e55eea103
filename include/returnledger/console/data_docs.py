"""Great Expectations Data Docs in the console (issue 24).

Each sync run builds the Data Docs of its events validation into the object store's ``data-docs/``
(returnledger.screening.suite.write_result). The console serves that site to signed-in users under
``/data-docs/`` (read through the store's path-like API: a local folder or ``s3://`` via ``aws_default``),
and an exception raised by a failed check links to the page of the validation that raised it.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Callable
from typing import Any

import psycopg
from fastapi import FastAPI, HTTPException
from fastapi.responses import Response

from returnledger.screening.suite import events_docs_page
from returnledger.store.objects import DATA_DOCS, read_bytes


def validation_page(conn: psycopg.Connection, raw_id: int | None) -> str | None:
    """The Data Docs page (relative to ``data-docs/``) of the validation that failed event ``raw_id``."""
    if raw_id is None:
        return None
    row = conn.execute(
        "SELECT batch_id FROM ledger.validation_failure WHERE raw_id = %s", (raw_id,)
    ).fetchone()
    return events_docs_page(row[0]) if row else None


def default_store() -> Any:
    """The object store's ``data-docs/`` folder (Variable ``returnledger_object_store``)."""
    from returnledger.airflow.objects import object_store

    return object_store(DATA_DOCS)


def add_data_docs(app: FastAPI, store: Callable[[], Any] | None = None) -> None:
    """``GET /data-docs/<path>``: one file of the Data Docs site (pages, styles, scripts)."""

    @app.get("/data-docs/{path:path}")
    def data_docs_file(path: str):
        parts = [p for p in path.split("/") if p]
        if not parts or any(p in (".", "..") or "\\" in p for p in parts):
            raise HTTPException(404, f"no Data Docs file {path!r}")
        target = (store or default_store)()
        for part in parts:
            target = target / part
        try:
            data = read_bytes(target)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise HTTPException(404, f"no Data Docs file {path!r} (not built yet?)") from None
        media = mimetypes.guess_type(parts[-1])[0] or "application/octet-stream"
        return Response(data, media_type=media, headers={"X-Content-Type-Options": "nosniff"})
