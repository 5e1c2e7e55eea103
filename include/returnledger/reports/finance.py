"""The month-end report finance closes the period with (CSV + HTML).

Written from ``ledger.recon_result`` of the closed period only, so it shows
exactly what reconciliation decided and a rerun writes byte-identical files.
The totals per recon status are computed by PostgreSQL and must add up to
the period's grand total (rows, units and pounds) before anything is written.

A close covers what is still open from earlier months (scenarios/README.md, "Periods"), so every row says
which close first reported it and how old it is, and the HTML opens with the money at risk by age and by
month of origin, then the trend over every closed month. Once a close stores its report
(returnledger.reconciliation.closes) the month is final: writing its report again writes the stored files.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import logging
from dataclasses import dataclass
from decimal import Decimal

from returnledger.models import ReconStatus
from returnledger.render import cell, render, spreadsheet_text
from returnledger.reports.carry_over import (
    CARRY_SQL,
    TREND_SQL,
    VERSIONS_SQL,
    carry_over,
    stored_totals,
    trend_chart,
    trend_of,
)
from returnledger.store.db import connect
from returnledger.store.objects import as_path

log = logging.getLogger(__name__)

#: the scenario contract's columns (scenarios/README.md), in order
REPORT_COLUMNS = [
    "return_id",
    "line",
    "sku",
    "asin",
    "quantity_received",
    "grade",
    "disposition",
    "credit_note_id",
    "credited_quantity",
    "credited_amount",
    "currency",
    "amazon_status",
    "recon_status",
    "amazon_return_id",
]
#: references finance quotes when chasing Amazon, and Amazon's own figures
EXTRA_COLUMNS = [
    "returns_notice",
    "rma_id",
    "vret",
    "amazon_quantity",
    "charged_amount",
    "post_hoc_return_id",
]
#: carry-over, at the end so the columns above keep their places: the close that first reported the row,
#: the day it originates from (return created, Amazon row returned), its age in days at this close, and
#: the credit the line is owed (money at risk when Amazon has not accepted it)
CARRY_COLUMNS = ["first_reported", "origin_date", "age_days", "amount_owed"]
CSV_COLUMNS = REPORT_COLUMNS + EXTRA_COLUMNS + CARRY_COLUMNS
CSV_NAME = "month_end_report.csv"
HTML_NAME = "month_end_report.html"
MEASURES = [
    "rows",
    "units_received",
    "amazon_units",
    "credited_quantity",
    "credited_amount",
    "charged_amount",
]
DETAIL_LIMIT = 200  # rows per status listed in the HTML (the CSV has all)

#: what finance does with each status (docs/reconciliation.md has the long form)
STATUS_ACTIONS = {
    "MATCHED": "Nothing: credit owed, accepted by Amazon and agreeing with the export.",
    "CREDIT_MISMATCH": "Raise a dispute in Vendor Central for the difference (exception owner: finance).",
    "CREDIT_MISSING": "Chase Amazon for the credit note; accrue the credit at month end.",
    "CREDIT_REJECTED": "Integration fixes the rejected credit note and resubmits; accrue meanwhile.",
    "DARK_RETURN": "Warehouse checks the parcel; a post-hoc ReBound return is created. Do not credit yet.",
    "QUARANTINED": "Operations clears the hold (reason-code mapping, SKU, sequence); the next close reports "
    "it again until it settles.",
    "PENDING": "Still in the warehouse or within the credit window; the next close reports it again until it "
    "settles.",
    "ON_HOLD": "Policy holds the credit (e.g. quarantined stock); review with operations. Carried to the "
    "next close.",
    "NO_CREDIT_DUE": "Nothing: the policy owes no credit (e.g. inspection rejected the item).",
}
STATUS_COLOURS = {
    "MATCHED": "#2e7d32",
    "NO_CREDIT_DUE": "#8d6e63",
    "PENDING": "#90a4ae",
    "ON_HOLD": "#ffb300",
    "QUARANTINED": "#6a1b9a",
    "CREDIT_REJECTED": "#c62828",
    "CREDIT_MISSING": "#ef6c00",
    "CREDIT_MISMATCH": "#ad1457",
    "DARK_RETURN": "#283593",
}
STATUS_ORDER = [s.value for s in ReconStatus]


class ReportDoesNotTieOut(AssertionError):
    """The per-status totals do not add up to the whole; the report is not written."""


# The post-hoc ReBound return is read live: it is created after matching, in the same run.
_ROWS_SQL = f"""
SELECT {", ".join("r." + c for c in REPORT_COLUMNS + EXTRA_COLUMNS[:-1])},
       CASE WHEN r.recon_status = 'DARK_RETURN' THEN COALESCE(a.linked_return_id, r.post_hoc_return_id) END,
       r.first_reported, r.origin_date, (r.computed_at AT TIME ZONE 'UTC')::date - r.origin_date,
       r.amount_owed
  FROM ledger.recon_result r
  LEFT JOIN ledger.amazon_return a ON a.amazon_return_id = r.amazon_return_id
 WHERE r.period = %(period)s
 ORDER BY r.return_id IS NULL, r.return_id, r.line, r.amazon_return_id
