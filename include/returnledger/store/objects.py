"""The shared object store: every file one task writes and another task (or a person) reads.

Tasks may run on different hosts (Celery workers), so no task reads a file another task wrote to its own
disk: everything they hand each other lives under one base, configured once (the Airflow Variable
``returnledger_object_store``: ``s3://<bucket>/<prefix>`` through the ``aws_default`` connection in
production, a local folder by default). The layout under that base:

=====================  ==================================================================================
``exports/``           Amazon's Vendor Central returns exports, ``vendor_central_returns_<YYYY-MM>.csv``
                       (where the vendor drops them; Variable ``returnledger_export_base`` may point
                       elsewhere)
``reports/<YYYY-MM>/`` each close's ``month_end_report.csv`` and ``.html`` (and earlier versions beside
                       them; Variable ``returnledger_report_base`` may point elsewhere)
``digests/``           the operating digests: ``<kind>-<as of>-<team>.html`` and one index
                       ``<kind>-<as of>.json`` per run (``build`` writes them, ``send`` reads them back)
``validation/``        each sync run's Great Expectations result, ``<batch id>.json``
``data-docs/``         Great Expectations Data Docs (a static site; its ``index.html`` at the root)
=====================  ==================================================================================

The API, for business code (no Airflow here): functions take a *path-like object*, anything with the
``pathlib`` interface (``/``, ``open``, ``exists``, ``mkdir``, ``read_text``/``write_text``, ``iterdir``):
``pathlib.Path``, ``upath.UPath``, or Airflow's ``ObjectStoragePath`` (which reads ``s3://`` through an
Airflow connection). ``as_path`` turns a plain string into one (a local folder or ``file://`` URI, else
fsspec's own handling of the URI, without any Airflow connection: for tests and tools only). ``area(base,
name)`` is one of the folders above, ``write_bytes`` / ``read_bytes`` one file, ``files`` a folder's files.

The Airflow edge builds the base once: ``returnledger.airflow.objects.object_store(area)`` returns the
``ObjectStoragePath`` of a folder above, bound to ``aws_default`` for ``s3://``; tasks pass it down.
GX Data Docs, for example: a task builds the site into ``object_store(DATA_DOCS)`` and links to
``<that folder>/index.html``. A new kind of shared file takes a new folder name in ``AREAS`` and this table.
"""

from __future__ import annotations

import os
from pathlib import Path

#: the folders under the store's base, by what they hold (the table above)
EXPORTS, REPORTS, DIGESTS, VALIDATION, DATA_DOCS = "exports", "reports", "digests", "validation", "data-docs"
AREAS = (EXPORTS, REPORTS, DIGESTS, VALIDATION, DATA_DOCS)


def is_path_like(where) -> bool:
    """A pathlib-like object (Path, UPath, ObjectStoragePath), as opposed to a string."""
    return not isinstance(where, str | bytes) and hasattr(where, "open") and hasattr(where, "__truediv__")


def as_path(where):
    """``where`` as a path-like object: path-like objects as they are, a local path or ``file://`` URI as a
    ``pathlib.Path``, any other URI as a ``upath.UPath`` (fsspec; no Airflow connection)."""
    if is_path_like(where):
        return where
    text = os.fspath(where)
    if "://" not in text:
        return Path(text)
    if text.startswith("file://"):
        from urllib.parse import unquote, urlsplit

        return Path(unquote(urlsplit(text).path))
    from upath import UPath

    return UPath(text)


def area(base, name: str):
    """The folder ``name`` (one of ``AREAS``) under the store's ``base``."""
    if name not in AREAS:
        raise ValueError(f"{name!r} is not one of the object store's folders {AREAS}")
    return as_path(base) / name


def write_bytes(path, data: bytes) -> None:
    """Write one file of the store (its folder made first where the store has folders)."""
    path = as_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        fh.write(data)


def read_bytes(path) -> bytes:
    with as_path(path).open("rb") as fh:
        return fh.read()


def files(folder, suffix: str = "") -> list:
    """The files directly in ``folder`` whose name ends with ``suffix``, by name; none if it is missing."""
    folder = as_path(folder)
    if not folder.exists():
        return []
    return sorted((p for p in folder.iterdir() if p.name.endswith(suffix) and p.is_file()), key=str)
