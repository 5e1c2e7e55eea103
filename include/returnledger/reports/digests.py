"""Daily and weekly operating digests: one mail per owner team (the SYNC_STALLED check they report on is
returnledger.exception_queue.stalled). Building, writing and reading them back; what they say is in
returnledger.reports.digest_sections, the queries in returnledger.reports.digest_sql.

The DAGs' ``build`` and ``send`` tasks may run on different hosts: the files go to the ``digests/`` folder
of the shared object store (returnledger.store.objects), and ``send`` reads them back from there by the
file name in the summary ``build`` returned, never from a local disk.

Every number is computed *as of* the run's date (the data interval end), never
the wall clock, so rerunning a past day's check gives that day's digest again:
an exception counts as open at ``as_of`` when it was opened before and not yet
resolved then. Thresholds are arguments (the DAG passes the defaults of Thresholds).

Routing follows configuration: an exception goes to the owner team stored on
it (from owners.yaml at raise time); a section about one kind of problem (stale
reason mappings, dark returns, stalled flows) goes to the owner team of the
matching exception type in ``ledger.owner_team``.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Literal

import psycopg

from returnledger.reports.digest_sections import Digest, Thresholds, daily_digests
from returnledger.reports.weekly_digest import weekly_digests
from returnledger.store.objects import as_path, write_bytes

Kind = Literal["daily", "weekly"]
DEFAULT_THRESHOLDS = Thresholds()


def build_digests(
    dsn, *, as_of: datetime, kind: Kind, thresholds: Thresholds = DEFAULT_THRESHOLDS
) -> list[Digest]:
    """One digest per owner team for the run date ``as_of`` (read only: call check_stalled_flows first)."""
    from returnledger.store.db import connect

    if kind not in ("daily", "weekly"):
        raise ValueError(f"kind must be 'daily' or 'weekly', not {kind!r}")
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware (the run's data interval end)")
    conn_ctx = connect(dsn) if not isinstance(dsn, psycopg.Connection) else None
    conn = conn_ctx if conn_ctx is not None else dsn
    try:
        build = daily_digests if kind == "daily" else weekly_digests
        return build(conn, as_of, thresholds)
    finally:
        if conn_ctx is not None:
            conn_ctx.close()


def digest_filename(d: Digest) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in d.owner)
    return f"{d.kind}-{d.as_of:%Y-%m-%d}-{safe}.html"


def _summary(d: Digest, path) -> dict:
    """The digest's summary (XCom) naming its file: ``file`` in the digests folder, ``path`` in full."""
    return {**d.summary(str(path)), "file": path.name}


def write_digests(digests: list[Digest], out_dir) -> list:
    """Write each digest as HTML plus one JSON index of subjects and counts into ``out_dir`` (the store's
    ``digests/`` folder, a path-like object, or a local folder); returns the HTML paths.

    Same run date, same file names: a rerun overwrites its own files.
    """
    out = as_path(out_dir)
    paths = []
    for d in digests:
        p = out / digest_filename(d)
        write_bytes(p, d.html.encode("utf-8"))
        paths.append(p)
    if digests:
        d0 = digests[0]
        index = [_summary(d, p) for d, p in zip(digests, paths, strict=True)]
        write_bytes(out / f"{d0.kind}-{d0.as_of:%Y-%m-%d}.json", json.dumps(index, indent=2).encode("utf-8"))
    return paths


def digest_from_file(summary: dict, folder=None) -> Digest:
    """Rebuild a Digest from write_digests' index entry (the send task reads what the build task wrote):
    the file ``summary["file"]`` in ``folder`` (the store's digests folder), else ``summary["path"]``."""
    as_of = datetime.fromisoformat(summary["as_of"]) if summary.get("as_of") else None
    if folder is not None and summary.get("file"):
        path = as_path(folder) / summary["file"]
    else:
        path = as_path(summary["path"])
    with path.open("rb") as fh:
        html = fh.read().decode("utf-8")
    return Digest(
        summary["owner"],
        summary["subject"],
        html,
        dict(summary["counts"]),
        summary.get("kind", "daily"),
        as_of,
    )


def build_and_write(
    dsn, *, as_of: datetime, kind: Kind, out_dir, thresholds: Thresholds = DEFAULT_THRESHOLDS
) -> list[dict]:
    """The DAG's build step: digests for the run date, written to ``out_dir`` (the store's digests folder);
    returns their summaries (what ``send`` gets through XCom, the file name among them)."""
    digests = build_digests(dsn, as_of=as_of, kind=kind, thresholds=thresholds)
    paths = write_digests(digests, out_dir)
    return [_summary(d, p) for d, p in zip(digests, paths, strict=True)]
