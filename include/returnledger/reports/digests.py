"""Daily and weekly operating digests: one mail per owner team (the SYNC_STALLED check they report on is
returnledger.exception_queue.stalled). Building, writing and reading them back; what they say is in
returnledger.reports.digest_sections, the queries in returnledger.reports.digest_sql.

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
from pathlib import Path
from typing import Literal

import psycopg

from returnledger.reports.digest_sections import Digest, Thresholds, daily_digests
from returnledger.reports.weekly_digest import weekly_digests

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


def write_digests(digests: list[Digest], out_dir) -> list[Path]:
    """Write each digest as HTML plus one JSON index of subjects and counts; returns the HTML paths.

    Same run date, same file names: a rerun overwrites its own files.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for d in digests:
        p = out / digest_filename(d)
        p.write_text(d.html, encoding="utf-8")
        paths.append(p)
    if digests:
        d0 = digests[0]
        index = out / f"{d0.kind}-{d0.as_of:%Y-%m-%d}.json"
        index.write_text(
            json.dumps([d.summary(str(p)) for d, p in zip(digests, paths, strict=True)], indent=2),
            encoding="utf-8",
        )
    return paths


def digest_from_file(summary: dict) -> Digest:
    """Rebuild a Digest from write_digests' index entry (the send task reads what the build task wrote)."""
    as_of = datetime.fromisoformat(summary["as_of"]) if summary.get("as_of") else None
    return Digest(
        summary["owner"],
        summary["subject"],
        Path(summary["path"]).read_text(encoding="utf-8"),
        dict(summary["counts"]),
        summary.get("kind", "daily"),
        as_of,
    )


def build_and_write(
    dsn, *, as_of: datetime, kind: Kind, out_dir, thresholds: Thresholds = DEFAULT_THRESHOLDS
) -> list[dict]:
    """The DAG's build step: digests for the run date, written to ``out_dir``; returns their summaries."""
    digests = build_digests(dsn, as_of=as_of, kind=kind, thresholds=thresholds)
    paths = write_digests(digests, out_dir)
    return [d.summary(str(p)) for d, p in zip(digests, paths, strict=True)]
