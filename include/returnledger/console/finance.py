"""Finance's page: the current month (from the latest daily check) and every closed month, each number
linking to its rows, the month-end report and its CSV to download.

Plain query functions on an open psycopg connection (the pages, the tests and the bench call them):

* ``finance_summary(conn, key)`` -> one result key's figures (``'YYYY-MM'``, a close; ``'daily:YYYY-MM-DD'``,
  a daily check): rows and money (credited, owed) per reconciliation status with the grand total, and money
  at risk (credit owed and not accepted by Amazon: CREDIT_MISSING, CREDIT_REJECTED, PENDING with an amount
  owed) by age and by month of origin. One pass over the key's partition of ``ledger.recon_result``, the
  rows the month-end report is written from. ``ties_out(summary, close)``: a closed month's figures are
  what its close stored with its report.
* ``closed_summary(conn, close)`` -> the same for a closed month, read once per close version (a close is
  final: its results are not recomputed while it is in force).
* ``daily_summary(conn, key)`` -> the same for a daily check, read again only when its rows were written
  since (PostgreSQL's counts of the writes to its partition).
* ``latest_daily_key(conn)`` -> the latest daily check's result key, None when there is none.
* ``closed_months(conn)`` -> every closed month in force with its stored per-status totals (the trend).
* ``finance_rows(conn, key, status=None, bucket=None, origin=None, at_risk=False, limit=500)`` -> the rows
  behind one number, by row key (through the partition's primary key).
* ``report_file(conn, period, name, base=None)`` -> a closed month's ``month_end_report.csv``/``.html``: from
  the object store (``reports/<period>/``, returnledger.airflow.objects.report_base) when the file there is
  the close's (its sha256), else the bytes the close stored.

The routes are in ``console.finance_pages``.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
from datetime import UTC, date
from decimal import Decimal

import psycopg
from psycopg.rows import dict_row

from returnledger.reconciliation.results import partitions
from returnledger.reports.carry_over import AGE_BUCKETS, AT_RISK, STATUS_ORDER

log = logging.getLogger(__name__)

#: the files of a close, as the month-end report names them (returnledger.reports.finance)
REPORT_FILES = {"month_end_report.csv": "csv_gzip", "month_end_report.html": "html"}
#: the moment a key's figures are as of: a rolling daily check's last run (its rows keep the moment of the run
#: that last changed them, reconciliation.incremental), else the rows' own (a close's are all the same)
_AS_OF = "COALESCE((SELECT s.as_of FROM ledger.recon_state s WHERE s.result_key = %(key)s), computed_at)"
_AGE = f"({_AS_OF} AT TIME ZONE 'UTC')::date - origin_date"
_BUCKET = {
    "0-30": f"{_AGE} <= 30",
    "31-60": f"{_AGE} BETWEEN 31 AND 60",
    "61-90": f"{_AGE} BETWEEN 61 AND 90",
    ">90": f"({_AGE} > 90 OR origin_date IS NULL)",
}
_AT_RISK_WHERE = "recon_status = ANY(%(at_risk)s) AND amount_owed <> 0"

# One pass over the key's partition, grouped by what the page breaks the figures down by: status, the day of
# origin and the run's moment (a few hundred groups for a million rows); age buckets and months of origin are
# made from the groups. No expression per row, so PostgreSQL scans and aggregates in parallel.
_SUMMARY_SQL = """
SELECT recon_status, origin_date, computed_at, count(*) AS rows,
       COALESCE(sum(credited_amount), 0) AS credited_amount, COALESCE(sum(amount_owed), 0) AS amount_owed,
       COALESCE(sum(quantity_received), 0) AS units_received,
       count(*) FILTER (WHERE amount_owed <> 0) AS owing_rows
  FROM ledger.recon_result WHERE period = %(key)s
 GROUP BY recon_status, origin_date, computed_at
"""

_CLOSED_SQL = """
SELECT period, version, as_of, batch_id, rows, totals, csv_sha256, html_sha256
  FROM ledger.period_close WHERE reopened_at IS NULL ORDER BY period
"""

_ROWS_SQL = """
SELECT row_key, return_id, line, amazon_return_id, sku, recon_status, amazon_status, credit_note_id,
       credited_quantity, credited_amount, amount_owed, currency, first_reported, origin_date,
       {age} AS age_days
  FROM ledger.recon_result
 WHERE period = %(key)s {where}
 ORDER BY row_key
 LIMIT %(limit)s