"""

_TOTALS_SQL = """
SELECT recon_status, count(*), COALESCE(sum(quantity_received), 0), COALESCE(sum(amazon_quantity), 0),
       COALESCE(sum(credited_quantity), 0), COALESCE(sum(credited_amount), 0),
       COALESCE(sum(charged_amount), 0),
       GROUPING(recon_status) AS is_total
  FROM ledger.recon_result
 WHERE period = %(period)s
 GROUP BY GROUPING SETS ((recon_status), ())
"""

_META_SQL = """
SELECT max(computed_at), max(batch_id), string_agg(DISTINCT currency, ', ')
  FROM ledger.recon_result WHERE period = %(period)s
"""


def _totals(conn, period: str) -> tuple[dict, dict]:
    return tie_out(period, conn.execute(_TOTALS_SQL, {"period": period}).fetchall())


def tie_out(period: str, grouped_rows) -> tuple[dict, dict]:
    """Per-status measures and the grand total from GROUPING SETS rows; raises unless they add up."""
    by_status, total = {}, None
    for status, *values, is_total in grouped_rows:
        measures = dict(zip(MEASURES, values))
        if is_total:
            total = measures
        else:
            by_status[status] = measures
    total = total or dict.fromkeys(MEASURES, 0)
    for m in MEASURES:
        added = sum((s[m] for s in by_status.values()), 0)
        if added != total[m]:
            raise ReportDoesNotTieOut(f"{period}: {m} per status adds up to {added}, the total is {total[m]}")
    ordered = {s: by_status[s] for s in STATUS_ORDER if s in by_status}
    return ordered, total


def _chart(by_status: dict, measure: str, width: int = 520) -> list[dict]:
    """Bars for an inline SVG chart (no JavaScript, renders in any mail client or browser)."""
    top = max((float(v[measure]) for v in by_status.values()), default=0.0) or 1.0
    return [
        {
            "status": s,
            "value": cell(v[measure]),
            "width": round(float(v[measure]) / top * width, 1),
            "colour": STATUS_COLOURS.get(s, "#607d8b"),
            "y": i * 26,
        }
        for i, (s, v) in enumerate(by_status.items())
    ]


def _render_html(
    period: str,
    meta,
    by_status: dict,
    total: dict,
    details: dict,
    counts: dict,
    *,
    carry: dict | None = None,
    trend: list[dict] | None = None,
    versions: list | None = None,
) -> str:
    as_of, batch_id, currency = meta
    trend = trend or []
    return render(
        HTML_NAME,
        period=period,
        as_of=as_of.isoformat() if as_of else "",
        batch_id=batch_id or "",
        currency=currency or "GBP",
        by_status={s: {k: cell(v) for k, v in m.items()} for s, m in by_status.items()},
        total={k: cell(v) for k, v in total.items()},
        actions=STATUS_ACTIONS,
        colours=STATUS_COLOURS,
        rows_chart=_chart(by_status, "rows"),
        amount_chart=_chart(by_status, "credited_amount"),
        details=details,
        detail_counts=counts,
        columns=CSV_COLUMNS,
        limit=DETAIL_LIMIT,
        csv_name=CSV_NAME,
        carry=carry,
        trend=trend,
        trend_chart=trend_chart(trend, STATUS_COLOURS) if trend else None,
        trend_statuses=[s for s in STATUS_ORDER if any(s in m["totals"] for m in trend)],
        versions=versions or [],
    )


@dataclass
class WrittenReport:
    """A report as written: its summary, and the files' bytes and sha256 for the close to store."""

    result: dict
    csv_gzip: bytes
    csv_sha256: str
    html: bytes
    html_sha256: str
    totals: dict


