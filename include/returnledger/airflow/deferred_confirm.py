"""returns_sync's ``confirm`` task, deferrable (issue 26): the wait for Amazon's processing holds no
worker slot.

The task reads the SUBMITTED transactions the pushes (and the checks beside ``push_credits``) left, and
defers to :class:`TransactionStatusTrigger`: in the triggerer, it checks each transaction at its
expected readiness (returnledger.amazon.status_checks, the schedule ``confirm`` uses outside Airflow),
one ``getTransaction`` at a time in a thread (``asyncio.to_thread``; the client is python-amazon-sp-api,
synchronous) and sleeps with ``asyncio.sleep`` in between. The task resumes only to record what the
trigger found (returnledger.amazon.confirm.record_answer, the same code as outside Airflow), and defers
once more for a transaction a duplicate refusal names. ``dag.test()`` runs the trigger in line.

Its result adds ``worker_s`` (seconds the task held a worker slot) and ``trigger_s`` (seconds the checks
waited in the triggerer) to confirm's counts.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from airflow.sdk import BaseOperator
from airflow.triggers.base import BaseTrigger, TriggerEvent

TRIGGER = "returnledger.airflow.deferred_confirm.TransactionStatusTrigger"


def _client(conn_id: str | None):
    from returnledger.airflow.hooks import AmazonSpApiHook

    return (AmazonSpApiHook(conn_id) if conn_id else AmazonSpApiHook()).get_conn()


class TransactionStatusTrigger(BaseTrigger):
    """Checks ``transactions`` (Pending dicts) by expected readiness until each is final or given up;
    fires once with every answer."""

    def __init__(
        self,
        transactions: list[dict],
        *,
        conn_id: str | None = None,
        expected_s: float = 0.0,
        step_s: float = 1.0,
        max_checks: int = 3,
        breaker: int = 5,
        carry: dict | None = None,
    ):
        super().__init__()
        self.transactions, self.conn_id, self.carry = transactions, conn_id, carry or {}
        self.expected_s, self.step_s, self.max_checks, self.breaker = expected_s, step_s, max_checks, breaker

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            TRIGGER,
            {
                "transactions": self.transactions,
                "conn_id": self.conn_id,
                "expected_s": self.expected_s,
                "step_s": self.step_s,
                "max_checks": self.max_checks,
                "breaker": self.breaker,
                "carry": self.carry,
            },
        )

    async def run(self):
        from returnledger.amazon.status_checks import Pending, Readiness, check

        started = time.time()
        client = await asyncio.to_thread(_client, self.conn_id)
        schedule = Readiness(self.expected_s, step_s=self.step_s, max_checks=self.max_checks)
        for t in self.transactions:
            schedule.add(Pending(**t))
        answers: list[list[dict]] = []
        checks, stopped = 0, False
        try:
            while True:
                p, wait = schedule.due(time.time())
                if p is None:
                    if not len(schedule):
                        break
                    await asyncio.sleep(min(wait, 5.0))
                    continue
                answer = await asyncio.to_thread(check, client, p)
                checks += 1
                again = schedule.answered(p, answer, time.time())
                if answer.outcome in ("auth", "unavailable") or not again:
                    answers.append([p.to_json(), answer.to_json()])
                if answer.outcome == "auth":
                    break
                if answer.outcome == "unavailable" and schedule.unavailable_in_a_row >= self.breaker:
                    stopped = True
                    break
        finally:
            await asyncio.to_thread(client.close)
        yield TriggerEvent(
            {
                "answers": answers,
                "checks": checks,
                "transactions": len(schedule.checks),
                "stopped": stopped,
                "expected_s": schedule.expected,
                "wall_s": time.time() - started,
                # the task's counts so far, handed back (dag.test() resumes with the event alone)
                "carry": self.carry,
            }
        )


class ConfirmOperator(BaseOperator):
    """``confirm`` as a deferrable task (see the module's doc); ``window`` is the run's XCom."""

    template_fields = ("window",)

    def __init__(self, *, window: Any, conn_id: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.window, self.conn_id = window, conn_id

    def _run(self):
        from returnledger.moment import RunMoment

        return RunMoment.from_xcom(self.window)

    def execute(self, context):
        from returnledger.airflow.hooks import ledger_dsn
        from returnledger.amazon.confirm import finish_confirm, new_stats
        from returnledger.amazon.status_checks import pending
        from returnledger.store.db import connect

        t0 = time.monotonic()
        with connect(ledger_dsn()) as conn:
            todo = pending(conn)
        stats = {**new_stats(), "worker_s": 0.0, "trigger_s": 0.0, "transactions": 0}
        stats["worker_s"] += time.monotonic() - t0
        if not todo:
            return finish_confirm(ledger_dsn(), stats, run=self._run(), stopped=False)
        # the processing time the checks beside push_credits learned: the trigger starts from it
        pushed = context["ti"].xcom_pull(task_ids="push_credits") if context and "ti" in context else None
        stats["expected_s"] = float(((pushed or {}).get("status_checks") or {}).get("expected_s") or 0.0)
        self._defer([p.to_json() for p in todo], stats)

    def _defer(self, transactions: list[dict], stats: dict):
        from returnledger.amazon.push import BREAKER_FAILURES

        self.defer(
            trigger=TransactionStatusTrigger(
                transactions,
                conn_id=self.conn_id,
                expected_s=float(stats.get("expected_s") or 0.0),
                breaker=BREAKER_FAILURES,
                carry=stats,
            ),
            method_name="resume",
        )

    def resume(self, context, event: dict | None = None, **_: Any):
        from returnledger.airflow.hooks import ledger_dsn
        from returnledger.airflow.tasks import fail_fast
        from returnledger.amazon.confirm import finish_confirm, new_stats, record_answer
        from returnledger.amazon.status_checks import Answer, Pending
        from returnledger.store.db import connect

        t0 = time.monotonic()
        event, run = event or {}, self._run()
        stats = {
            **new_stats(),
            "worker_s": 0.0,
            "trigger_s": 0.0,
            "transactions": 0,
            **(event.get("carry") or {}),
        }
        stats["polls"] += event.get("checks", 0)
        stats["transactions"] += event.get("transactions", 0)
        stats["trigger_s"] = round(stats.get("trigger_s", 0.0) + event.get("wall_s", 0.0), 3)
        followed: list[Pending] = []
        last = ""
        with connect(ledger_dsn()) as conn:
            for p, a in event.get("answers", []):
                answer = Answer(**a)
                last = answer.message or last
                stats["auth_refused"] = stats.get("auth_refused") or answer.outcome == "auth"
                followed += record_answer(conn, Pending(**p), answer, run=run, stats=stats)
        stats["checks_per_transaction"] = round(stats["polls"] / max(1, stats["transactions"]), 3)
        stats["worker_s"] = round(stats["worker_s"] + time.monotonic() - t0, 3)
        if followed and not stats.get("auth_refused") and not event.get("stopped"):
            self._defer([p.to_json() for p in followed], stats)
        with fail_fast():  # bad credentials: no retries
            return finish_confirm(ledger_dsn(), stats, run=run, stopped=bool(event.get("stopped")), last=last)
