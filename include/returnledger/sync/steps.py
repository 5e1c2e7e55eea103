"""The steps of one sync run, in their order: the one definition the DAG, the runner and the bench read.

``STEPS`` is the run. The DAG ``returns_sync`` makes one task per step from it
(``returnledger.airflow.sync_tasks``: task id, doc, pool, trigger rule, upstream tasks, branch labels),
the runner outside the scheduler (``returnledger_dev.run_window``) calls the steps in this order, and the
bench (``bench/bench_daily.py``) reads the order and runs the steps that do not talk to Amazon.

Every step gets the run (:class:`~returnledger.moment.RunMoment`, made once by whoever starts the run),
what it needs from outside (:class:`StepEnv`: the Airflow hooks, or a test's clients) and the results of
the steps it ``reads``. Business functions are imported inside each step, so the DAG parses fast.
To add a step: docs/architecture.md, "How to add a task to returns_sync".
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from returnledger.moment import RunMoment


class StepEnv(Protocol):
    """What steps take from outside the run: the ledger and the two services, as the caller provides them."""

    def dsn(self) -> str: ...

    def rebound(self) -> AbstractContextManager[Any]: ...  # an open ReBound client

    def amazon(self) -> Any: ...  # an SP-API client

    def vendor(self) -> dict: ...  # party_id, warehouse_id, currency

    def result_dir(self) -> Any: ...  # where validate writes its result JSON: a path-like folder or None


#: a step's work: (what it needs, the run, the results of the steps it reads) -> its result (one XCom);
#: a branch step gets no run (it decides from the results it reads)
StepCall = Callable[[StepEnv, Any, dict], Any]  # Any: a RunMoment (None for a branch)


@dataclass(frozen=True)
class Step:
    """One step of the run; the DAG's task of the same name is made from it."""

    name: str  # the task id
    doc: str  # what it does (the task's doc and the DAG's step list)
    call: StepCall
    after: tuple[str, ...] = ()  # steps that end first (and the first step: its XCom is the run)
    reads: tuple[str, ...] = ()  # earlier steps whose results it is given (they end first too)
    branch: bool = False  # picks which steps with ``branch_of`` = its name run (returns their names)
    branch_of: str = ""  # runs only when that branch step picks it ...
    when: str = ""  # ... when this field of screening.screen.BatchOutcome is true
    label: str = ""  # the label of the branch's edge to it in the DAG
    amazon: bool = False  # talks to Amazon: the amazon_sp_api pool; bad credentials fail at once
    trigger_rule: str = "all_success"  # Airflow's rule, for steps after a branch
    emits_ledger: bool = False  # the DAG's ledger Asset is updated when this step ends
    # the Airflow operator (import path) that runs this step in the DAG in place of a plain task: a
    # deferrable one waits in the triggerer (confirm: returnledger.airflow.deferred_confirm)
    operator: str = ""

    def upstream(self) -> tuple[str, ...]:
        """The steps that end before this one (the DAG's edges into its task)."""
        first = STEPS[0].name if STEPS and STEPS[0] is not self and not self.branch else ""
        names = (first, *self.reads, *self.after, self.branch_of)
        return tuple(dict.fromkeys(n for n in names if n))


def _extract(env: StepEnv, run: RunMoment, _: dict) -> dict:
    from returnledger.intake.feed import extract

    with env.rebound() as rebound:
        return extract(env.dsn(), rebound, run=run)


def _validate(env: StepEnv, run: RunMoment, _: dict) -> dict:
    from returnledger.screening.screen import validate

    return validate(env.dsn(), batch_id=run.batch_id, result_dir=env.result_dir())


def _route(env: StepEnv, run: RunMoment | None, results: dict) -> list[str]:
    from returnledger.screening.screen import batch_outcome

    outcome = batch_outcome(results["validate"])
    return [s.name for s in STEPS if s.branch_of == "route" and getattr(outcome, s.when)]


def _quarantine(env: StepEnv, run: RunMoment, _: dict) -> dict:
    from returnledger.screening.screen import quarantine

    return quarantine(env.dsn(), run=run)


def _apply(env: StepEnv, run: RunMoment, _: dict) -> dict:
    from returnledger.ledger.apply import apply

    return apply(env.dsn(), run=run, currency=env.vendor().get("currency", "GBP"))


