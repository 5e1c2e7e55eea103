"""
# returns_weekly_review

The weekly review of the returns ledger: one HTML digest per owner team by mail,
for the team's weekly meeting.

**When**: weekly; the run listed under Monday W covers [W 07:00, W+7 07:00) UTC
and starts when that week is over (the next Monday, 07:00). Every number is
computed as of its data interval end.

**What each team gets**
- every team: exceptions opened / resolved per week by type (last 4 weeks),
  and what is still open at week end with SLA breaches;
- the owner of reason codes (operations): top 10 returned SKUs and return
  reasons of the week, and reason mappings not reviewed in 90 days;
- the owner of dark returns (warehouse): dark returns still unresolved.
Routing follows `ledger.owner_team` (include/reference/owners.yaml).

**Steps**: `build` writes the HTML files to `digests/` of the shared object store
(Variable `returnledger_object_store`); `send` reads each back from there (it may run on
another worker) and mails it through `smtp_default` (addresses: Variable
`returnledger_team_emails`), one mapped task per team.

**Rerunning is safe**: the review only reads the ledger; a rerun for the same
week rebuilds the same digest (as-of counts) and overwrites its files. It does
send the mails again.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import dag

from returnledger.airflow.defaults import default_args
from returnledger.airflow.notifiers import dag_failure_callbacks
from returnledger.airflow.schedule import period_schedule
from returnledger.airflow.tasks import build_digests, send


@dag(
    dag_id="returns_weekly_review",
    schedule=period_schedule("0 7 * * 1"),
    start_date=datetime(2026, 10, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(owner="operations"),
    on_failure_callback=dag_failure_callbacks(),
    tags=["returnledger", "operations", "digest"],
    doc_md=__doc__,
)
def returns_weekly_review():
    send.expand(digest=build_digests("weekly"))


returns_weekly_review()
