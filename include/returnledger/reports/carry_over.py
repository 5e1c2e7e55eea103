"""Carry-over in the month-end report: which close first reported each row, money at risk (credit owed
and not accepted by Amazon) by age and by month of origin, and the trend over every closed month (the
closes' stored totals). Read by returnledger.reports.finance in one pass over the close's rows."""

from __future__ import annotations

from decimal import Decimal

from returnledger.models import ReconStatus
from returnledger.render import cell

STATUS_ORDER = [s.value for s in ReconStatus]

#: money at risk: credit owed and not accepted by Amazon (refused, missing, or sent and still in its window)
AT_RISK = ["CREDIT_MISSING", "CREDIT_REJECTED", "PENDING"]
AGE_BUCKETS = ["0-30", "31-60", "61-90", ">90"]

# One pass over the close's rows for the carry-over: rows and credit owed per first-reporting close,
# month of origin, age bucket and status.
CARRY_SQL = """
SELECT first_reported, to_char(origin_date, 'YYYY-MM'),
       CASE WHEN age <= 30 THEN '0-30' WHEN age <= 60 THEN '31-60' WHEN age <= 90 THEN '61-90' ELSE '>90' END,
       recon_status, count(*), COALESCE(sum(amount_owed), 0)
  FROM (SELECT first_reported, origin_date, recon_status, amount_owed,
               (computed_at AT TIME ZONE 'UTC')::date - origin_date AS age
          FROM ledger.recon_result WHERE period = %(period)s) r
 GROUP BY 1, 2, 3, 4
 ORDER BY 1, 2, 3, 4
"""

# The closes in force before this period (their stored totals), for the trend; and this period's earlier
# versions (reopened), which a new version shows beside itself.
TREND_SQL = """
SELECT period, version, totals FROM ledger.period_close
 WHERE reopened_at IS NULL AND period < %(period)s ORDER BY period
"""
VERSIONS_SQL = """
SELECT version, as_of, batch_id, rows, csv_sha256, html_sha256, reopened_at, reopened_by, reopen_reason,
       totals
  FROM ledger.period_close WHERE period = %(period)s ORDER BY version
"""


def carry_over(rows, period: str) -> dict:
    """The carry-over tables from CARRY_SQL rows: money at risk by age and by month of origin, rows per
    first-reporting close (this close's new rows against those carried from earlier closes), and the
    per-status totals kept for the trend."""
    by_age: dict[str, dict] = {b: {"rows": 0, "amount": Decimal("0")} for b in AGE_BUCKETS}
    by_origin: dict[str, dict] = {}
    by_first: dict[str, dict] = {}
    statuses: dict[str, dict] = {}
    for first, origin, bucket, status, n, amount in rows:
        amount = Decimal(amount)
        st = statuses.setdefault(status, {"rows": 0, "amount_owed": Decimal("0")})
        st["rows"] += n
        st["amount_owed"] += amount
        f = by_first.setdefault(first or "", {"rows": 0, "at_risk": Decimal("0")})
        f["rows"] += n
        if status in AT_RISK and amount:
            by_age[bucket]["rows"] += n
            by_age[bucket]["amount"] += amount
            o = by_origin.setdefault(origin or "", {"rows": 0, "amount": Decimal("0")})
            o["rows"] += n
            o["amount"] += amount
            f["at_risk"] += amount
    return {
        "by_age": by_age,
        "by_origin": dict(sorted(by_origin.items())),
        "by_first": dict(sorted(by_first.items())),
        "carried_rows": sum(v["rows"] for k, v in by_first.items() if k and k < period),
        "new_rows": sum(v["rows"] for k, v in by_first.items() if not k or k >= period),
        "at_risk": sum((v["amount"] for v in by_age.values()), Decimal("0")),
        "statuses": {s: statuses[s] for s in STATUS_ORDER if s in statuses},
    }


def stored_totals(statuses: dict) -> dict:
    """Per-status totals as a close stores them (JSON: amounts as text)."""
    return {s: {"rows": v["rows"], "amount_owed": cell(v["amount_owed"])} for s, v in statuses.items()}


def trend_of(earlier: list, period: str, statuses: dict) -> list[dict]:
    """Every closed month up to this one: rows and credit owed per status (earlier closes' stored totals,
    then this close's)."""
    months = [{"period": p, "version": v, "totals": t} for p, v, t in earlier]
    months.append({"period": period, "version": None, "totals": stored_totals(statuses)})
    return months


def trend_chart(trend: list[dict], colours: dict, width: int = 520) -> dict:
    """Stacked bars of rows per status per closed month, for an inline SVG."""
    top = max((sum(v["rows"] for v in m["totals"].values()) for m in trend), default=0) or 1
    bars = []
    for i, m in enumerate(trend):
        x = 0.0
        for status in STATUS_ORDER:
            n = m["totals"].get(status, {}).get("rows", 0)
            if not n:
                continue
            w = round(n / top * width, 1)
            bars.append(
                {
                    "y": i * 26,
                    "x": round(140 + x, 1),
                    "width": w,
                    "colour": colours.get(status),
                    "n": n,
                }
            )
            x += w
    labels = [
        {"y": i * 26, "period": m["period"], "rows": sum(v["rows"] for v in m["totals"].values())}
        for i, m in enumerate(trend)
    ]
    return {"bars": bars, "labels": labels, "height": len(trend) * 26 + 4}
