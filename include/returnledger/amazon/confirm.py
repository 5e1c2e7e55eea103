"""Confirm: poll Amazon for the transactions of submitted actions until each is final.

Success closes the lines; Failure raises AMAZON_REJECTED. A line is accepted only on Amazon's evidence
(design rule 11): a Success of the note's own transaction, or a ``DuplicateInvoiceNumber`` refusal whose
``details`` name a transaction of that note which then does not end in Failure. A transaction is the
note's when the send log has it under the note's id, or, for a transaction the ledger never heard of,
when the send log shows an attempt of the note whose outcome is unknown (a 5xx, no answer, or a SENDING
row without an outcome: the response that would have named it was lost). A refusal that names nothing,
or names a transaction that is not the note's or that failed, proves nothing: the note is not accepted,
its lines wait at CREDIT_SUBMITTED and AMAZON_REJECTED says that Amazon refused the id without naming
what it holds (returnledger.amazon.answers.unproven). A duplicate refusal never makes a line REJECTED.

An Amazon outage ends this step the way it ends the push steps (returnledger.amazon.push.AmazonOutage).
"""

from __future__ import annotations

import json
import logging
import threading
from contextlib import contextmanager

from returnledger.amazon.answers import accept, follow, reject, unproven
from returnledger.amazon.status_checks import EXPECTED_S, Answer, Pending, Readiness, pending, run_checks
from returnledger.models import ActionKind
from returnledger.moment import RunMoment
from returnledger.store.db import connect

log = logging.getLogger(__name__)

DUPLICATE_CODE = "DuplicateInvoiceNumber"
#: Success answers the checks beside a push record per transaction (a crash loses none: they stay
#: SUBMITTED and are checked again)
SUCCESS_BATCH = 8


def _duplicate_of(errors: list[dict]) -> tuple[bool, str | None]:
    """(is a duplicate-id refusal, the transaction Amazon says took the note in)."""
    for e in errors or []:
        if isinstance(e, dict) and e.get("code") == DUPLICATE_CODE:
            return True, (str(e.get("details") or "").strip() or None)
    return False, None


# what the send log knows of a transaction Amazon named in a duplicate refusal of a note
_NAMED_SQL = """
SELECT bool_or(a.document_id = %(note)s AND a.transaction_id = %(named)s) AS ours,
       bool_or(a.document_id IS DISTINCT FROM %(note)s AND a.transaction_id = %(named)s) AS another_notes,
       string_agg(DISTINCT a.document_id, ', ') FILTER (WHERE a.document_id IS DISTINCT FROM %(note)s
                                                        AND a.transaction_id = %(named)s) AS other_ids,
       bool_or(a.document_id = %(note)s AND (
                   a.outcome = 'NO_ANSWER' OR a.http_status >= 500
                   OR (a.outcome = 'SENDING' AND NOT EXISTS (
                           SELECT 1 FROM ledger.submission_attempt r
                            WHERE r.send_id = a.send_id AND r.attempt = a.attempt AND r.outcome <> 'SENDING'))
               )) AS unknown_outcome
  FROM ledger.submission_attempt a
 WHERE a.document_id = %(note)s OR a.transaction_id = %(named)s
"""


def judge_refusal(conn, note_id: str | None, tx: str, named: str | None) -> tuple[bool, str]:
    """Is a duplicate refusal (transaction ``tx``, ``details`` = ``named``) evidence worth following?

    Returns (follow ``named``, why not: a sentence for the exception when it is not).
    """
    if not named:
        return False, "without naming the transaction that holds it (empty details)"
    if named == tx or note_id is None:
        return False, f"naming transaction {named}, the refused transaction itself"
    ours, another, other_ids, unknown = conn.execute(_NAMED_SQL, {"note": note_id, "named": named}).fetchone()
    if another and not ours:
        return (
            False,
            f"naming transaction {named}, which carried another credit note of this ledger ({other_ids})",
        )
    if ours:
        return True, ""
    if unknown:  # an attempt whose answer we never read may have been taken in as ``named``
        return True, ""
    return False, (
        f"naming transaction {named}, which is none of this ledger's sends of the note (every earlier "
        "attempt has a known outcome that took nothing in)"
    )


def _unproven_detail(note_id: str | None, why: str, errors) -> str:
    return (
        f"Amazon refused credit note {note_id} as a duplicate (DuplicateInvoiceNumber) {why}. That is no "
        "evidence that Amazon credited this note: it is not accepted and its line waits (CREDIT_SUBMITTED, "
        f"not closed). Look invoice {note_id} up in Vendor Central: if Amazon holds this credit, resolve "
        "with that finding; if another invoice holds the id, correct it there and Retry. Amazon's answer: "
        f"{json.dumps(errors, default=str)}"
    )


