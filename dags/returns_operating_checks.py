"""
# returns_operating_checks

The daily operating check of the returns ledger: one HTML digest per owner team
(operations, warehouse, finance, integration) by mail, and stalled flows turned
into SYNC_STALLED exceptions.

**When**: the run for day D covers [D 07:00, D+1 07:00) UTC, is listed under D
and starts at D+1 07:00, after the night's `returns_sync` for D. Its data
interval end is the "as of" of every number: an exception is open if it was
open at that moment, "new" means opened in the 24 hours of the interval.

**Steps**
1. `check_flows` - finds what is stuck: Amazon actions PENDING for more than
   24 h or SUBMITTED without a final answer for more than 48 h, events held for
   more than 3 days, no successful `returns_sync` run in the last 26 h. Each
   raises one SYNC_STALLED exception (owner: integration) - once; ones that got
   moving again are resolved.
2. `build` - per owner team: open exceptions by type, new since yesterday,
   over-SLA list, stalled flows (integration), lines received but not
   dispositioned for 5+ days (warehouse). Written as HTML files to `digests/` of
   the shared object store (Variable `returnledger_object_store`; S3 in production).
3. `send` - reads each digest back from the object store (it may run on
   another worker) and mails it: one mail per team through `smtp_default` to the
   address in Variable `returnledger_team_emails` (JSON, default
   `<team>@localhost`). One mapped task per team: a failed mail retries alone.

**Reads** `ledger.exception`, `amazon_submission`, `held_event`, `sync_run`,
`return_line`, `owner_team`. **Writes** SYNC_STALLED rows in `ledger.exception`
and the digest files.

**Rerunning is safe**: clear the run in the UI. Raising is idempotent (one open
exception per type and subject), the counts are computed as of the run's date,
so a rerun of a past day rebuilds that day's digest, and files are overwritten
under the same names. A rerun does send the mails again.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import dag, task

from returnledger.airflow.defaults import default_args
from returnledger.airflow.notifiers import dag_failure_callbacks
from returnledger.airflow.schedule import period_schedule
from returnledger.airflow.tasks import build_digests, send


@dag(
    dag_id="returns_operating_checks",
    schedule=period_schedule("0 7 * * *"),
    start_date=datetime(2026, 10, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(owner="integration"),
    on_failure_callback=dag_failure_callbacks(),
    tags=["returnledger", "operations", "digest"],
    doc_md=__doc__,
)
def returns_operating_checks():
    @task(multiple_outputs=False)
    def check_flows() -> dict:
        """Raise SYNC_STALLED for what is stuck as of the run's end; resolve what got moving again."""
        from returnledger.airflow.hooks import ledger_dsn
        from returnledger.airflow.schedule import run_moment
        from returnledger.exception_queue.stalled import check_stalled_flows

        return check_stalled_flows(ledger_dsn(), as_of=run_moment().as_of)

    digests = build_digests("daily")
    check_flows() >> digests  # the digests count the SYNC_STALLED exceptions just raised
    send.expand(digest=digests)


returns_operating_checks()
