"""Apply: the lifecycle rules over every event that passed screening, and their writes to the ledger.

Events a line may take now go through returnledger.ledger.lifecycle (pure rules); the new line states,
their history, holds and outcomes are written in sets by returnledger.ledger.writes (COPY, one UPDATE
join), and the Amazon actions the rules earn become submissions (``ledger.amazon_submission``,
returnledger.ledger.submissions), all in one transaction.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from datetime import datetime

import psycopg

from returnledger.exception_queue.queue import NewException, raise_exceptions
from returnledger.exception_types import Release, released_by, replay_only_types, sql_in
from returnledger.fields import int4_sql
from returnledger.ledger import lifecycle
from returnledger.ledger.holds import blocked_sql, record_outcomes, release_reference_holds
from returnledger.ledger.runs import no_cyclic_gc
from returnledger.ledger.setapply import apply_common
from returnledger.ledger.writes import HISTORY_COLUMNS, Changes, load_lines, write_changes
from returnledger.models import LINE_EVENTS, Disposition, EventType, ExceptionType, Grade
from returnledger.moment import RunMoment
from returnledger.reference.policy import load_policy
from returnledger.store.db import copy_into, unit_of_work
from returnledger.store.raw_floor import current_floor

log = logging.getLogger(__name__)


_EVENT_TYPES = {t.value: t for t in EventType}  # a dict lookup: the enum's own call costs a microsecond a row
# models.LINE_EVENTS as plain text: the hot loop looks the raw event_type up, and an enum member's hash is
# a Python call per lookup
_LINE_EVENT_VALUES = frozenset(t.value for t in LINE_EVENTS)
_GRADES = frozenset(g.value for g in Grade)
_DISPOSITIONS = frozenset(d.value for d in Disposition)


def _unfit_detail(etype, ln, occurred_at, quantity, grade, disposition) -> str:
    if etype not in _EVENT_TYPES:
        why = f"unknown event type {etype!r}"
    elif occurred_at is None:
        why = "no occurred_at"
    elif ln is None:
        why = "no valid line number"
    elif etype == EventType.RECEIVED.value:
        why = "no whole-number quantity from 1 to 2147483647 (a receipt is at least one unit)"
    elif etype == EventType.GRADED.value:
        why = f"grade {grade!r} is not one of A, B, C, D"
    else:
        why = f"disposition {disposition!r} is unknown"
    return f"apply_guard: the event reached the lifecycle rules without passing validation: {why}"


def _refuse_unfit(
    conn: psycopg.Connection, unfit: list[tuple], held_ids: set[int], *, batch_id: str, at: datetime
) -> int:
    """Events apply cannot use (they bypassed validation): INVALID_EVENT, outcome INVALID, no line touched."""
    ids = [u[0] for u in unfit]
    conn.execute("DELETE FROM ledger.held_event WHERE raw_id = ANY(%b::bigint[])", (ids,))
    raise_exceptions(
        conn,
        [
            NewException(ExceptionType.INVALID_EVENT, f"raw:{i}", d, return_id=rid, line=ln, raw_id=i)
            for i, rid, ln, d in unfit
        ],
        at=at,
        batch_id=batch_id,
    )
    record_outcomes(conn, "INVALID", ids, [u[3] for u in unfit], batch_id=batch_id, at=at, decided=held_ids)
    return len(ids)


#: whole returns of common transitions take the set-based path (returnledger.ledger.setapply) when True;
#: the per-event path alone when False. Off by default: it writes the same ledger (tests/integration/
#: test_set_apply.py) with a third of this process's CPU, but at 10k returns under load 17-19 its extra
#: PostgreSQL statements made apply's wall 24-26 s against 17-20 s (docs/performance.md, issue 26 target 3)
SET_BASED = os.environ.get("RETURNLEDGER_SET_BASED_APPLY") == "1"


def apply(dsn: str, *, run: RunMoment, currency: str = "GBP", set_based: bool | None = None) -> dict:
    """Lifecycle rules over passing events plus every held event that may now go on."""
    batch_id, at = run.batch_id, run.as_of
    stats = defaultdict(int)
    blocked, replay_only = blocked_sql(), sql_in(replay_only_types())  # the registry's hold rules
    (waits_for_earlier,) = released_by(Release.EARLIER_EVENT)
    with no_cyclic_gc(), unit_of_work(dsn) as conn:
        policy = load_policy(conn)
        stats["released_exceptions"] = release_reference_holds(conn, at=at)
        # events to (re)apply: new passing events, and held events no longer blocked. Fields only some event
        # types carry are read for those types alone and never cast blindly: a poison value is null here.
        # Two parts, each bounded by its own index: events with no outcome are at or above the raw floor
        # (returnledger.store.raw_floor), read by a range of raw_event's key with their outcomes and failures
        # from the floor up (an anti-join of bounded sets, whatever the statistics say); held events come
        # from the HELD outcomes. Held events of a blocked line or return are dropped below, in Python: a
        # join of every candidate to the blocked lines planned on a stale estimate of the open exceptions
        # (5 for 2,681) took 120 s for 125k events where the whole query takes 0.3 s.
        floor = current_floor(conn)
        fields = f"""r.raw_id, r.event_id, r.event_type, r.return_id, r.line, r.occurred_at,
                   CASE WHEN r.event_type = 'RECEIVED' THEN {int4_sql("quantity", 1)} END AS quantity,
                   CASE WHEN r.event_type = 'GRADED' THEN r.payload->>'grade' END AS grade,
                   CASE WHEN r.event_type = 'DISPOSITIONED' THEN r.payload->>'disposition' END AS disposition,
                   (h.raw_id IS NOT NULL) AS was_held"""
        candidates = f"""
            SELECT {fields}, false AS held
              FROM ledger.raw_event r LEFT JOIN ledger.held_event h USING (raw_id)
             WHERE r.raw_id >= {floor}
               AND NOT EXISTS (SELECT 1 FROM ledger.event_outcome o WHERE o.raw_id = r.raw_id
                                                                      AND o.raw_id >= {floor})
               AND NOT EXISTS (SELECT 1 FROM ledger.validation_failure f WHERE f.raw_id = r.raw_id
                                                                           AND f.raw_id >= {floor})
            UNION ALL
            SELECT {fields}, true AS held
              FROM ledger.event_outcome o JOIN ledger.raw_event r USING (raw_id)
              LEFT JOIN ledger.held_event h USING (raw_id)
             WHERE o.status = 'HELD'
               AND NOT EXISTS (SELECT 1 FROM ledger.validation_failure f WHERE f.raw_id = r.raw_id
                                 AND f.exception_type IN {replay_only})"""
        columns = "raw_id, event_id, event_type, return_id, line, occurred_at, quantity, grade, disposition"
        common = None
        if SET_BASED if set_based is None else set_based:  # whole returns of common transitions, in SQL
            conn.execute(f"CREATE TEMP TABLE apply_candidate ON COMMIT DROP AS {candidates}")
            conn.execute("ANALYZE apply_candidate")
            common = apply_common(conn, policy, blocked, batch_id=batch_id, at=at)
            rows = conn.execute(f"""
                SELECT {columns}, was_held, held FROM apply_candidate c
                 WHERE NOT EXISTS (SELECT 1 FROM set_return s WHERE s.return_id = c.return_id)
                 ORDER BY raw_id""").fetchall()
        else:
            rows = conn.execute(
                f"SELECT {columns}, was_held, held FROM ({candidates}) c ORDER BY raw_id"
            ).fetchall()
        blocked_lines: dict[tuple[str, int], tuple[str, str]] = {}
        blocked_returns: dict[str, tuple[str, str]] = {}
        for rid, ln, etype, subject in conn.execute(blocked):
            if ln is None:
                blocked_returns.setdefault(rid, (etype, subject))
            else:
                blocked_lines.setdefault((rid, ln), (etype, subject))
        if blocked_returns or blocked_lines:  # a held event still blocked stays as it is: no candidate
            rows = [
                r for r in rows if not (r[-1] and (r[3] in blocked_returns or (r[3], r[4]) in blocked_lines))
            ]
        # events as (raw_id, lifecycle event): one object per event, the rules' own
        line_events: dict[tuple[str, int], list[tuple[int, lifecycle.LineEvent]]] = defaultdict(list)
        return_events: dict[str, list[tuple[int, lifecycle.LineEvent]]] = defaultdict(list)
        to_hold: list[tuple] = []
        unfit: list[tuple[int, str | None, int | None, str]] = []
        held_ids = {r[0] for r in rows if r[-2]}
        received, graded, dispositioned = EventType.RECEIVED, EventType.GRADED, EventType.DISPOSITIONED
        line_event_values, event_types = _LINE_EVENT_VALUES, _EVENT_TYPES
        new_event = lifecycle.LineEvent
        for raw_id, event_id, etype, rid, ln, occurred_at, quantity, grade, disposition, _, _ in rows:
            t = event_types.get(etype)
            is_line_event = etype in line_event_values
            if (
                t is None
                or occurred_at is None
                or (
                    is_line_event
                    and (
                        ln is None
                        or (t is received and quantity is None)
                        or (t is graded and grade not in _GRADES)
                        or (t is dispositioned and disposition not in _DISPOSITIONS)
                    )
                )
            ):
                unfit.append(
                    (raw_id, rid, ln, _unfit_detail(etype, ln, occurred_at, quantity, grade, disposition))
                )
                continue
            block = blocked_returns.get(rid) if blocked_returns else None
            if block is None and is_line_event and blocked_lines:
                block = blocked_lines.get((rid, ln))
            if block is not None:  # rows of a line (or return) with an open holding exception are held
                to_hold.append((raw_id, rid, ln, ExceptionType(block[0]), block[1]))
                continue
            ev = new_event(event_id, t, occurred_at, quantity, grade, disposition)
            if is_line_event:
                line_events[(rid, ln)].append((raw_id, ev))
            else:
                return_events[rid].append((raw_id, ev))
        if unfit:  # a poison record never stops the batch: it is reported and changes nothing
            stats["invalid"] = _refuse_unfit(conn, unfit, held_ids, batch_id=batch_id, at=at)
        lines, line_info = load_lines(conn, {k[0] for k in line_events} | set(return_events))
        # history rows stream into a COPY while the rules run, so PostgreSQL stores them alongside
        with copy_into(conn, "ledger.line_history", HISTORY_COLUMNS) as sink:
            changes = Changes(sink.write_row, batch_id, at)
            record, done, apply_event = changes.record, changes.done, lifecycle.apply_event
            # return-level milestones first: they never earn anything (held only with their whole return)
            lines_of: dict[str, list[int]] = defaultdict(list)
            for lrid, ln in lines:
                lines_of[lrid].append(ln)
            for rid, revs in return_events.items():
                revs.sort(key=lambda e: e[1].occurred_at)
                for ln in lines_of.get(rid, ()):
                    key = (rid, ln)
                    view = lines[key]
                    for raw_id, event in revs:
                        out = apply_event(view, event, policy)
                        record(rid, ln, raw_id, event, out)
                        view = out.line
                    lines[key] = view
                done.extend(e[0] for e in revs)
            for key, evs in line_events.items():
                rid, ln = key
                view = lines.get(key)
                if view is None:  # cannot happen for validated events; keep them visible instead of guessing
                    to_hold.extend((e[0], rid, ln, ExceptionType(waits_for_earlier)) for e in evs)
                    continue
                if len(evs) == 1:
                    raw_of = None
                    final, results = lifecycle.replay(view, [evs[0][1]], policy)
                else:
                    raw_of = {id(e): i for i, e in evs}
                    final, results = lifecycle.replay(view, [e for _, e in evs], policy)
                for event, out in results:
                    raw_id = evs[0][0] if raw_of is None else raw_of[id(event)]
                    if out.hold is not None:
                        to_hold.append((raw_id, rid, ln, out.hold))
                        continue
                    record(rid, ln, raw_id, event, out)
                    done.append(raw_id)
                lines[key] = final
        if common is not None:  # the set path's Amazon actions: submissions are built in one place
            changes.actions.extend(common["actions"])
            lines.update(common["lines"])
            line_info.update(common["info"])
        stats.update(
            write_changes(
                conn,
                lines,
                line_info,
                changes,
                to_hold,
                held_ids,
                policy,
                batch_id=batch_id,
                at=at,
                currency=currency,
            )
        )
    if common is not None:
        stats["applied"] += common["set_applied"]
        stats["lines_changed"] += common["set_lines_changed"]
    log.info("apply %s: %s (set-based: %s)", batch_id, dict(stats), common and common["set_applied"])
    return dict(stats)
