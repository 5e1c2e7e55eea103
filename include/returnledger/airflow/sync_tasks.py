"""returns_sync's tasks, made from the one definition of a sync run's steps (``returnledger.sync.steps``).

One task per step, with the step's name, doc, pool, trigger rule and upstream tasks; the branch step
becomes a branch task with a labelled edge to each step it picks. The first step resolves the run once
from the DAG run's data interval (``schedule.run_moment``) and hands it on in its XCom; every later task reads
it from there, so a cleared task redoes the same run.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

from returnledger.airflow.assets import LEDGER
from returnledger.airflow.defaults import AMAZON_POOL
from returnledger.airflow.schedule import run_moment
from returnledger.moment import RunMoment
from returnledger.sync import steps
from returnledger.sync.steps import Step, steps_doc  # noqa: F401  (steps_doc: for the DAG's doc)


class AirflowEnv:
    """What the steps take from outside, through the Airflow connections and Variables."""

    def __init__(self) -> None:
        self._amazon: Any = None

    def dsn(self) -> str:
        from returnledger.airflow.hooks import ledger_dsn

        return ledger_dsn()

    @contextmanager
    def rebound(self):
        from returnledger.airflow.hooks import ReboundHook

        with ReboundHook().get_conn() as client:
            yield client

    def _hook(self):
        if self._amazon is None:
            from returnledger.airflow.hooks import AmazonSpApiHook

            self._amazon = AmazonSpApiHook()
        return self._amazon

    def amazon(self) -> Any:
        return self._hook().get_conn()

    def vendor(self) -> dict:
        return self._hook().vendor

    def result_dir(self):
        """validation/ of the shared object store (an ObjectStoragePath: S3 through aws_default)."""
        from returnledger.airflow.objects import object_store

        return object_store("validation")


def run_step(step: Step, window: dict | None, earlier: dict) -> Any:
    """Do ``step`` in a task: the run from the first step's XCom (or resolved here, for the first step)."""
    from returnledger.airflow.tasks import fail_fast

    first = steps.STEPS[0].name
    run = RunMoment.from_xcom(window) if window is not None else run_moment()
    results = {first: window.get(first)} if window is not None else {}
    results.update(earlier)
    if step.amazon:
        with fail_fast():  # bad credentials: no retries
            result = step.call(AirflowEnv(), run, results)
    else:
        result = step.call(AirflowEnv(), run, results)
    return {**run.to_xcom(), first: result} if window is None else result


def _callable(step: Step, first: bool) -> Callable[..., Any]:
    def first_task() -> dict:
        return run_step(step, None, {})

    def branch_task(**earlier: Any) -> list[str]:  # a branch reads only the results it decides on (no run)
        return step.call(AirflowEnv(), None, earlier)

    def step_task(window: dict, **earlier: Any) -> Any:
        return run_step(step, window, earlier)

    fn: Callable[..., Any] = first_task if first else branch_task if step.branch else step_task
    fn.__name__ = fn.__qualname__ = step.name
    fn.__doc__ = step.doc
    return fn


def sync_tasks() -> dict:
    """Make and wire one task per step (call inside the ``@dag`` function); returns them by name."""
    from airflow.sdk import Label, task

    made: dict[str, Any] = {}
    window = None
    for i, step in enumerate(steps.STEPS):
        fn = _callable(step, first=i == 0)
        if step.branch:
            decorator = task.branch(task_id=step.name, doc_md=step.doc)
        else:
            options: dict[str, Any] = {
                "task_id": step.name,
                "doc_md": step.doc,
                "trigger_rule": step.trigger_rule,
            }
            options |= {"pool": AMAZON_POOL} if step.amazon else {}
            options |= {"outlets": [LEDGER]} if step.emits_ledger else {}
            decorator = task(multiple_outputs=False, **options)
        if step.operator and i > 0:  # e.g. a deferrable task: its waits hold no worker slot
            module, _, name = step.operator.rpartition(".")
            op = getattr(importlib.import_module(module), name)(window=window, **options)
            made[step.name] = op.output
        elif i == 0:
            made[step.name] = window = decorator(fn)()
        else:
            given = {r: made[r] for r in step.reads}
            made[step.name] = decorator(fn)(**given) if step.branch else decorator(fn)(window, **given)
    for step in steps.STEPS[1:]:
        for name in step.after:
            made[name] >> made[step.name]
        if step.branch_of:
            made[step.branch_of] >> Label(step.label) >> made[step.name]
    return made