"""

_MEASURES = ("rows", "credited_amount", "amount_owed", "units_received")


def latest_daily_key(conn: psycopg.Connection) -> str | None:
    """The result key of the latest daily check (``daily:YYYY-MM-DD``)."""
    daily = [k for k in partitions(conn) if k.startswith("daily:")]
    return max(daily) if daily else None


def key_period(key: str) -> str:
    """The month a result key checks: ``YYYY-MM`` itself, or the month of a daily check's day."""
    return key[len("daily:") : len("daily:") + 7] if key.startswith("daily:") else key


def age_bucket(age_days: int | None) -> str:
    """The report's age bucket of a row ``age_days`` old (no origin: the oldest, as in the report)."""
    if age_days is None or age_days > 90:
        return ">90"
    return "0-30" if age_days <= 30 else "31-60" if age_days <= 60 else "61-90"


def finance_summary(conn: psycopg.Connection, key: str) -> dict:
    """One result key's figures: per status, the grand total, money at risk by age and month of origin."""
    with conn.cursor(row_factory=dict_row) as cur:
        groups = cur.execute(_SUMMARY_SQL, {"key": key}).fetchall()
        state = cur.execute("SELECT as_of FROM ledger.recon_state WHERE result_key = %s", (key,)).fetchone()
    zero = dict.fromkeys(_MEASURES, 0)
    by_status: dict[str, dict] = {}
    by_age: dict[str, dict] = {b: {"rows": 0, "amount": Decimal("0")} for b in AGE_BUCKETS}
    by_origin: dict[str, dict] = {}
    risk_by_status: dict[str, dict] = {}
    computed_at = None
    for g in groups:
        s = by_status.setdefault(g["recon_status"], dict(zero))
        for m in _MEASURES:
            s[m] += g[m]
        at = state["as_of"] if state else g["computed_at"]
        computed_at = max(computed_at, at) if computed_at else at
        if g["recon_status"] not in AT_RISK or not g["owing_rows"]:
            continue
        origin = g["origin_date"]
        age = (at.astimezone(UTC).date() - origin).days if origin else None
        for table, k in (
            (by_age, age_bucket(age)),
            (by_origin, f"{origin:%Y-%m}" if origin else ""),
            (risk_by_status, g["recon_status"]),
        ):
            t = table.setdefault(k, {"rows": 0, "amount": Decimal("0")})
            t["rows"] += g["owing_rows"]
            t["amount"] += g["amount_owed"]
    total = {m: sum((s[m] for s in by_status.values()), 0) for m in _MEASURES}
    return {
        "key": key,
        "period": key_period(key),
        "daily": key.startswith("daily:"),
        "computed_at": computed_at,
        "by_status": {st: by_status[st] for st in STATUS_ORDER if st in by_status},
        "total": total,
        "at_risk": {
            "by_age": by_age,
            "by_origin": dict(sorted(by_origin.items())),
            "by_status": {st: risk_by_status[st] for st in STATUS_ORDER if st in risk_by_status},
            "rows": sum(v["rows"] for v in by_age.values()),
            "amount": sum((v["amount"] for v in by_age.values()), Decimal("0")),
        },
    }


#: closed months' figures, by (ledger, period, version, csv sha256): a close is final (its results are not
#: recomputed while it is in force; reopening ends it, the next close is a new version), so they are read once
_CLOSED_FIGURES: dict[tuple, dict] = {}
_CLOSED_KEPT = 24


def closed_summary(conn: psycopg.Connection, close: dict) -> dict:
    """``finance_summary`` of a closed month (a ``closed_months`` entry), read once per close version."""
    info = conn.info
    key = (info.host, info.port, info.dbname, close["period"], close["version"], close["csv_sha256"])
    found = _CLOSED_FIGURES.get(key)
    if found is None:
        found = finance_summary(conn, close["period"])
        if len(_CLOSED_FIGURES) >= _CLOSED_KEPT:
            _CLOSED_FIGURES.pop(next(iter(_CLOSED_FIGURES)), None)
        _CLOSED_FIGURES[key] = found
    return found


# What changes when a daily check's rows change: its partition (a new one after a drop) and PostgreSQL's
# counts of the rows written to it (shared statistics, flushed by the writing session within seconds)
_WRITES_SQL = """
SELECT c.oid::bigint, c.relfilenode::bigint, s.n_tup_ins, s.n_tup_upd, s.n_tup_del
  FROM pg_class c JOIN pg_stat_all_tables s ON s.relid = c.oid
 WHERE c.oid = to_regclass(format('ledger.%%I', ledger.recon_partition_name(%s)))
"""
_DAILY_FIGURES: dict[tuple, dict] = {}