def write_month_end_report(dsn: str, period: str, out_base, *, allow_empty: bool = False) -> dict:
    """Write month_end_report.csv and .html under ``out_base`` (a folder of the store); returns the totals.

    A closed month's report is final: its stored files are written out as they were. Refuses to write an
    empty report unless ``allow_empty``: no rows for a period almost always means reconciliation has not
    run for it.
    """
    from returnledger.reconciliation import closes

    stored = closes.write_stored(dsn, period, out_base)
    if stored is not None:
        return stored
    return write_report(dsn, period, out_base, allow_empty=allow_empty).result


def write_report(dsn: str, period: str, out_base, *, allow_empty: bool = False) -> WrittenReport:
    """Write the report from the period's results as they are now (the close stores what this returns)."""
    attention = ["CREDIT_MISSING", "CREDIT_MISMATCH", "CREDIT_REJECTED", "DARK_RETURN", "QUARANTINED"]
    details: dict[str, list[list[str]]] = {s: [] for s in attention}
    counts: dict[str, int] = dict.fromkeys(attention, 0)
    status_idx = REPORT_COLUMNS.index("recon_status")

    base = as_path(out_base)
    base.mkdir(parents=True, exist_ok=True)
    csv_path = base / CSV_NAME
    csv_hash = hashlib.sha256()
    packed = io.BytesIO()
    with connect(dsn) as conn:
        by_status, total = _totals(conn, period)
        if not total["rows"] and not allow_empty:
            raise LookupError(f"no reconciliation results for {period}: run reconcile for the period first")
        meta = conn.execute(_META_SQL, {"period": period}).fetchall()[0]  # an aggregate: always one row
        carry = carry_over(conn.execute(CARRY_SQL, {"period": period}).fetchall(), period)
        trend = trend_of(conn.execute(TREND_SQL, {"period": period}).fetchall(), period, carry["statuses"])
        versions = conn.execute(VERSIONS_SQL, {"period": period}).fetchall()
        with (
            csv_path.open("wb") as fb,
            gzip.GzipFile(fileobj=packed, mode="wb", mtime=0, compresslevel=1) as gz,
        ):
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")

            def flush() -> None:
                data = buffer.getvalue().encode("utf-8")
                buffer.seek(0)
                buffer.truncate()
                fb.write(data)
                gz.write(data)
                csv_hash.update(data)

            writer.writerow(CSV_COLUMNS)
            with conn.cursor(name="month_end_report") as cur:  # server-side: a million rows stream through
                cur.itersize = 20000
                cur.execute(_ROWS_SQL, {"period": period})
                for i, row in enumerate(cur, 1):
                    cells = [cell(v) for v in row]
                    # text (ReBound's SKU, notice, RMA, VRET...) never runs as a formula in a spreadsheet
                    writer.writerow(
                        [spreadsheet_text(c) if type(v) is str else c for v, c in zip(row, cells)]
                    )
                    status = cells[status_idx]
                    if status in counts:
                        counts[status] += 1
                        if len(details[status]) < DETAIL_LIMIT:
                            details[status].append(cells)
                    if not i % 20000:
                        flush()
            flush()
    html = _render_html(
        period, meta, by_status, total, details, counts, carry=carry, trend=trend, versions=versions
    ).encode("utf-8")
    html_path = base / HTML_NAME
    with html_path.open("wb") as fb:
        fb.write(html)

    def plain(m: dict) -> dict:
        return {k: (cell(v) if isinstance(v, Decimal) else v) for k, v in m.items()}

    result = {
        "period": period,
        "as_of": meta[0].isoformat() if meta[0] else None,
        "rows": total["rows"],
        "total": plain(total),
        "by_status": {s: plain(m) for s, m in by_status.items()},
        "carried_rows": carry["carried_rows"],
        "new_rows": carry["new_rows"],
        "at_risk": cell(carry["at_risk"]),
        "csv": str(csv_path),
        "html": str(html_path),
        "csv_sha256": csv_hash.hexdigest(),
        "html_sha256": hashlib.sha256(html).hexdigest(),
    }
    log.info("month-end report for %s: %s rows, %s", period, total["rows"], result["total"])
    return WrittenReport(
        result=result,
        csv_gzip=packed.getvalue(),
        csv_sha256=result["csv_sha256"],
        html=html,
        html_sha256=result["html_sha256"],
        totals=stored_totals(carry["statuses"]),
    )
