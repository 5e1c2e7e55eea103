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
   dispositioned for 5+ days (warehouse). Written as HTML files to the folder
   in Variable `returnledger_digest_dir` (default `.local/digests`).
3. `send` - one mail per team through the `smtp_default` connection to the
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

from datetime import datetime, timezone

from airflow.sdk import dag, task

from returnledger.airflow.adapter import default_args, digest_dir, period_schedule, run_moment
from returnledger.reports.notify import dag_failure_callbacks


@dag(
    dag_id="returns_operating_checks",
    schedule=period_schedule("0 7 * * *"),
    start_date=datetime(2026, 10, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(owner="integration"),
    on_failure_callback=dag_failure_callbacks(),
    tags=["returnledger", "operations", "digest"],
    doc_md=__doc__,
)
def returns_operating_checks():
    @task
    def check_flows() -> dict:
        from returnledger.airflow.adapter import get_dsn
        from returnledger.reports.digests import check_stalled_flows

        return check_stalled_flows(get_dsn(), as_of=run_moment())

    @task
    def build(flows: dict) -> list[dict]:
        from returnledger.airflow.adapter import get_dsn
        from returnledger.reports.digests import build_and_write

        return build_and_write(get_dsn(), as_of=run_moment(), kind="daily", out_dir=digest_dir())

    @task(map_index_template="{{ team }}")
    def send(digest: dict) -> str:
        from airflow.sdk import get_current_context

        from returnledger.reports.notify import send_digest

        ctx = get_current_context()
        ctx["team"] = digest["owner"]
        return send_digest(digest, ctx)

    send.expand(digest=build(check_flows()))


returns_operating_checks()
