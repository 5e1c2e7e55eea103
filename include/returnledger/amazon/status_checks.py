"""Status checks of what was sent to Amazon, by expected readiness (issue 26).

Amazon processes a submission for a while (``Processing``) before its transaction ends in Success or
Failure. A check sent before that is wasted on the ``getTransaction`` budget, so each transaction is
first checked when it is expected to be ready: its submission (the send log's wall clock) plus the
expected processing time. That estimate is learned: a transaction found ``Processing`` on its first check
moves it to that age plus a step, so after a short ramp nearly every transaction is checked once. A
transaction still processing is checked again after a step that doubles, and is given up (left
SUBMITTED for the next run) once it is much older than the estimate.

Three drivers share the schedule (:class:`Readiness`) and one check (:func:`check`): the checks that run
beside ``push_credits`` (the first transactions are checked while later notes are still being sent),
``confirm`` outside the scheduler (tests, runner), and the deferrable ``confirm`` task's trigger
(returnledger.airflow.deferred_confirm), which waits in the triggerer, not on a worker. Every answer is
recorded by returnledger.amazon.confirm.record_answer, so the outcome is the same whichever ran it.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import Container
from dataclasses import asdict, dataclass, field

#: the first estimate of Amazon's processing time (seconds after submission); learned upwards from there
EXPECTED_S = 0.0
#: the estimate never grows beyond this (a transaction processing longer is checked when it comes due)
MAX_EXPECTED_S = 600.0

_PENDING_SQL = """
SELECT s.transaction_id, s.kind, array_agg(s.submission_id ORDER BY s.submission_id), min(s.document_id),
       min(s.refused_transaction_id),
       (SELECT extract(epoch FROM max(a.sent_at)) FROM ledger.submission_attempt a
         WHERE a.transaction_id = s.transaction_id AND a.outcome = 'ACCEPTED_202')
  FROM ledger.amazon_submission s
 WHERE s.status = 'SUBMITTED' AND s.transaction_id IS NOT NULL
 GROUP BY s.transaction_id, s.kind ORDER BY 6 NULLS FIRST, 1"""


@dataclass
class Pending:
    """A submitted transaction to check: its rows, its note, and when Amazon took it (epoch seconds)."""

    tx: str
    kind: str
    ids: list[int] = field(default_factory=list)
    note_id: str | None = None
    refused: str | None = None
    submitted: float = 0.0  # 0: unknown or long ago (due at once)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Answer:
    """What one check found: ``final`` (Success/Failure), ``processing``, ``unavailable`` (retries ran
    out), ``unknown`` (Amazon refuses to report it, e.g. 404) or ``auth`` (credentials refused)."""

    tx: str
    outcome: str
    status: str = ""
    errors: list = field(default_factory=list)
    message: str = ""

    def to_json(self) -> dict:
        return asdict(self)


def pending(conn, known: Container[str] = frozenset()) -> list[Pending]:
    """The SUBMITTED transactions of the ledger not in ``known``, oldest submission first."""
    out = []
    for tx, kind, ids, note_id, refused, sent in conn.execute(_PENDING_SQL).fetchall():
        if tx in known:
            continue
        submitted = 0.0 if refused or sent is None else float(sent)
        out.append(Pending(tx, str(kind), list(ids), note_id, refused, submitted))
    conn.commit()
    return out


def check(client, p: Pending) -> Answer:
    """One status check of ``p`` at its own operation's rate (the client's bucket for it)."""
    from returnledger.clients.amazon import AmazonAuthError, AmazonRequestError, AmazonUnavailableError
    from returnledger.models import ActionKind

    try:
        status = (
            client.get_transaction(p.tx)
            if p.kind == ActionKind.CREDIT_NOTE
            else client.get_df_transaction(p.tx)
        )
    except AmazonAuthError as e:
        return Answer(p.tx, "auth", message=f"{type(e).__name__}: {e}"[:2000])
    except AmazonUnavailableError as e:
        return Answer(p.tx, "unavailable", message=f"{type(e).__name__}: {e}"[:2000])
    except AmazonRequestError as e:
        return Answer(p.tx, "unknown", message=f"{type(e).__name__}: {e}"[:2000])
    if status.final:
        return Answer(p.tx, "final", status.status, list(status.errors))
    return Answer(p.tx, "processing", status.status)


class Readiness:
    """Which transaction to check next, and when: by expected readiness (see the module's doc).

    A transaction still processing is given up (left SUBMITTED) after ``max_checks`` checks once its age
    passes ``patience`` x the estimate plus ``grace()`` (slower than the others by far: stuck); its last
    check is made when that time comes.
    """

    def __init__(
        self,
        expected_s: float = EXPECTED_S,
        *,
        step_s: float = 1.0,
        max_checks: int = 8,
        patience: float = 1.0,
        grace_s: float = 5.0,
    ):
        self.expected, self.step_s, self.max_checks = (
            max(0.0, expected_s),
            max(0.05, step_s),
            max(1, max_checks),
        )
        self.patience, self.grace_s = patience, grace_s
        self._heap: list[tuple[float, int, Pending]] = []
        self._seq = itertools.count()
        self.checks: dict[str, int] = {}
        self.since: dict[str, float] = {}
        self.given_up: list[Pending] = []
        self.unavailable_in_a_row = 0
        self.seen_ready = False  # a transaction was seen final: the estimate is no longer a guess
        self.recent: deque[bool] = deque(maxlen=10)  # the last first checks: found Processing?

    def __len__(self) -> int:
        return len(self._heap)

    def step(self) -> float:
        return max(self.step_s, 0.1 * self.expected)

    def grace(self) -> float:
        """How long past the estimate a transaction still Processing is followed: a fifth of the estimate,
        1 s to ``grace_s`` (a demo's estimate of 0 gave a stuck transaction 5 s, about 7 s of each day)."""
        return min(self.grace_s, max(1.0, 0.2 * self.expected))

    def add(self, p: Pending, at: float | None = None) -> None:
        """Schedule ``p``: at its expected readiness, or at ``at`` (epoch seconds)."""
        self.checks.setdefault(p.tx, 0)
        self.since.setdefault(p.tx, p.submitted or time.time())  # its age counts from here if unknown
        due = at if at is not None else self._first_due(p)
        heapq.heappush(self._heap, (due, next(self._seq), p))

    def _first_due(self, p: Pending) -> float:
        return p.submitted + self.expected if p.submitted else 0.0

    def due(self, now: float) -> tuple[Pending | None, float]:
        """The transaction to check now, else (None, seconds until the next one is due)."""
        while self._heap:
            key, _, p = self._heap[0]
            if self.checks.get(p.tx, 0) == 0 and p.submitted:
                want = self._first_due(p)  # the estimate moved since it was queued
                if want > key + 1e-6:
                    heapq.heapreplace(self._heap, (want, next(self._seq), p))
                    continue
            if key <= now:
                heapq.heappop(self._heap)
                return p, 0.0
            return None, key - now
        return None, math.inf

    def answered(self, p: Pending, a: Answer, now: float) -> bool:
        """Book an answer; True when ``p`` is queued again (still processing, or Amazon unavailable)."""
        if a.outcome == "unavailable":
            self.unavailable_in_a_row += 1
            self.add(p, now + self.step())
            return True
        self.unavailable_in_a_row = 0
        n = self.checks[p.tx] = self.checks.get(p.tx, 0) + 1
        if a.outcome != "processing":
            self.seen_ready = self.seen_ready or a.outcome == "final"
            if n == 1:
                self.recent.append(False)
            return False
        age = now - self.since.get(p.tx, now)
        # ready later than we thought: learn. Until a first transaction is seen final, only the oldest is
        # probed (each of its checks moves the estimate past the younger ones); then first checks only
        # (only from a check made near its due time: one long overdue, e.g. left by an earlier run, is
        # rather stuck, and says nothing of the time Amazon takes)
        on_time = self.expected - 0.5 <= age <= self.expected + 2 * self.step() + 1.0
        if n == 1:
            self.recent.append(True)
        # once transactions are seen final, one first check alone moves nothing: a transaction stuck in
        # Processing (it happens) would push every later check back; half of the last ten do (two did,
        # and at 100k returns a day the stuck ones, 3 % of them, came two in ten often enough to move the
        # estimate one step at a time from 30 s to 343 s). A transaction's own re-checks move it for its
        # first max_checks checks at most: a lone stuck one would otherwise be followed for ever
        assert self.recent.maxlen is not None
        learn = (not self.seen_ready and n <= self.max_checks) or (
            n == 1 and 2 * sum(self.recent) >= self.recent.maxlen
        )
        if learn and p.submitted and on_time:
            self.expected = min(MAX_EXPECTED_S, max(self.expected, age + self.step()))
        deadline = self.patience * self.expected + self.grace()
        # long past any estimate at its first check (left Processing by an earlier run): one check a run
        if (n >= self.max_checks or (n == 1 and age > 2 * deadline + 10.0)) and age > deadline:
            self.given_up.append(p)
            return False
        if p.submitted and age < self.expected:  # not due yet by the (new) estimate: then
            self.add(p, max(now + self.step(), p.submitted + self.expected))
        else:  # slower than the others: back off, a few seconds at most
            later = now + min(self.step() * 2 ** min(n - 1, 30), max(5.0, 0.25 * self.expected))
            if n >= self.max_checks:  # its last check: when it is due to be given up, not later
                since = self.since.get(p.tx, now)
                later = min(
                    later, max(now + 0.1, since + self.patience * self.expected + self.grace() + 0.05)
                )
            self.add(p, later)
        return True


def run_checks(
    client,
    schedule: Readiness,
    on_answer,
    *,
    refresh=None,
    stop=None,
    breaker: int = 5,
    refresh_s: float = 1.0,
    clock=time.time,
) -> dict:
    """Check what ``schedule`` holds as each comes due, telling ``on_answer(p, answer)`` (which returns
    transactions to add, e.g. one a duplicate refusal names).

    ``refresh()`` returns newly submitted transactions (read every ``refresh_s``); with ``stop`` (a
    threading.Event) the checks go on until it is set, leaving what is not final to the next driver,
    else until nothing is left. Ends early after ``breaker`` unavailable answers in a row, or on refused
    credentials. Returns counts: checks, and how the checks ended.
    """
    stats = {"checks": 0, "stopped_by_breaker": False, "auth_refused": False}
    next_refresh = 0.0
    while True:
        now = clock()
        if refresh is not None and now >= next_refresh:
            for p in refresh():
                schedule.add(p)
            next_refresh = now + refresh_s
        p, wait = schedule.due(now)
        if p is None:
            if stop is None and not len(schedule) and refresh is None:
                break
            if stop is not None and stop.is_set():
                break
            wait = min(wait, refresh_s if refresh is not None else wait, 5.0)
            if stop is not None:
                stop.wait(wait)
            else:
                time.sleep(wait)
            continue
        if stop is not None and stop.is_set():
            schedule.add(p, 0.0)  # not checked: it stays for the next driver
            break
        answer = check(client, p)
        stats["checks"] += 1
        if answer.outcome == "auth":
            stats["auth_refused"] = True
            schedule.add(p, 0.0)
            on_answer(p, answer)
            break
        if not schedule.answered(p, answer, clock()):
            for extra in on_answer(p, answer) or ():
                schedule.add(extra)
        elif answer.outcome == "unavailable":
            on_answer(p, answer)
            if schedule.unavailable_in_a_row >= breaker:
                stats["stopped_by_breaker"] = True
                break
    return stats
