"""The writes of apply: what applying a batch changed, and how it goes into the ledger in sets.

History rows stream into a COPY while the rules run; the new line states go in by binary COPY and one
UPDATE join; then the submissions the rules earned, holds of events that came early and every event's outcome.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from returnledger.exception_queue.queue import NewException, line_subject, raise_exceptions, resolve_open
from returnledger.exception_types import Release, released_by
from returnledger.ledger import lifecycle
from returnledger.ledger.holds import hold, record_outcomes
from returnledger.ledger.runs import SYSTEM_ACTOR
from returnledger.ledger.submissions import write_submissions
from returnledger.models import ActionKind, EventType, ExceptionType, LineState
from returnledger.store.db import copy_rows

_LINE_STATES = {s.value: s for s in LineState}  # a dict lookup: cheaper than the enum's call
_RECEIVED, _DISPOSITIONED = EventType.RECEIVED, EventType.DISPOSITIONED  # globals: cheaper than class lookups
_MISMATCH = ExceptionType.QUANTITY_MISMATCH


HISTORY_COLUMNS = (
    ("return_id", "text"),
    ("line", "int4"),
    ("from_state", "text"),
    ("to_state", "text"),
    ("event_id", "text"),
    ("cause", "text"),
    ("batch_id", "text"),
    ("at", "timestamptz"),
)


class Changes:
    """What applying a batch changed; history rows go to ``write_history`` (with the batch id and time) as
    they arise."""

    def __init__(self, write_history, batch_id: str, at: datetime):
        self.write_history = write_history
        self.batch_id, self.at = batch_id, at
        self.actions: list[tuple[str, int, ActionKind]] = []
        self.raised: list[NewException] = []
        self.ignored: dict[int, str] = {}
        self.done: list[int] = []
        self.touched: set[tuple[str, int]] = set()
        self.received_at: dict[tuple[str, int], datetime] = {}
        self.dispositioned_at: dict[tuple[str, int], datetime] = {}
        self.last_event: dict[tuple[str, int], str] = {}
        # recounts (rule 10): their history rows, with both counts, and the lines whose receipt
        # QUANTITY_MISMATCH follows the new count (resolved, then raised again if it still differs)
        self.recounts: list[tuple] = []
        self.recounted: set[str] = set()
        self.recounted_raised: list[
            NewException
        ] = []  # a mismatch raised earlier in this batch, then recounted

    def record(self, rid: str, ln: int, raw_id: int, event: lifecycle.LineEvent, out) -> None:
        """One event's outcome on one line. States and event types are StrEnums, i.e. their text already:
        the binary COPY takes them as they are."""
        if out.recount is not None:
            self._recount(rid, ln, event, out)
            return
        if out.transitions:
            key = (rid, ln)
            event_id, etype = event.event_id, event.type
            for frm, to in out.transitions:
                self.write_history((rid, ln, frm, to, event_id, etype, self.batch_id, self.at))
            self.touched.add(key)
            self.last_event[key] = event_id
            if etype is _RECEIVED:
                self.received_at[key] = event.occurred_at
            elif etype is _DISPOSITIONED:
                self.dispositioned_at[key] = event.occurred_at
        elif out.ignored:
            self.ignored[raw_id] = out.ignored
        if out.actions:
            for kind in out.actions:
                self.actions.append((rid, ln, kind))
        if out.raised:
            for etype, detail in out.raised:
                self.raised.append(NewException(etype, line_subject(rid, ln), detail, return_id=rid, line=ln))

    def _recount(self, rid: str, ln: int, event: lifecycle.LineEvent, out) -> None:
        """A recount: its history row (both counts), and its QUANTITY_MISMATCH. Before the disposition the
        line's own mismatch follows the new count; after it, each recount raises one of its own (the
        receipt's may still be open), so finance sees every count."""
        key, subject = (rid, ln), line_subject(rid, ln)
        (state, _), before, now = out.transitions[0], out.recount[0], out.recount[1]
        after = out.line.quantity_received != now
        self.touched.add(key)
        self.last_event[key] = event.event_id
        self.recounts.append((rid, ln, state, event.event_id, before, now, after))
        if not after:
            self.recounted.add(subject)
            earlier = [x for x in self.raised if x.subject_key == subject and x.type == _MISMATCH]
            if earlier:  # raised by this batch's receipt: kept in the queue's history, then settled below
                self.recounted_raised += earlier
                self.raised = [x for x in self.raised if x not in earlier]
        else:
            subject = f"{subject}|recount:{event.event_id}"
        for etype, detail in out.raised:
            self.raised.append(NewException(etype, subject, detail, return_id=rid, line=ln))


