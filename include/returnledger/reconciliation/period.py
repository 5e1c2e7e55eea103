"""Which month a reconciliation run checks, as of when, and under which result key and batch id.

A daily run is a rolling check of the month its day falls in: results go to the month's rolling key
``daily:<YYYY-MM>``, which each day's run brings up to date by re-matching only what changed
(reconciliation.incremental), and never touch a closed month. A close run (``close_period=YYYY-MM``)
replaces that period's results as of its end. Everything follows from the run's interval, never from the
clock, so a rerun redoes the same work.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta

#: an accounting period: a 'YYYY-MM' month in UTC, the unit finance closes
PERIOD_RE = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


class PeriodClosed(RuntimeError):
    """The month is closed: its report is final and is not recomputed (reopen it first)."""


def period_bounds(period: str) -> tuple[datetime, datetime]:
    """[start, end) of a 'YYYY-MM' period in UTC."""
    m = PERIOD_RE.match(period or "")
    if not m:
        raise ValueError(f"period must be YYYY-MM, got {period!r}")
    year, month = int(m.group(1)), int(m.group(2))
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def period_of(day: date | datetime) -> str:
    """The period a day belongs to."""
    return f"{day.year:04d}-{day.month:02d}"


@dataclass(frozen=True)
class ReconWindow:
    """One reconciliation run: the period it checks and what its writes are keyed by."""

    period: str
    as_of: datetime
    close: bool
    result_key: str
    batch_id: str

    def as_dict(self) -> dict:
        """For XCom: ``as_of`` as ISO text."""
        return {**asdict(self), "as_of": self.as_of.isoformat()}


def recon_window(start: datetime, end: datetime, close_period: str | None = None) -> ReconWindow:
    """The window of a run covering ``[start, end)``; ``close_period`` makes it a close run.

    A run without a real interval (asset-triggered or manual: ``start >= end``) checks the day that
    just ended. A bad ``close_period`` raises ValueError.
    """
    if start >= end:
        start = end - timedelta(days=1)
    close = (close_period or "").strip()
    period = close or period_of(start)
    period_bounds(period)  # validates
    as_of = end.astimezone(UTC)
    kind = "close" if close else "daily"
    return ReconWindow(
        period=period,
        as_of=as_of,
        close=bool(close),
        result_key=period if close else f"daily:{period}",
        batch_id=f"returns_reconciliation:{kind}:{period}:{as_of:%Y-%m-%dT%H:%M}",
    )
