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
   (`ledger.submission_attempt`). After 5 failed sends in a row the step stops
   and leaves the rest PENDING for the next run.
7. `confirm` - polls Amazon's transaction status: Success closes the line,
   Failure raises AMAZON_REJECTED, and a `DuplicateInvoiceNumber` refusal of a
   note sent before is followed to the transaction Amazon names.

**Rerunning is safe**: clear any run or task in the UI. Events are deduplicated by
id, the cursor only moves forward, outbox rows are unique per line and action,
a note claimed by a living pusher is never sent by another, and a resent credit
note keeps its id: whether Amazon answers it as the same note or refuses it as a
duplicate, it is credited once. Every task has an `execution_timeout`.
"""
from __future__ import annotations

import os
from datetime import datetime, timezone

from airflow.sdk import Asset, Label, dag, task

from returnledger.airflow.adapter import (
    AMAZON_POOL,
    LEDGER_ASSET_NAME,
    LEDGER_ASSET_URI,
    default_args,
    period_schedule,
)
from returnledger.reports.notify import dag_failure_callbacks

LEDGER = Asset(name=LEDGER_ASSET_NAME, uri=LEDGER_ASSET_URI)
SCHEDULE = period_schedule(os.environ.get("RETURNLEDGER_SYNC_SCHEDULE", "@daily"))


def _window() -> dict:
    """The run's window and batch id, resolved once from the run (never from the clock)."""
    from returnledger.airflow.adapter import run_interval
    from returnledger.sync import batch_id_for

    start, end = run_interval()
    return {"window_start": start.isoformat(), "window_end": end.isoformat(), "batch_id": batch_id_for(end)}


def _at(window: dict) -> datetime:
    return datetime.fromisoformat(window["window_end"])


@dag(
    dag_id="returns_sync",
    schedule=SCHEDULE,
    start_date=datetime(2026, 10, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(owner="integration"),
    on_failure_callback=dag_failure_callbacks(),
    tags=["returnledger", "rebound", "amazon", "sync"],
    doc_md=__doc__,
)
def returns_sync():
    @task
    def extract() -> dict:
        from returnledger.airflow.adapter import get_dsn, rebound_client
        from returnledger.sync import extract as run_extract

        window = _window()
        with rebound_client() as client:
            stats = run_extract(get_dsn(), client, window_end=_at(window), batch_id=window["batch_id"])
        return {**window, "extract": stats}

    @task
    def validate(window: dict) -> dict:
        from pathlib import Path

        from returnledger.airflow.adapter import get_dsn
        from returnledger.store.db import local_dir
        from returnledger.sync import validate as run_validate

        folder = Path(os.environ.get("RETURNLEDGER_VALIDATION_DIR") or local_dir() / "validation")
        return run_validate(get_dsn(), batch_id=window["batch_id"], result_dir=folder)

    @task.branch
    def route(stats: dict) -> list[str]:
        from returnledger.sync import choose_branches

        return choose_branches(stats)

    @task
    def quarantine(window: dict) -> dict:
        from returnledger.airflow.adapter import get_dsn
        from returnledger.sync import quarantine as run_quarantine

        return run_quarantine(get_dsn(), batch_id=window["batch_id"], at=_at(window))

    @task(trigger_rule="none_failed_min_one_success")
    def apply(window: dict) -> dict:
        from returnledger.airflow.adapter import amazon_settings, get_dsn
        from returnledger.sync import apply as run_apply

        return run_apply(get_dsn(), batch_id=window["batch_id"], at=_at(window),
                         currency=amazon_settings()["currency"])

    @task(pool=AMAZON_POOL, trigger_rule="none_failed")
    def push_inventory(window: dict) -> dict:
        from returnledger.airflow.adapter import amazon_client, amazon_settings, get_dsn
        from returnledger.sync import push_inventory as run_push

        vendor = amazon_settings()
        return run_push(get_dsn(), amazon_client(), warehouse_id=vendor["warehouse_id"],
                        party_id=vendor["party_id"], at=_at(window), batch_id=window["batch_id"])

    @task(pool=AMAZON_POOL, trigger_rule="none_failed")
    def push_credits(window: dict) -> dict:
        from returnledger.airflow.adapter import amazon_client, amazon_settings, get_dsn
        from returnledger.sync import push_credits as run_push

        return run_push(get_dsn(), amazon_client(), party_id=amazon_settings()["party_id"], at=_at(window),
                        batch_id=window["batch_id"])

    @task(pool=AMAZON_POOL, outlets=[LEDGER], trigger_rule="none_failed")
    def confirm(window: dict, extracted: dict, validated: dict) -> dict:
        from returnledger.airflow.adapter import amazon_client, get_dsn
        from returnledger.sync import confirm as run_confirm
        from returnledger.sync import finish_run

        dsn = get_dsn()
        stats = run_confirm(dsn, amazon_client(), at=_at(window), batch_id=window["batch_id"])
        finish_run(dsn, batch_id=window["batch_id"], window_end=_at(window),
                   window_start=datetime.fromisoformat(window["window_start"]),
                   stats={"extract": extracted["extract"], "validate": validated, "confirm": stats},
                   at=_at(window))
        return stats

    window = extract()
    checked = validate(window)
    branch = route(checked)
    held = quarantine(window)
    applied = apply(window)
    inventory = push_inventory(window)
    credits = push_credits(window)
    done = confirm(window, window, checked)

    branch >> Label("rows failed") >> held
    branch >> Label("rows passed or held events") >> applied
    held >> applied
    applied >> [inventory, credits] >> done


returns_sync()
