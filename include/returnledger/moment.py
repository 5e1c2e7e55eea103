"""The one moment a sync run stands for: its window ``[start, end)`` and the batch id its rows carry.

Made once at the edge (the Airflow task from the run's data interval; a test or bench from the day it
runs) and handed down unchanged: every step of the run reads "as of" ``end``, never the clock, so a
cleared and rerun task redoes the same work. It travels between tasks as an XCom dict
(:meth:`RunMoment.to_xcom` / :meth:`RunMoment.from_xcom`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime


def batch_id_for(end: datetime) -> str:
    """The batch id of the run that ends at ``end``: every row the run writes carries it."""
    return f"returns_sync:{end.astimezone(UTC):%Y-%m-%dT%H:%M}Z"


@dataclass(frozen=True)
class RunMoment:
    """A run's window ``[start, end)``; ``end`` is its "as of" (the ``at`` of every change it makes).

    ``start`` may be unknown (a run made outside the scheduler for a moment only: None, booked as
    nothing); ``batch_id`` defaults to :func:`batch_id_for` ``end`` (tests may name their own batch).
    """

    end: datetime
    start: datetime | None = None
    batch_id: str = field(default="")

    def __post_init__(self) -> None:
        if not self.batch_id:
            object.__setattr__(self, "batch_id", batch_id_for(self.end))

    @property
    def as_of(self) -> datetime:
        """The instant the run stands for: the end of its window."""
        return self.end

    def to_xcom(self) -> dict:
        """The run as a JSON-able dict (the keys the DAG's XComs have always had)."""
        return {
            "window_start": self.start.isoformat() if self.start else None,
            "window_end": self.end.isoformat(),
            "batch_id": self.batch_id,
        }

    @classmethod
    def from_xcom(cls, window: dict) -> RunMoment:
        """The run an upstream task handed on (``window_start`` may be missing: unknown)."""
        start = window.get("window_start")
        return cls(
            end=datetime.fromisoformat(window["window_end"]),
            start=datetime.fromisoformat(start) if start else None,
            batch_id=window.get("batch_id") or "",
        )