def _push_inventory(env: StepEnv, run: RunMoment, _: dict) -> dict:
    from returnledger.amazon.push import push_inventory

    vendor = env.vendor()
    return push_inventory(
        env.dsn(), env.amazon(), warehouse_id=vendor["warehouse_id"], party_id=vendor["party_id"], run=run
    )


def _push_credits(env: StepEnv, run: RunMoment, _: dict) -> dict:
    from returnledger.amazon.push import push_credits

    return push_credits(env.dsn(), env.amazon(), party_id=env.vendor()["party_id"], run=run)


def _confirm(env: StepEnv, run: RunMoment, _: dict) -> dict:
    from returnledger.amazon.confirm import confirm

    return confirm(env.dsn(), env.amazon(), run=run)


def _finish(env: StepEnv, run: RunMoment, results: dict) -> None:
    from returnledger.ledger.runs import finish_run

    finish_run(env.dsn(), run=run, stats={k: results[k] for k in FINISH_BOOKS if k in results})


#: the steps whose counts ``finish`` books in ``ledger.sync_run.stats``
FINISH_BOOKS = ("extract", "validate", "confirm")

STEPS: tuple[Step, ...] = (
    Step(
        "extract",
        "Reads the ReBound feed (pages, token refresh, retries) up to the run's end, stores every payload as "
        "received in `ledger.raw_event` (deduplicated by event id), then moves the cursor; fetches the "
        "return orders the events name. Its result also carries the run (window and batch id) to every "
        "later step.",
        _extract,
    ),
    Step(
        "validate",
        "Great Expectations suite: schema and values, return/line known to ReBound, reason code mapped, "
        "SKU in the catalog. Result JSON per run in validation/ of the object store.",
        _validate,
    ),
    Step(
        "route",
        "Branches to `quarantine` when rows failed, to `apply` when rows passed (or held events may go on), "
        "both when both.",
        _route,
        reads=("validate",),
        branch=True,
    ),
    Step(
        "quarantine",
        "One exception per failing row with its owner team; the events that wait on it are held.",
        _quarantine,
        branch_of="route",
        when="failures",
        label="rows failed",
    ),
    Step(
        "apply",
        "Lifecycle rules; writes line state, history and the Amazon outbox (deterministic idempotency "
        "keys). Held events go on when their cause is gone.",
        _apply,
        after=("quarantine",),
        branch_of="route",
        when="applicable",
        label="rows passed or held events",
        trigger_rule="none_failed_min_one_success",
    ),
    Step(
        "push_inventory",
        "Sends Amazon the absolute stock of every SKU whose sellable count changed (under the "
        "`amazon_sp_api` pool).",
        _push_inventory,
        after=("apply",),
        amazon=True,
        trigger_rule="none_failed",
    ),
    Step(
        "push_credits",
        "Sends the pending credit notes under the `amazon_sp_api` pool: one credit note per return and "
        "batch, id `CN-<return>-<first line>` (unique in the ledger). Each note is claimed before it is sent "
        "and every HTTP attempt goes to the send log (`ledger.submission_attempt`). A claim is a lease in "
        "the rows (owner, expiry renewed while the pusher works), so a lost database connection takes "
        "nothing.",
        _push_credits,
        after=("apply",),
        amazon=True,
        trigger_rule="none_failed",
    ),
    Step(
        "confirm",
        "Checks Amazon's transaction status (from the triggerer: the task defers while Amazon processes, "
        "and the checks began beside `push_credits`): Success closes the line, Failure raises "
        "AMAZON_REJECTED, and a "
        "`DuplicateInvoiceNumber` refusal is followed to the transaction it names only when that is one of "
        "the note's own sends; a refusal naming nothing closes nothing (AMAZON_REJECTED, the line waits).",
        _confirm,
        after=("push_inventory", "push_credits"),
        amazon=True,
        trigger_rule="none_failed",
        emits_ledger=True,
        operator="returnledger.airflow.deferred_confirm.ConfirmOperator",
    ),
    Step(
        "finish",
        "Books the run in `ledger.sync_run` (its window and each step's counts), which the operating check "
        "reads to tell that the sync is alive.",
        _finish,
        reads=FINISH_BOOKS[1:],
    ),
)


def step(name: str) -> Step:
    """The step called ``name``."""
    return next(s for s in STEPS if s.name == name)


def steps_doc() -> str:
    """The DAG's step list in Markdown, in the run's order (its doc_md ends with it)."""
    return "\n".join(f"{i}. `{s.name}` - {s.doc}" for i, s in enumerate(STEPS, 1))
