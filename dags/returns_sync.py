"""
# returns_sync

Brings ReBound return events into the returns ledger and tells Amazon only what
the warehouse has physically confirmed.

**When**: daily (set `RETURNLEDGER_SYNC_SCHEDULE=@hourly` for hourly runs). The
run for day D covers day D: its data interval is [D 00:00, D+1 00:00) UTC, it
is listed under D in the UI, starts once D is over, and reads every ReBound
event delivered before D+1 00:00 UTC (its data interval end), starting from the
stored feed cursor. To redo 7 October, clear the run listed under 7 October.

**Steps**
1. `extract` - reads the ReBound feed (pages, token refresh, retries), stores
   every payload as received in `ledger.raw_event` (deduplicated by event id),
   then moves the cursor; fetches the return orders the events name.
2. `validate` - Great Expectations suite: schema and values, return/line known
   to ReBound, reason code mapped, SKU in the catalog. Result JSON per run.
3. `route` - to `quarantine` when rows failed, to `apply` when rows passed
   (or held events may go on), both when both.
4. `quarantine` - one exception per failing row with its owner team; the
   line's events are held.
5. `apply` - lifecycle rules; writes line state, history and the Amazon outbox
   (deterministic idempotency keys). Held events go on when their cause is gone.
6. `push_inventory`, `push_credits` - send the outbox under the
   `amazon_sp_api` pool: absolute stock per SKU; one credit note per return and
   batch, id `CN-<return>-<first line>` (unique in the ledger). Each note is
   claimed before it is sent and every HTTP attempt goes to the send log
   (`ledger.submission_attempt`). A claim is a lease in the rows (owner, expiry
   renewed while the pusher works), so a lost database connection takes nothing.
7. `confirm` - polls Amazon's transaction status: Success closes the line,
   Failure raises AMAZON_REJECTED, and a `DuplicateInvoiceNumber` refusal is
   followed to the transaction it names only when that is one of the note's
   own sends; a refusal naming nothing closes nothing (AMAZON_REJECTED, the
   line waits).

**Amazon outage**: `push_inventory`, `push_credits` and `confirm` fail the same
way, "AmazonUnavailable: ...", after 5 failed calls in a row at most; unsent
notes stay PENDING (same ids), sent ones SUBMITTED, and Airflow's retry or the
next run goes on from there.
8. `finish` - books the run in `ledger.sync_run` (its window and each step's
   counts), which the operating check reads to tell that the sync is alive.

**Rerunning is safe**: clear any run or task in the UI. Events are deduplicated by
id, the cursor only moves forward, outbox rows are unique per line and action,
a note claimed by a living pusher (its lease) is never sent by another, and a resent credit
note keeps its id: whether Amazon answers it as the same note or refuses it as a
duplicate, it is credited once. Every task has an `execution_timeout`.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import Label, dag, task

from returnledger.airflow.defaults import AMAZON_POOL, LEDGER, default_args
from returnledger.airflow.notifiers import dag_failure_callbacks
from returnledger.airflow.schedule import sync_schedule


@dag(
    dag_id="returns_sync",
    schedule=sync_schedule(),
    start_date=datetime(2026, 10, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(owner="integration"),
    on_failure_callback=dag_failure_callbacks(),
    tags=["returnledger", "rebound", "amazon", "sync"],
    doc_md=__doc__,
)
def returns_sync():
    @task(multiple_outputs=False)
    def extract() -> dict:
        """Land the ReBound events delivered before the run's end (then move the cursor); fetch their orders.

        Returns the run's window and batch id, resolved here once from the run, for every later step.
        """
        from returnledger.airflow.hooks import ReboundHook, ledger_dsn
        from returnledger.airflow.schedule import run_interval
        from returnledger.intake.feed import extract as run_extract
        from returnledger.ledger.runs import batch_id_for

        start, end = run_interval()
        window = {
            "window_start": start.isoformat(),
            "window_end": end.isoformat(),
            "batch_id": batch_id_for(end),
        }
        with ReboundHook().get_conn() as rebound:
            stats = run_extract(ledger_dsn(), rebound, window_end=end, batch_id=window["batch_id"])
        return {**window, "extract": stats}

    @task(multiple_outputs=False)
    def validate(window: dict) -> dict:
        """Screen the batch (field rules, Great Expectations suite); the result JSON goes to
        Variable `returnledger_validation_dir`."""
        from pathlib import Path

        from returnledger.airflow.defaults import variable
        from returnledger.airflow.hooks import ledger_dsn
        from returnledger.screening.screen import validate as run_validate

        folder = Path(variable("returnledger_validation_dir"))
        return run_validate(ledger_dsn(), batch_id=window["batch_id"], result_dir=folder)

    @task.branch
    def route(stats: dict) -> list[str]:
        """Branch to `quarantine` when rows failed, to `apply` when rows passed (or held events may go on)."""
        from returnledger.screening.screen import batch_outcome

        outcome = batch_outcome(stats)
        return [
            task_id
            for task_id, needed in (("quarantine", outcome.failures), ("apply", outcome.applicable))
            if needed
        ]

    @task(multiple_outputs=False)
    def quarantine(window: dict) -> dict:
        """One exception per failing row, owned by the team that can fix it; the line's events are held."""
        from returnledger.airflow.hooks import ledger_dsn
        from returnledger.screening.screen import quarantine as run_quarantine

        return run_quarantine(
            ledger_dsn(), batch_id=window["batch_id"], at=datetime.fromisoformat(window["window_end"])
        )

    @task(trigger_rule="none_failed_min_one_success", multiple_outputs=False)
    def apply(window: dict) -> dict:
        """Lifecycle rules: line state, history and the Amazon outbox; held events go on once freed."""
        from returnledger.airflow.hooks import AmazonSpApiHook, ledger_dsn
        from returnledger.ledger.apply import apply as run_apply

        return run_apply(
            ledger_dsn(),
            batch_id=window["batch_id"],
            at=datetime.fromisoformat(window["window_end"]),
            currency=AmazonSpApiHook().vendor["currency"],
        )

    @task(pool=AMAZON_POOL, trigger_rule="none_failed", multiple_outputs=False)
    def push_inventory(window: dict) -> dict:
        """Send Amazon the absolute stock of every SKU whose sellable count changed."""
        from returnledger.airflow.hooks import AmazonSpApiHook, ledger_dsn
        from returnledger.airflow.tasks import fail_fast
        from returnledger.amazon.push import push_inventory as run_push

        amazon = AmazonSpApiHook()
        with fail_fast():  # bad credentials: no retries
            return run_push(
                ledger_dsn(),
                amazon.get_conn(),
                warehouse_id=amazon.vendor["warehouse_id"],
                party_id=amazon.vendor["party_id"],
                at=datetime.fromisoformat(window["window_end"]),
                batch_id=window["batch_id"],
            )

    @task(pool=AMAZON_POOL, trigger_rule="none_failed", multiple_outputs=False)
    def push_credits(window: dict) -> dict:
        """Send the pending credit notes (claimed first, every attempt in the send log)."""
        from returnledger.airflow.hooks import AmazonSpApiHook, ledger_dsn
        from returnledger.airflow.tasks import fail_fast
        from returnledger.amazon.push import push_credits as run_push

        amazon = AmazonSpApiHook()
        with fail_fast():  # bad credentials: no retries
            return run_push(
                ledger_dsn(),
                amazon.get_conn(),
                party_id=amazon.vendor["party_id"],
                at=datetime.fromisoformat(window["window_end"]),
                batch_id=window["batch_id"],
            )

    @task(pool=AMAZON_POOL, outlets=[LEDGER], trigger_rule="none_failed", multiple_outputs=False)
    def confirm(window: dict) -> dict:
        """Ask Amazon how what was sent ended: Success closes a line, Failure raises AMAZON_REJECTED."""
        from returnledger.airflow.hooks import AmazonSpApiHook, ledger_dsn
        from returnledger.airflow.tasks import fail_fast
        from returnledger.amazon.confirm import confirm as run_confirm

        with fail_fast():  # bad credentials: no retries
            return run_confirm(
                ledger_dsn(),
                AmazonSpApiHook().get_conn(),
                at=datetime.fromisoformat(window["window_end"]),
                batch_id=window["batch_id"],
            )

    @task
    def finish(window: dict, validated: dict, confirmed: dict) -> None:
        """Book the run in `ledger.sync_run` (its window, each step's counts) for the operating check."""
        from returnledger.airflow.hooks import ledger_dsn
        from returnledger.ledger.runs import finish_run

        end = datetime.fromisoformat(window["window_end"])
        finish_run(
            ledger_dsn(),
            batch_id=window["batch_id"],
            window_end=end,
            window_start=datetime.fromisoformat(window["window_start"]),
            stats={"extract": window["extract"], "validate": validated, "confirm": confirmed},
            at=end,
        )

    window = extract()
    checked = validate(window)
    branch = route(checked)
    held = quarantine(window)
    applied = apply(window)
    confirmed = confirm(window)

    branch >> Label("rows failed") >> held
    branch >> Label("rows passed or held events") >> applied
    held >> applied
    applied >> [push_inventory(window), push_credits(window)] >> confirmed
    finish(window, checked, confirmed)


returns_sync()
