"""When the DAGs run and which moment a run stands for, resolved from the run (never the clock)."""

from __future__ import annotations

import os
from datetime import datetime

from returnledger.moment import RunMoment

#: cron presets a user may set in RETURNLEDGER_SYNC_SCHEDULE, as the cron lines they stand for
CRON_PRESETS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
}


def period_schedule(cron: str):
    """A schedule whose run for period P covers exactly [P, next P) in UTC, listed under P in the UI.

    Airflow 3 turns a cron preset such as ``@daily`` into a *trigger* timetable, whose run for D
    covers the moment D only; with that, the run labelled 8 October read what was delivered before
    8 October 00:00 (the day before). A data-interval timetable gives the run for D the interval
    [D, D+1): it starts once D is over and reads what was delivered before D+1 00:00.
    """
    from airflow.sdk import CronDataIntervalTimetable

    return CronDataIntervalTimetable(CRON_PRESETS.get(cron.strip(), cron.strip()), timezone="UTC")


def sync_schedule():
    """The returns_sync schedule: ``RETURNLEDGER_SYNC_SCHEDULE`` (a preset or cron line), default daily."""
    return period_schedule(os.environ.get("RETURNLEDGER_SYNC_SCHEDULE", "@daily"))


def run_interval() -> tuple[datetime, datetime]:
    """``(start, end)`` of the period the running task's run covers.

    A scheduled run of a data-interval timetable covers [data_interval_start, data_interval_end).
    A run without a data interval (asset-triggered, manual) stands for the moment it was made for:
    its logical date, else its run_after; start is then that moment too.
    """
    from airflow.sdk import get_current_context

    ctx = get_current_context()
    end = ctx.get("data_interval_end") or ctx.get("logical_date") or ctx["dag_run"].run_after
    start = ctx.get("data_interval_start") or end
    return start, end


def run_moment() -> RunMoment:
    """The moment the running task's run stands for, made here at the Airflow edge from :func:`run_interval`:
    its window ``[start, end)``, ``end`` its "as of".

    A cleared and rerun task sees the same moment, so it redoes the same work.
    """
    start, end = run_interval()
    return RunMoment(end, start)
