"""Closed months are final (docs/operating-guide.md "Periods: what a close covers, carry-over and ageing,
reopening a month").

A close stores its report as written (the CSV gzip-compressed, the HTML as is, the sha256 of each file) in
``ledger.period_close``, and records what later closes must know in ``ledger.recon_carry``: the lines it
reported and did not settle (they carry, with this close as their first report) and its dark returns
(reported once), and which carried lines it settled. From then on the month's report is the stored one: a
rerun of the close writes the stored files out again, byte for byte, and recomputes nothing. Reopening a
month is an explicit, audited action: the version in force is marked reopened (it stays, with its files),
what it recorded for later closes is taken back, and the month's next close writes version + 1, whose
report shows the earlier versions beside itself. Only the latest closed month can be reopened: a later
close was built on it.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime

from psycopg.types.json import Jsonb

from returnledger.reconciliation.period import PeriodClosed, period_bounds
from returnledger.store import audit
from returnledger.store.db import connect, unit_of_work
from returnledger.store.objects import as_path, write_bytes

log = logging.getLogger(__name__)

CSV_NAME = "month_end_report.csv"
HTML_NAME = "month_end_report.html"


class CloseRefused(ValueError):
    """A close or a reopening the rules do not allow (out of order, not closed, a later month closed)."""


@dataclass(frozen=True)
class StoredClose:
    period: str
    version: int
    as_of: datetime
    batch_id: str
    rows: int
    csv_sha256: str
    html_sha256: str
    reopened_at: datetime | None = None
    reopened_by: str | None = None
    reopen_reason: str | None = None

    def as_dict(self) -> dict:
        return {
            "period": self.period,
            "version": self.version,
            "as_of": self.as_of.isoformat(),
            "batch_id": self.batch_id,
            "rows": self.rows,
            "csv_sha256": self.csv_sha256,
            "html_sha256": self.html_sha256,
            "reopened_at": self.reopened_at.isoformat() if self.reopened_at else None,
            "reopened_by": self.reopened_by,
            "reopen_reason": self.reopen_reason,
        }


_FIELDS = (
    "period, version, as_of, batch_id, rows, csv_sha256, html_sha256, reopened_at, reopened_by, reopen_reason"
)
_CURRENT_SQL = f"SELECT {_FIELDS} FROM ledger.period_close WHERE period = %s AND reopened_at IS NULL"
_VERSIONS_SQL = f"SELECT {_FIELDS} FROM ledger.period_close WHERE period = %s ORDER BY version"
_LATER_SQL = "SELECT max(period) FROM ledger.period_close WHERE reopened_at IS NULL AND period > %s"
_LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtext('period_close'))"

# What a close records for later closes (its result rows are the partition of its period).
_CARRY_NEW_SQL = """
INSERT INTO ledger.recon_carry (row_key, return_id, line, first_period, settled_period)
SELECT r.row_key, r.return_id, r.line, %(period)s, CASE WHEN r.return_id IS NULL THEN %(period)s END
  FROM ledger.recon_result r
 WHERE r.period = %(period)s AND r.first_reported = %(period)s
   AND (r.return_id IS NULL OR r.recon_status NOT IN ('MATCHED', 'NO_CREDIT_DUE'))
ON CONFLICT (row_key) DO NOTHING
"""
_CARRY_SETTLED_SQL = """
UPDATE ledger.recon_carry k SET settled_period = %(period)s
  FROM ledger.recon_result r
 WHERE r.period = %(period)s AND r.row_key = k.row_key AND r.return_id IS NOT NULL
   AND r.first_reported < %(period)s AND r.recon_status IN ('MATCHED', 'NO_CREDIT_DUE')
   AND k.settled_period IS NULL
"""
_LATE_REPORTED_SQL = """
UPDATE ledger.recon_late_order x SET reported_period = %(period)s
 WHERE x.reported_period IS NULL
   AND EXISTS (SELECT 1 FROM ledger.return_line l
                 JOIN ledger.recon_result r
                   ON r.period = %(period)s AND r.row_key = l.return_id || '|' || l.line
                WHERE l.return_id = x.return_id)
