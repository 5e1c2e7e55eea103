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
interval start: results go to the month's rolling key `daily:<YYYY-MM>`, which
each day's run brings up to date by re-matching only the returns notices whose
inputs changed since its last run, and never touch a closed month. The
**close run** is a manual (or backfill) run with the param
`close_period=YYYY-MM`, made after the month's last sync (e.g. on the 3rd): its
results replace the period's rows as of its data interval end, and the report is
written.

**Reads / writes.** Reads the ledger (`returns_db` connection) and the export from
`exports/` of the shared object store (Variable `returnledger_object_store`, S3
through `aws_default` in production; Variable `returnledger_export_base` if the
exports arrive elsewhere). Writes `ledger.amazon_return`, `ledger.import_file`,
`ledger.recon_result`, `ledger.exception`, post-hoc returns in ReBound
(`rebound_api` connection) and the report under `reports/<period>/` of the store
(or Variable `returnledger_report_base`). Finance mail goes to Variable
`returnledger_finance_to`. The Variables' defaults are listed in
returnledger.airflow.defaults.

**What a run covers.** Every line of every return created before the month's end
that no earlier close settled (MATCHED or NO_CREDIT_DUE), whatever month it was
created in, and the dark returns no earlier close reported; a daily check applies
the same rule as of its day (docs/operating-guide.md, "Periods").

**Rerunning is safe.** Re-importing the same export changes nothing (sha256),
reconciliation replaces a period's results in one transaction, exceptions are
raised once per subject, the post-hoc endpoint is idempotent on the Amazon return
id. A close stores its report with its sha256 and the month is final: a cleared
close run writes the stored report out again and recomputes nothing (the task log
says so); reopening a month is an Admin action (`returnledger reopen-period`).
Dates come from the run (as-of = data interval end), never from the wall clock. See docs/reconciliation.md.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import AssetOrTimeSchedule, Param, dag, get_current_context, task

# postgres:// tables and object-store folders: what this DAG reads and produces (never LEDGER itself: that
# would trigger this DAG again); OpenLineage reports them as the runs' inputs and outputs
from returnledger.airflow.assets import AMAZON_EXPORTS, LEDGER, RECON_RESULTS, REPORT
from returnledger.airflow.defaults import default_args
from returnledger.airflow.notifiers import dag_failure_callbacks, finance_notice
from returnledger.airflow.schedule import period_schedule


@dag(
    dag_id="returns_reconciliation",
    schedule=AssetOrTimeSchedule(timetable=period_schedule("0 0 * * *"), assets=LEDGER),
    start_date=datetime(2026, 10, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(owner="finance"),
    on_failure_callback=dag_failure_callbacks(),
    tags=["returnledger", "reconciliation", "finance", "amazon"],
    doc_md=__doc__,
    params={
        "close_period": Param(
            "",
            type="string",
            pattern=r"^(\d{4}-(0[1-9]|1[0-2]))?$",
            title="Close period (YYYY-MM)",
            description="Month to close and report. Empty: daily rolling check of the data interval's month.",
        )
    },
)
def returns_reconciliation():
    @task(multiple_outputs=False)
    def resolve_window() -> dict:
        """Period, as-of, result key and batch id of this run, resolved once from the run (not the clock)."""
        from returnledger.airflow.schedule import run_interval
        from returnledger.reconciliation.period import recon_window

        start, end = run_interval()
        return recon_window(start, end, get_current_context()["params"].get("close_period")).as_dict()

    @task(inlets=[AMAZON_EXPORTS], multiple_outputs=False)
    def import_amazon_export(window: dict) -> dict:
        """Validate and load the month's Vendor Central returns export (required on close runs)."""
        from returnledger.airflow.hooks import ledger_dsn
        from returnledger.airflow.objects import export_base, object_store
        from returnledger.airflow.tasks import fail_fast
        from returnledger.reconciliation.amazon_export import import_amazon_export as run_import
        from returnledger.reconciliation.closes import closed_run

        stored = window["close"] and closed_run(ledger_dsn(), window["period"], step="import")
        if stored:  # a closed month is final: nothing of it is imported or recomputed
            return {"status": "CLOSED", "version": stored["version"]}
        with fail_fast():  # a rejected export is rejected again on every try
            result = run_import(
                ledger_dsn(),
                export_base(),
                window["period"],
                at=datetime.fromisoformat(window["as_of"]),
                missing_ok=not window["close"],
                docs=object_store("data-docs"),  # the GX Data Docs of the export's validation
            )
        return result.as_dict()

    @task(inlets=[LEDGER], outlets=[RECON_RESULTS], multiple_outputs=False)
    def reconcile(window: dict, imported: dict) -> dict:
        """Match the period's lines and Amazon records; raise the exceptions; replace the results."""
        from returnledger.airflow.hooks import ledger_dsn
        from returnledger.reconciliation.closes import closed_run
        from returnledger.reconciliation.match import reconcile as run_reconcile

        stored = window["close"] and closed_run(ledger_dsn(), window["period"], step="reconcile")
        if stored:  # the stored report stands; nothing is recomputed
            return {**stored, "export": imported["status"]}
        summary = run_reconcile(
            ledger_dsn(),
            window["period"],
            as_of=datetime.fromisoformat(window["as_of"]),
            batch_id=window["batch_id"],
            result_key=window["result_key"],
        )
        return {**summary.as_dict(), "export": imported["status"]}

    @task
    def create_post_hoc_returns(window: dict) -> int:
        """A ReBound return for every dark return not linked yet (idempotent at ReBound)."""
        from returnledger.airflow.hooks import ReboundHook, ledger_dsn
        from returnledger.reconciliation.dark_returns import create_post_hoc_returns as run_post_hoc

        with ReboundHook().get_conn() as rebound:
            return run_post_hoc(
                ledger_dsn(), rebound, at=datetime.fromisoformat(window["as_of"]), batch_id=window["batch_id"]
            )

    @task.short_circuit
    def is_close_run(window: dict) -> bool:
        """Only a close run writes the report and tells finance."""
        return bool(window["close"])

    @task(outlets=[REPORT], on_success_callback=[finance_notice()], multiple_outputs=False)
    def write_report(window: dict) -> dict:
        """month_end_report.csv + .html under `reports/<period>/` of the object store (s3: aws_default),
        stored with its sha256 as the month's close; a closed month's stored report is written out again."""
        from returnledger.airflow.hooks import ledger_dsn
        from returnledger.airflow.objects import report_base
        from returnledger.reports.month_close import close_month

        return close_month(
            ledger_dsn(),
            window["period"],
            report_base() / window["period"],
            as_of=datetime.fromisoformat(window["as_of"]),
            batch_id=window["batch_id"],
        )

    window = resolve_window()
    summary = reconcile(window, import_amazon_export(window))
    summary >> create_post_hoc_returns(window) >> is_close_run(window) >> write_report(window)


returns_reconciliation()