def write_recounts(conn, ch: Changes) -> int:
    """The recounts' history rows (cause RECOUNT, both counts in ``detail``), and the line's receipt
    QUANTITY_MISMATCH settled where a recount before the disposition changed it (raised again with
    the new count by the caller when it still differs)."""
    if not ch.recounts:
        return 0
    conn.execute(
        """INSERT INTO ledger.line_history (return_id, line, from_state, to_state, event_id, cause, batch_id,
                                            at, detail)
           SELECT x.rid, x.ln, x.state, x.state, x.ev, 'RECOUNT', %s, %s,
                  jsonb_build_object('counted_before', x.before, 'recounted', x.now,
                                     'after_disposition', x.after)
             FROM unnest(%b::text[], %b::int[], %b::text[], %b::text[], %b::int[], %b::int[], %b::bool[])
                  AS x(rid, ln, state, ev, before, now, after)
           ON CONFLICT DO NOTHING""",
        (ch.batch_id, ch.at, *(list(col) for col in zip(*ch.recounts, strict=True))),
    )
    raise_exceptions(conn, ch.recounted_raised, at=ch.at, batch_id=ch.batch_id)
    resolve_open(
        conn,
        ExceptionType.QUANTITY_MISMATCH,
        sorted(ch.recounted),
        at=ch.at,
        actor=SYSTEM_ACTOR,
        resolution="recounted before the disposition: the new count stands (a new exception follows it"
        " if it still differs from the announced quantity)",
    )
    return len(ch.recounts)


_CLOSE_CHOSEN_AT_ZERO_SQL = """
WITH closed AS (
    UPDATE ledger.return_line l SET state = 'CLOSED', updated_at = %(at)s
      FROM unnest(%(rid)s::text[], %(ln)s::int[]) AS x(rid, ln)
     WHERE l.return_id = x.rid AND l.line = x.ln AND l.state = 'DISPOSITIONED' AND l.credit_quantity = 0
    RETURNING l.return_id, l.line
)
INSERT INTO ledger.line_history (return_id, line, from_state, to_state, event_id, cause, batch_id, at)
SELECT return_id, line, 'DISPOSITIONED', 'CLOSED', NULL, 'NO_CREDIT_CHOSEN', %(batch)s, %(at)s FROM closed
"""


def _close_lines_chosen_at_zero(conn, keys, *, batch_id, at) -> int:
    """An over-receipt the warehouse resolved with 0 units before its disposition: nothing is owed, so the
    disposition closes the line (rule 4), as choosing 0 after the disposition does."""
    if not keys:
        return 0
    return conn.execute(
        _CLOSE_CHOSEN_AT_ZERO_SQL,
        {"rid": [k[0] for k in keys], "ln": [k[1] for k in keys], "batch": batch_id, "at": at},
    ).rowcount


def load_lines(conn, return_ids: set[str]) -> tuple[dict[tuple[str, int], Any], dict[tuple[str, int], tuple]]:
    """The lines of these returns as the lifecycle sees them, and what an Amazon action needs of each
    (sku, asin, unit cost, returns notice), read in one pass."""
    rows = conn.execute(
        """SELECT l.return_id, l.line, l.state, l.quantity_announced, l.quantity_received, l.grade,
                                  l.disposition, l.sku, s.asin, s.unit_cost, o.returns_notice
                           FROM ledger.return_line l JOIN ledger.return_order o USING (return_id)
                           LEFT JOIN ledger.sku s ON s.sku = l.sku
                           WHERE l.return_id = ANY(%b::text[])""",
        (sorted(return_ids),),
    ).fetchall()
    lines, info = {}, {}
    for r in rows:
        key = (r[0], r[1])
        lines[key] = lifecycle.LineView(_LINE_STATES[r[2]], r[3], r[4], r[5], r[6])
        info[key] = r[7:]
    return lines, info


_LINE_CHANGE_COLUMNS = (
    ("rid", "text"),
    ("ln", "int4"),
    ("state", "text"),
    ("qr", "int4"),
    ("grade", "text"),
    ("disp", "text"),
    ("rat", "timestamptz"),
    ("dat", "timestamptz"),
    ("ev", "text"),
)