"""
# ... and what reopening takes back
_UNDO_SQL = [
    "DELETE FROM ledger.recon_carry WHERE first_period = %(period)s",
    "UPDATE ledger.recon_carry SET settled_period = NULL WHERE settled_period = %(period)s",
    "UPDATE ledger.recon_late_order SET reported_period = NULL WHERE reported_period = %(period)s",
]


def _stored(row) -> StoredClose:
    return StoredClose(*row)


def current(conn, period: str) -> StoredClose | None:
    """The close of ``period`` in force, None when the month is open."""
    row = conn.execute(_CURRENT_SQL, (period,)).fetchone()
    return _stored(row) if row else None


def versions(conn, period: str) -> list[StoredClose]:
    """Every close of ``period``, oldest first (reopened ones included)."""
    return [_stored(r) for r in conn.execute(_VERSIONS_SQL, (period,)).fetchall()]


def is_closed(dsn: str, period: str) -> StoredClose | None:
    with connect(dsn) as conn:
        return current(conn, period)


def closed_run(dsn: str, period: str, *, step: str) -> dict | None:
    """For a close run's ``step``: the stored close when the month is closed (and a task log line saying
    that its report is returned as stored, nothing recomputed), None when it is open."""
    close = is_closed(dsn, period)
    if close is None:
        return None
    log.info(
        "%s: %s is closed (version %s, as of %s, run %s, csv sha256 %s): the stored report stands, nothing "
        "is recomputed; reopen the month (returnledger reopen-period) to close it again",
        step,
        period,
        close.version,
        close.as_of.isoformat(),
        close.batch_id,
        close.csv_sha256,
    )
    return {**close.as_dict(), "stored": True}


def write_files(out_base, files: dict[str, bytes]) -> None:
    """Write ``files`` (name -> bytes) into the folder ``out_base`` (a path-like object of the store)."""
    out = as_path(out_base)
    for name, data in files.items():
        write_bytes(out / name, data)


def _files_of(conn, period: str, version: int) -> tuple[bytes, bytes]:
    csv_gzip, html, csv_sha, html_sha = conn.execute(
        "SELECT csv_gzip, html, csv_sha256, html_sha256 FROM ledger.period_close"
        " WHERE period = %s AND version = %s",
        (period, version),
    ).fetchone()
    csv_bytes = gzip.decompress(csv_gzip)
    for name, data, sha in ((CSV_NAME, csv_bytes, csv_sha), (HTML_NAME, bytes(html), html_sha)):
        if hashlib.sha256(data).hexdigest() != sha:
            raise RuntimeError(f"the stored {name} of {period} version {version} does not match its sha256")
    return csv_bytes, bytes(html)


def write_stored(dsn: str, period: str, out_base) -> dict | None:
    """A closed month's report, written out as it was stored (checked against its sha256); None when the
    month is open."""
    with connect(dsn) as conn:
        close = current(conn, period)
        if close is None:
            return None
        csv_bytes, html = _files_of(conn, period, close.version)
    write_files(out_base, {CSV_NAME: csv_bytes, HTML_NAME: html})
    log.info(
        "%s is closed (version %s, as of %s, run %s): wrote its stored report, csv sha256 %s; nothing "
        "recomputed",
        period,
        close.version,
        close.as_of.isoformat(),
        close.batch_id,
        close.csv_sha256,
    )
    return {
        **close.as_dict(),
        "stored": True,
        "csv": str(as_path(out_base) / CSV_NAME),
        "html": str(as_path(out_base) / HTML_NAME),
    }


def check_order(conn, period: str) -> None:
    """Months close in order: a month before a closed one cannot be closed (the later close built on it)."""
    later = conn.execute(_LATER_SQL, (period,)).fetchone()[0]
    if later:
        raise CloseRefused(f"{period} cannot be closed or reopened: {later} is closed after it")


def earlier_files(conn, period: str) -> dict[str, bytes]:
    """The files of every earlier version of ``period``: a new version keeps them beside itself."""
    files = {}
    for v in versions(conn, period):
        csv_bytes, html = _files_of(conn, period, v.version)
        files[f"month_end_report.v{v.version}.csv"] = csv_bytes
        files[f"month_end_report.v{v.version}.html"] = html
    return files


def store_close(dsn: str, period: str, written, *, as_of: datetime, batch_id: str) -> dict:
    """Store a month-end report just written (``reports.finance.WrittenReport``) as the month's next close,
    with what later closes must know about it; refused when another run closed the month meanwhile."""
    _, period_end = period_bounds(period)
    with unit_of_work(dsn) as conn:
        conn.execute(_LOCK_SQL)
        if current(conn, period) is not None:
            raise PeriodClosed(f"{period} was closed by another run meanwhile")
        check_order(conn, period)
        version = conn.execute(
            "SELECT COALESCE(max(version), 0) + 1 FROM ledger.period_close WHERE period = %s", (period,)
        ).fetchall()[0][0]
        conn.execute(
            "INSERT INTO ledger.period_close (period, version, period_end, as_of, batch_id, rows, totals,"
            " csv_gzip, csv_sha256, html, html_sha256)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                period,
                version,
                period_end,
                as_of,
                batch_id,
                written.result["rows"],
                Jsonb(written.totals),
                written.csv_gzip,
                written.csv_sha256,
                written.html,
                written.html_sha256,
            ),
        )
        params = {"period": period}
        carried = conn.execute(_CARRY_NEW_SQL, params).rowcount
        settled = conn.execute(_CARRY_SETTLED_SQL, params).rowcount
        late = conn.execute(_LATE_REPORTED_SQL, params).rowcount
    log.info(
        "closed %s version %s as of %s: %s rows (%s carried from earlier closes, %s new), csv sha256 %s; "
        "%s row(s) carry to the next close, %s carried line(s) settled, %s late return order(s) reported",
        period,
        version,
        as_of.isoformat(),
        written.result["rows"],
        written.result["carried_rows"],
        written.result["new_rows"],
        written.csv_sha256,
        carried,
        settled,
        late,
    )
    return {**written.result, "version": version, "stored": False}


def reopen(dsn: str, period: str, *, actor: str, reason: str, at: datetime) -> StoredClose:
    """Reopen a closed month (an Admin's decision, audited): the version in force stays, marked reopened;
    what it recorded for later closes is taken back; the month's next close writes a new version."""
    if not (actor or "").strip():
        raise CloseRefused("reopening a month needs the name of who reopens it")
    if not (reason or "").strip():
        raise CloseRefused("reopening a month needs a reason")
    period_bounds(period)
    with unit_of_work(dsn) as conn:
        conn.execute(_LOCK_SQL)
        close = current(conn, period)
        if close is None:
            raise CloseRefused(f"{period} is not closed: nothing to reopen")
        check_order(conn, period)
        conn.execute(
            "UPDATE ledger.period_close SET reopened_at = %s, reopened_by = %s, reopen_reason = %s"
            " WHERE period = %s AND version = %s",
            (at, actor, reason.strip(), period, close.version),
        )
        for sql in _UNDO_SQL:
            conn.execute(sql, {"period": period})
        audit.record_one(
            conn,
            at=at,
            actor=actor,
            action="reopen_period",
            subject=period,
            detail={
                "version": close.version,
                "as_of": close.as_of.isoformat(),
                "batch_id": close.batch_id,
                "csv_sha256": close.csv_sha256,
                "html_sha256": close.html_sha256,
                "reason": reason.strip(),
            },
        )
    log.warning("%s version %s reopened by %s: %s", period, close.version, actor, reason)
    return StoredClose(**{**close.__dict__, "reopened_at": at, "reopened_by": actor, "reopen_reason": reason})