STATS = (
    "accepted",
    "rejected",
    "processing",
    "inventory_accepted",
    "inventory_failed",
    "polls",
    "duplicates_followed",
    "unproven",
    "unavailable",
)


def new_stats() -> dict:
    return dict.fromkeys(STATS, 0)


def record_answer(
    conn, p: Pending, answer: Answer, *, run: RunMoment, stats: dict, commit: bool = True
) -> list[Pending]:
    """Write down what one status check found (whichever driver ran it); returns the transactions to check
    next (the one a duplicate refusal names, when that is evidence worth following). ``commit=False``:
    inside the caller's transaction (several answers recorded at once)."""
    batch_id, at = run.batch_id, run.as_of
    tx, kind, ids, note_id = p.tx, p.kind, p.ids, p.note_id
    if answer.outcome == "unavailable":  # retries ran out: the rows stay SUBMITTED for the next try
        stats["unavailable"] += 1
        return []
    if answer.outcome in ("unknown", "auth"):
        # Amazon refuses to report this transaction (e.g. 404: unknown or expired). Keep the rows
        # SUBMITTED with the reason; the operating checks raise SYNC_STALLED if it persists.
        if answer.outcome == "unknown":
            conn.execute(
                "UPDATE ledger.amazon_submission SET last_error = %s WHERE submission_id = ANY(%s)",
                (answer.message, ids),
            )
            if commit:
                conn.commit()
            stats["unknown"] = stats.get("unknown", 0) + 1
        return []
    if answer.outcome == "processing":  # given up for this run: still SUBMITTED
        stats["processing"] += 1
        return []
    followed: list[Pending] = []
    if answer.status == "Success":
        accept(conn, kind, ids, tx, note_id, at=at, batch_id=batch_id, evidence="SUCCESS")
        stats["accepted" if kind == ActionKind.CREDIT_NOTE else "inventory_accepted"] += 1
    elif kind == ActionKind.CREDIT_NOTE:
        dup, named = _duplicate_of(answer.errors)
        if dup:
            worth, why = judge_refusal(conn, note_id, tx, named)
            if worth and named is not None:
                follow(conn, ids, tx, named, note_id)
                followed.append(Pending(named, kind, ids, note_id, refused=tx))
                stats["duplicates_followed"] += 1
            else:
                unproven(conn, ids, _unproven_detail(note_id, why, answer.errors), at=at, batch_id=batch_id)
                stats["unproven"] += 1
        elif p.refused:  # the transaction a duplicate refusal named failed: the refusal proved nothing
            why = f"naming transaction {tx}, which ended in Failure"
            unproven(conn, ids, _unproven_detail(note_id, why, answer.errors), at=at, batch_id=batch_id)
            stats["unproven"] += 1
        else:
            rows = [
                dict(zip(("submission_id", "return_id", "line", "sku"), r, strict=True))
                for r in conn.execute(
                    "SELECT submission_id, return_id, line, sku"
                    " FROM ledger.amazon_submission WHERE submission_id = ANY(%s)",
                    (ids,),
                )
            ]
            reject(
                conn,
                rows,
                json.dumps(answer.errors, default=str),
                at=at,
                batch_id=batch_id,
                expect="SUBMITTED",
            )
            stats["rejected"] += 1
    else:
        with conn.transaction():
            conn.execute(
                """UPDATE ledger.amazon_submission SET status = 'FAILED', last_error = %s, resolved_at = %s
                    WHERE submission_id = ANY(%s) AND status = 'SUBMITTED'""",
                (json.dumps(answer.errors, default=str), at, ids),
            )
        stats["inventory_failed"] += 1
    if commit:
        conn.commit()
    return followed


def finish_confirm(dsn: str, stats: dict, *, run: RunMoment, stopped: bool, last: str = "") -> dict:
    """End the step: ``AmazonOutage`` when checks ran out of retries (the rows stay SUBMITTED), else the
    counts; refused credentials raise AmazonAuthError (configuration, not the payload)."""
    from returnledger.amazon.push import AmazonOutage
    from returnledger.clients.amazon import AmazonAuthError, AmazonUnavailableError

    log.info("confirm %s: %s", run.batch_id, stats)
    if stats.get("auth_refused"):
        raise AmazonAuthError("getTransaction", [{"code": "Unauthorized", "message": last}], 403)
    if stats["unavailable"]:
        with connect(dsn) as conn:
            left = conn.execute(
                "SELECT count(DISTINCT transaction_id) FROM ledger.amazon_submission"
                " WHERE status = 'SUBMITTED'"
            ).fetchone() or (0,)
        raise AmazonOutage(
            "confirm",
            failed=stats["unavailable"],
            stopped=stopped,
            left=f"{left[0]} transaction(s) left SUBMITTED, to be polled again",
            last=AmazonUnavailableError("getTransaction", [{"code": "RetriesExhausted", "message": last}]),
        )
    return stats


