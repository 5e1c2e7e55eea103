"""``confirm`` waits for Amazon's processing in the triggerer, not on a worker (issue 26).

The DAG's confirm task (returnledger.airflow.deferred_confirm.ConfirmOperator) defers at once with what
the pushes left SUBMITTED; its trigger, rebuilt from its serialized form as the triggerer does, checks the
transactions by expected readiness while the simulator answers Processing for a while; the task resumes
only to record the outcomes. Real ledger, SP-API simulator, the production client."""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
from datetime import date
from pathlib import Path

import pytest

from returnledger.amazon.push import push_credits
from returnledger.moment import RunMoment
from returnledger.store import db
from returnledger_dev.demo.airflow_run import load_dag

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
from test_money_path import _seed_pending_notes, _sync_without_push  # noqa: E402

pytestmark = pytest.mark.integration


async def _fire(trigger) -> list:
    return [event async for event in trigger.run()]


def test_confirm_defers_the_wait_to_the_triggerer_and_resumes_only_to_record(ledger, tmp_path, monkeypatch):
    from airflow.sdk.exceptions import TaskDeferred

    from returnledger_dev.sandbox.harness import run_sandbox

    monkeypatch.setenv("RETURNLEDGER_SIM_PROCESSING_S", "3")
    n = 6
    path, _ = _seed_pending_notes(ledger, tmp_path, n=n)
    with run_sandbox(path, tmp_path / "out", faults=False) as sb:
        monkeypatch.setenv(
            "AIRFLOW_CONN_AMAZON_SP_API",
            json.dumps(
                {
                    "conn_type": "amazon_sp_api",
                    "host": sb.amazon_url,
                    "login": sb.lwa_client_id,
                    "password": sb.lwa_client_secret,
                    "extra": sb.amazon_extra,
                }
            ),
        )
        end, batch = _sync_without_push(ledger, sb, date(2026, 10, 5))
        run = RunMoment(end, batch_id=batch)
        from returnledger.airflow.hooks import AmazonSpApiHook

        push_credits(ledger, AmazonSpApiHook().get_conn(), party_id="VNDR1", run=run, check_beside=False)
        task = load_dag("returns_sync").get_task("confirm")
        assert type(task).__name__ == "ConfirmOperator"
        task.window = run.to_xcom()
        with pytest.raises(TaskDeferred) as deferred:
            task.execute({})
        # the triggerer rebuilds the trigger from its serialized form
        classpath, kwargs = deferred.value.trigger.serialize()
        module, _, name = classpath.rpartition(".")
        trigger = getattr(importlib.import_module(module), name)(**json.loads(json.dumps(kwargs)))
        assert len(kwargs["transactions"]) == n
        events = asyncio.run(_fire(trigger))
        assert len(events) == 1
        # resumed with the event alone, as dag.test() does (the triggerer adds the defer kwargs: none)
        stats = getattr(task, deferred.value.method_name)({}, event=events[0].payload)
    assert stats["accepted"] == n and stats["rejected"] == 0
    assert stats["trigger_s"] >= 1.0, stats  # the wait for Processing was the trigger's
    assert stats["worker_s"] < 0.5 * stats["trigger_s"], stats
    assert stats["checks_per_transaction"] <= 3, stats
    with db.connect(ledger) as conn:
        states = conn.execute("SELECT status, count(*) FROM ledger.amazon_submission GROUP BY 1").fetchall()
    assert dict(states) == {"ACCEPTED": n}, states
