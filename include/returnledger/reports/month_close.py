"""Closing a month: its month-end report written from the period's results, then stored as final.

``reconciliation.closes`` keeps closes (stored reports, what later closes carry, reopening); this module
puts the report (``reports.finance``) and the store together, so reconciliation never calls up into the
reports.
"""

from __future__ import annotations

from datetime import datetime

from returnledger.reconciliation import closes, results
from returnledger.reconciliation.period import period_bounds
from returnledger.reports.finance import write_report
from returnledger.store.db import connect


def close_month(dsn: str, period: str, out_base, *, as_of: datetime, batch_id: str) -> dict:
    """The close's report. A closed month: its stored report, written out again, nothing recomputed. An
    open one: the report written from the period's results (reconcile them first) and stored as the
    month's next version, with what later closes must know about it."""
    period_bounds(period)
    stored = closes.write_stored(dsn, period, out_base)
    if stored is not None:
        return stored
    with connect(dsn) as conn:
        closes.check_order(conn, period)
        old_files = closes.earlier_files(conn, period)
        reconciled = results.has_partition(conn, period)
    # a month with nothing to report is a legitimate close once it was reconciled (an empty partition)
    written = write_report(dsn, period, out_base, allow_empty=reconciled)
    closes.write_files(out_base, old_files)  # a new version keeps the earlier ones beside it
    return closes.store_close(dsn, period, written, as_of=as_of, batch_id=batch_id)