def confirm(
    dsn: str,
    client,
    *,
    run: RunMoment,
    rounds: int = 3,
    wait_s: float = 1.0,
    expected_s: float = EXPECTED_S,
) -> dict:
    """Check every SUBMITTED transaction by expected readiness (returnledger.amazon.status_checks) until it
    is final, or given up after ``rounds`` checks that found it Processing (``wait_s``: the first step
    between checks of one transaction, doubling). The deferrable task does the same from the triggerer."""
    from returnledger.amazon.push import BREAKER_FAILURES

    stats = new_stats()
    schedule = Readiness(expected_s, step_s=wait_s, max_checks=rounds)
    last = [""]
    with connect(dsn) as conn:
        for p in pending(conn):
            schedule.add(p)

        def on_answer(p: Pending, answer: Answer) -> list[Pending]:
            stats["polls"] += 1
            last[0] = answer.message or last[0]
            return record_answer(conn, p, answer, run=run, stats=stats)

        ran = run_checks(client, schedule, on_answer, breaker=BREAKER_FAILURES)
    stats["auth_refused"] = ran["auth_refused"]
    stats["checks_per_transaction"] = round(ran["checks"] / max(1, len(schedule.checks)), 3)
    return finish_confirm(dsn, stats, run=run, stopped=ran["stopped_by_breaker"], last=last[0])


@contextmanager
def checks_beside(dsn: str, client, *, run: RunMoment, expected_s: float = EXPECTED_S):
    """Status checks while a push sends (issue 26): a thread checks the transactions the ledger holds
    SUBMITTED as each comes due, at getTransaction's own rate, and records what is final (Success answers
    several per transaction, at least every second); when the block ends it stops and leaves the rest to
    ``confirm``. Yields its counts (filled when the block ends).
    Amazon unavailable or refusing credentials only stops it: the rows stay SUBMITTED for confirm."""
    from returnledger.amazon.push import BREAKER_FAILURES

    stats = new_stats()
    stop = threading.Event()

    def work() -> None:
        try:
            with connect(dsn) as conn:
                # a transaction still Processing after its checks is left to confirm (at 100k returns a day
                # ~170 stuck ones re-checked every few seconds took more than getTransaction's whole rate)
                schedule = Readiness(expected_s, max_checks=3)
                # Success answers, recorded SUCCESS_BATCH at a time (and at every refresh, each second)
                successes: list[tuple[Pending, Answer]] = []

                def record_successes() -> None:
                    if not successes:
                        return
                    for p, answer in successes:  # one transaction (the connection is not autocommit)
                        record_answer(conn, p, answer, run=run, stats=stats, commit=False)
                    conn.commit()
                    successes.clear()

                def on_answer(p: Pending, answer: Answer) -> list[Pending]:
                    if answer.outcome in ("unavailable", "auth", "processing"):
                        return []
                    if answer.status == "Success":  # follows nothing: it can wait for the others
                        successes.append((p, answer))
                        if len(successes) >= SUCCESS_BATCH:
                            record_successes()
                        return []
                    return record_answer(conn, p, answer, run=run, stats=stats)

                def refresh() -> list[Pending]:
                    record_successes()
                    return pending(conn, schedule.checks.keys())

                try:
                    ran = run_checks(
                        client, schedule, on_answer, refresh=refresh, stop=stop, breaker=BREAKER_FAILURES
                    )
                finally:
                    record_successes()
                stats.update(
                    polls=ran["checks"],
                    stopped_by_breaker=ran["stopped_by_breaker"],
                    expected_s=round(schedule.expected, 1),  # confirm starts from this estimate
                )
        except Exception as e:  # the push goes on; confirm checks what is left
            log.warning("status checks beside the push stopped: %s: %s", type(e).__name__, e)
            stats["error"] = f"{type(e).__name__}: {e}"[:500]

    thread = threading.Thread(target=work, name="status-checks", daemon=True)
    thread.start()
    try:
        yield stats
    finally:
        stop.set()
        thread.join(timeout=120)
