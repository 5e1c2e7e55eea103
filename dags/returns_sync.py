"""
# returns_sync

Brings ReBound return events into the returns ledger and tells Amazon only what
the warehouse has physically confirmed.

**When**: daily (set `RETURNLEDGER_SYNC_SCHEDULE=@hourly` for hourly runs). The
run for day D covers day D: its data interval is [D 00:00, D+1 00:00) UTC, it
is listed under D in the UI, starts once D is over, and reads every ReBound
event delivered before D+1 00:00 UTC (its data interval end), starting from the
stored feed cursor. To redo 7 October, clear the run listed under 7 October.

**Amazon outage**: `push_inventory`, `push_credits` and `confirm` fail the same
way, "AmazonUnavailable: ...", after 5 failed calls in a row at most; unsent
notes stay PENDING (same ids), sent ones SUBMITTED, and Airflow's retry or the
next run goes on from there.

**Rerunning is safe**: clear any run or task in the UI. Events are deduplicated by
id, the cursor only moves forward, outbox rows are unique per line and action,
a note claimed by a living pusher (its lease) is never sent by another, and a resent credit
note keeps its id: whether Amazon answers it as the same note or refuses it as a
duplicate, it is credited once. Every task has an `execution_timeout`.

**Steps** (one task each, in this order; defined once in `returnledger.sync.steps`, which the runner
outside the scheduler and the benchmark read too):

"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import dag

from returnledger.airflow.defaults import default_args
from returnledger.airflow.notifiers import dag_failure_callbacks
from returnledger.airflow.schedule import sync_schedule
from returnledger.airflow.sync_tasks import steps_doc, sync_tasks


@dag(
    dag_id="returns_sync",
    schedule=sync_schedule(),
    start_date=datetime(2026, 10, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(owner="integration"),
    on_failure_callback=dag_failure_callbacks(),
    tags=["returnledger", "rebound", "amazon", "sync"],
    doc_md=__doc__ + steps_doc(),
)
def returns_sync():
    sync_tasks()  # one task per step of returnledger.sync.steps.STEPS, wired as the steps say


returns_sync()