def daily_summary(conn: psycopg.Connection, key: str) -> dict:
    """``finance_summary`` of a daily check, read again only when its rows were written since (its partition
    and the rows written to it, as PostgreSQL counts them); without those counts, read every time."""
    writes = conn.execute(_WRITES_SQL, (key,)).fetchone()
    if writes is None:
        return finance_summary(conn, key)
    info = conn.info
    version = (info.host, info.port, info.dbname, key, *writes)
    found = _DAILY_FIGURES.get(version)
    if found is None:
        found = finance_summary(conn, key)
        _DAILY_FIGURES.clear()  # only the latest check's figures are kept
        _DAILY_FIGURES[version] = found
    return found


def ties_out(summary: dict, close: dict) -> bool:
    """Whether a closed month's figures are what its close stored with its report (rows and credit owed
    per status): the page says so beside them."""
    stored = {s: (v["rows"], Decimal(v["amount_owed"])) for s, v in close["totals"].items()}
    return stored == {s: (v["rows"], Decimal(v["amount_owed"])) for s, v in summary["by_status"].items()}


def closed_months(conn: psycopg.Connection) -> list[dict]:
    """Every closed month in force, oldest first, with its stored per-status totals (rows, amount owed)."""
    with conn.cursor(row_factory=dict_row) as cur:
        months = cur.execute(_CLOSED_SQL).fetchall()
    for m in months:
        m["totals"] = {s: m["totals"][s] for s in STATUS_ORDER if s in (m["totals"] or {})}
        m["amount_owed"] = sum((Decimal(v["amount_owed"]) for v in m["totals"].values()), Decimal("0"))
        m["at_risk"] = sum(
            (Decimal(v["amount_owed"]) for s, v in m["totals"].items() if s in AT_RISK), Decimal("0")
        )
    return months


def _origin_bounds(origin: str) -> tuple[date, date]:
    year, month = int(origin[:4]), int(origin[5:7])
    return date(year, month, 1), date(year + (month == 12), month % 12 + 1, 1)


def finance_rows(
    conn: psycopg.Connection,
    key: str,
    *,
    status: str | None = None,
    bucket: str | None = None,
    origin: str | None = None,
    at_risk: bool = False,
    limit: int = 500,
) -> list[dict]:
    """The rows behind one number of the page (the same filters the summary counts by)."""
    where, params = [], {"key": key, "limit": limit, "at_risk": AT_RISK}
    if status:
        if status not in STATUS_ORDER:
            raise ValueError(f"unknown reconciliation status {status!r}")
        where.append("recon_status = %(status)s")
        params["status"] = status
    if at_risk:
        where.append(_AT_RISK_WHERE)
    if bucket:
        if bucket not in _BUCKET:
            raise ValueError(f"age must be one of {', '.join(_BUCKET)}")
        where.append(_BUCKET[bucket])
    if origin is not None:
        if origin == "":
            where.append("origin_date IS NULL")
        else:
            try:
                params["from"], params["to"] = _origin_bounds(origin)
            except (ValueError, IndexError):
                raise ValueError("origin must be a month, YYYY-MM") from None
            where.append("origin_date >= %(from)s AND origin_date < %(to)s")
    sql = _ROWS_SQL.format(age=_AGE, where="".join(f" AND {w}" for w in where))
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(sql, params).fetchall()


def report_file(conn: psycopg.Connection, period: str, name: str, base=None) -> tuple[bytes, str]:
    """A closed month's report file and where it came from (``object store`` or ``stored close``)."""
    if name not in REPORT_FILES:
        raise LookupError(f"no report file {name!r}")
    kind = "csv" if name.endswith(".csv") else "html"
    row = conn.execute(
        f"SELECT {REPORT_FILES[name]}, {kind}_sha256, version FROM ledger.period_close"
        " WHERE period = %s AND reopened_at IS NULL",
        (period,),
    ).fetchone()
    if row is None:
        raise LookupError(f"{period} is not closed: no month-end report")
    stored, sha, version = row
    try:
        from returnledger.store.objects import read_bytes

        if base is None:
            from returnledger.airflow.objects import report_base

            base = report_base()
        data = read_bytes(base / period / name)
        if hashlib.sha256(data).hexdigest() == sha:
            return data, "object store"
        log.warning(
            "%s/%s in the object store is not version %s's (sha256): the stored close is served",
            period,
            name,
            version,
        )
    except Exception as exc:  # not in the store (or the store unreachable): the close stored the bytes
        log.info("%s/%s not read from the object store (%s: %s)", period, name, type(exc).__name__, exc)
    data = gzip.decompress(stored) if kind == "csv" else bytes(stored)
    if hashlib.sha256(data).hexdigest() != sha:
        raise RuntimeError(f"the stored {name} of {period} version {version} does not match its sha256")
    return data, "stored close"