def _line_change_rows(keys, lines, ch: Changes):
    """The changed lines' new states (a StrEnum state is its text for the binary COPY)."""
    received_at, dispositioned_at, last_event = ch.received_at.get, ch.dispositioned_at.get, ch.last_event.get
    for k in keys:
        v = lines[k]
        yield (
            k[0],
            k[1],
            v.state,
            v.quantity_received,
            v.grade,
            v.disposition,
            received_at(k),
            dispositioned_at(k),
            last_event(k),
        )


def write_changes(
    conn, lines, line_info, ch: Changes, to_hold, held_ids, policy, *, batch_id, at, currency
) -> dict:
    """Write what a batch changed, in its transaction: line states, submissions, holds, outcomes."""
    keys = sorted(ch.touched)
    if keys:
        # the new line states go in by binary COPY (formatted in C) and update the lines in one join
        conn.execute("""CREATE TEMP TABLE IF NOT EXISTS line_change (rid text, ln int, state text, qr int,
            grade text, disp text, rat timestamptz, dat timestamptz, ev text) ON COMMIT DELETE ROWS""")
        copy_rows(
            conn,
            "line_change",
            _LINE_CHANGE_COLUMNS,
            _line_change_rows(keys, lines, ch),
        )
        conn.execute("ANALYZE line_change")
        conn.execute(
            """
            UPDATE ledger.return_line l SET state = x.state, quantity_received = x.qr, grade = x.grade,
                   disposition = x.disp, received_at = COALESCE(x.rat, l.received_at),
                   dispositioned_at = COALESCE(x.dat, l.dispositioned_at), updated_at = %s,
                   last_event_id = x.ev
            FROM line_change x WHERE l.return_id = x.rid AND l.line = x.ln""",
            (at,),
        )
    # history rows were COPYed while the rules ran: each event is applied once (only events without an
    # outcome get here, in this one transaction); the unique (line, event, state) key stops a double write
    submissions = write_submissions(
        conn, lines, line_info, ch.actions, policy, batch_id=batch_id, at=at, currency=currency
    )
    closed = _close_lines_chosen_at_zero(
        conn, [k for k in keys if lines[k].state == LineState.DISPOSITIONED], batch_id=batch_id, at=at
    )
    # holds: the exception of lines that now wait for an earlier event (the registry's type released by
    # Release.EARLIER_EVENT); resolve those whose wait is over
    (waits,) = released_by(Release.EARLIER_EVENT)
    oos: dict[tuple[str, int], NewException] = {}
    for item in to_hold:
        rid, ln, etype = item[1], item[2], item[3]
        if etype == waits:
            oos.setdefault(
                (rid, ln),
                NewException(
                    ExceptionType(waits),
                    line_subject(rid, ln),
                    "an event arrived before the event it follows (e.g. a disposition before the receipt); "
                    "held until the missing event arrives",
                    return_id=rid,
                    line=ln,
                ),
            )
    recounts = write_recounts(conn, ch)  # before raising: a recount's new mismatch replaces the old one
    raise_exceptions(conn, list(oos.values()) + ch.raised, at=at, batch_id=batch_id)
    hold(conn, to_hold, at=at, batch_id=batch_id)
    done = ch.done
    if done:
        released = [i for i in done if i in held_ids]  # only held events have a hold row or an outcome yet
        if released:
            conn.execute("DELETE FROM ledger.held_event WHERE raw_id = ANY(%b::bigint[])", (released,))
        applied = [i for i in done if i not in ch.ignored]
        record_outcomes(conn, "APPLIED", applied, None, batch_id=batch_id, at=at, decided=held_ids)
        record_outcomes(
            conn,
            "IGNORED",
            list(ch.ignored),
            list(ch.ignored.values()),
            batch_id=batch_id,
            at=at,
            decided=held_ids,
        )
    waiting = {
        (r[0], r[1])
        for r in conn.execute(
            "SELECT DISTINCT return_id, line FROM ledger.held_event WHERE reason = %s", (waits,)
        )
    }
    cleared = [line_subject(rid, ln) for rid, ln in ch.touched if (rid, ln) not in waiting]
    resolved = resolve_open(
        conn,
        waits,
        cleared,
        at=at,
        actor=SYSTEM_ACTOR,
        resolution="released: the missing event arrived and the line went on in order",
    )
    return {
        "applied": len(done) - len(ch.ignored),
        "ignored": len(ch.ignored),
        "held": len(to_hold),
        "released_from_hold": len(held_ids & set(done)),
        "lines_changed": len(keys),
        "out_of_sequence_resolved": resolved,
        **({"recounts": recounts} if recounts else {}),
        **({"closed_with_nothing_chosen": closed} if closed else {}),
        **submissions,
    }
