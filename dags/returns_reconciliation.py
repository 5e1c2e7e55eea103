"""
### returns_reconciliation: ReBound returns against Amazon credits, and the month-end close

**What it does.** Imports Amazon's Vendor Central returns export for the month
(`vendor_central_returns_<YYYY-MM>.csv` from object storage, validated by a Great
Expectations gate: one bad row rejects the whole file and nothing is imported),
matches every return line of the month against Amazon's credits and return records
in set-based SQL, raises `CREDIT_MISSING`, `CREDIT_MISMATCH`, `DARK_RETURN` and
`QUANTITY_MISMATCH` into the exception queue, creates post-hoc ReBound returns for
dark returns (Amazon prepaid labels with no ReBound record), and on a close run
writes the month-end report (`month_end_report.csv` + `.html`) and tells finance.

**When it runs.** The daily run for day D covers [D, D+1) UTC (listed under D,
starts at D+1 00:00), and a run follows whenever the `returns_sync` DAG updates
the ledger asset. A daily run is a rolling check of the month of its data
interval start: results go to `daily:<D>` and never touch a closed month. The
**close run** is a manual (or backfill) run with the param
`close_period=YYYY-MM`, made after the month's last sync (e.g. on the 3rd): its
results replace the period's rows as of its data interval end, and the report is
written.

**Reads / writes.** Reads the ledger (`returns_db` connection) and the export base
(Variable `returnledger_export_base`, default `file://<repo>/.local/landing`).
Writes `ledger.amazon_return`, `ledger.import_file`, `ledger.recon_result`,
`ledger.exception`, post-hoc returns in ReBound (`rebound_api` connection) and the
report under Variable `returnledger_report_base` (default
`file://<repo>/.local/reports`) `/<period>/`. Finance mail goes to Variable
`returnledger_finance_to`.

**Rerunning is safe.** Re-importing the same export changes nothing (sha256),
reconciliation replaces a period's results in one transaction, exceptions are
raised once per subject, the post-hoc endpoint is idempotent on the Amazon return
id, and the report is rewritten byte for byte. Dates come from the run (as-of =
data interval end), never from the wall clock. See docs/reconciliation.md.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.sdk import (
    Asset,
    AssetOrTimeSchedule,
    CronDataIntervalTimetable,
    Param,
    dag,
    get_current_context,
    task,
)

from returnledger.airflow.adapter import LEDGER_ASSET_NAME, LEDGER_ASSET_URI, default_args
from returnledger.reports.notify import dag_failure_callbacks, finance_notice

LEDGER = Asset(name=LEDGER_ASSET_NAME, uri=LEDGER_ASSET_URI)  # emitted by returns_sync
# what this DAG produces (never LEDGER itself: that would trigger this DAG again)
RECON_RESULTS = Asset(name="returns_recon_results", uri="returnledger://ledger/recon_result")
REPORT = Asset(name="returns_month_end_report", uri="returnledger://reports/month_end_report")


@dag(
    dag_id="returns_reconciliation",
    schedule=AssetOrTimeSchedule(
        timetable=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
        assets=LEDGER),
    start_date=datetime(2026, 10, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(owner="finance"),
    on_failure_callback=dag_failure_callbacks(),
    tags=["returnledger", "reconciliation", "finance", "amazon"],
    doc_md=__doc__,
    params={"close_period": Param(
        "", type="string", pattern=r"^(\d{4}-(0[1-9]|1[0-2]))?$", title="Close period (YYYY-MM)",
        description="Month to close and report. Empty: daily rolling check of the data interval's month.")},
)
def returns_reconciliation():
    @task
    def resolve_window() -> dict:
        """Period, as-of and batch id of this run, resolved once from the run (never the clock)."""
        from returnledger.reconciliation.match import period_bounds, period_of

        ctx = get_current_context()
        end = ctx.get("data_interval_end") or ctx.get("logical_date") or ctx["dag_run"].run_after
        start = ctx.get("data_interval_start")
        if start is None or start >= end:      # asset-triggered or manual runs: the day that just ended
            start = end - timedelta(days=1)
        close = (ctx["params"].get("close_period") or "").strip()
        period = close or period_of(start)
        period_bounds(period)  # validates
        as_of = end.astimezone(timezone.utc)
        kind = "close" if close else "daily"
        return {"period": period, "as_of": as_of.isoformat(), "close": bool(close),
                "result_key": period if close else f"daily:{start.date().isoformat()}",
                "batch_id": f"returns_reconciliation:{kind}:{period}:{as_of:%Y-%m-%dT%H:%M}"}

    @task
    def import_amazon_export(window: dict) -> dict:
        """Validate and load the month's Vendor Central returns export (required on close runs)."""
        from airflow.sdk import Variable

        from returnledger.airflow.adapter import get_dsn
        from returnledger.reconciliation.amazon_export import import_amazon_export as run_import
        from returnledger.store.db import project_root

        base = Variable.get("returnledger_export_base", default=f"file://{project_root()}/.local/landing")
        result = run_import(get_dsn(), base, window["period"], at=datetime.fromisoformat(window["as_of"]),
                            missing_ok=not window["close"])
        return result.as_dict()

    @task(outlets=[RECON_RESULTS])
    def reconcile(window: dict, imported: dict) -> dict:
        """Match the period's lines and Amazon records; raise the exceptions; replace the results."""
        from returnledger.airflow.adapter import get_dsn
        from returnledger.reconciliation.match import reconcile as run_reconcile

        summary = run_reconcile(get_dsn(), window["period"], as_of=datetime.fromisoformat(window["as_of"]),
                                batch_id=window["batch_id"], result_key=window["result_key"])
        return {**summary.as_dict(), "export": imported["status"]}

    @task
    def create_post_hoc_returns(window: dict, summary: dict) -> int:
        """A ReBound return for every dark return not linked yet (idempotent at ReBound)."""
        from returnledger.airflow.adapter import get_dsn, rebound_client
        from returnledger.reconciliation.match import create_post_hoc_returns as run_post_hoc

        return run_post_hoc(get_dsn(), rebound_client(), at=datetime.fromisoformat(window["as_of"]),
                            batch_id=window["batch_id"])

    @task.short_circuit
    def is_close_run(window: dict, created: int) -> bool:
        """Only a close run writes the report and tells finance."""
        return bool(window["close"])

    @task(outlets=[REPORT], on_success_callback=[finance_notice()])
    def write_report(window: dict) -> dict:
        """month_end_report.csv + .html under <returnledger_report_base>/<period>/."""
        from airflow.sdk import Variable

        from returnledger.airflow.adapter import get_dsn
        from returnledger.reconciliation.amazon_export import storage_path
        from returnledger.reports.finance import write_month_end_report
        from returnledger.store.db import project_root

        base = Variable.get("returnledger_report_base", default=f"file://{project_root()}/.local/reports")
        out = storage_path(base) / window["period"]  # s3:// through the aws_default connection
        return write_month_end_report(get_dsn(), window["period"], str(out))

    window = resolve_window()
    imported = import_amazon_export(window)
    summary = reconcile(window, imported)
    created = create_post_hoc_returns(window, summary)
    is_close_run(window, created) >> write_report(window)


returns_reconciliation()
