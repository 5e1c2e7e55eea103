"""The set-based apply: the common transitions of whole returns written by SQL, without a row in Python.

``apply`` first lands the batch's events in the temp table ``apply_candidate``. A return takes this path
when nothing about it needs the per-event path: none of its events was held or is unfit, nothing holds it
(no open exception, no held event, no undecided conflict), no line has a quantity chosen by the warehouse,
and every event of every line is a row of the lifecycle's own transition table
(returnledger.ledger.transitions, generated from ``lifecycle.apply_event``). Its lines are walked through
their events in the lifecycle's order (the return's milestones by time, then the line's events by
``lifecycle.replay``'s key) by one recursive query; their history, outcomes (APPLIED) and new states are
written by ``INSERT ... SELECT`` and one UPDATE. The Amazon actions the rules earn are handed back, so the
submissions of both paths are built in one place (returnledger.ledger.submissions). Every other return goes
through the per-event path unchanged: ``set_return`` names the returns taken here.
"""

from __future__ import annotations

from datetime import datetime

from returnledger.ledger import lifecycle
from returnledger.ledger.transitions import CONDITION_SQL, NEXT_FIELDS_SQL, common_transitions
from returnledger.models import ActionKind, Disposition, EventType, Grade, LineState

_ACTIONS = {a.value: a for a in ActionKind}
_STATES = {s.value: s for s in LineState}
_GRADES = ", ".join(f"'{g.value}'" for g in Grade)
_DISPOSITIONS = ", ".join(f"'{d.value}'" for d in Disposition)
#: lifecycle.EVENT_ORDER as SQL (the tie-break of events with the same time)
_ORDER_SQL = (
    "CASE c.event_type "
    + " ".join(f"WHEN '{t.value}' THEN {n}" for t, n in lifecycle.EVENT_ORDER.items())
    + " END"
)

_RETURNS_SQL = f"""
CREATE TEMP TABLE set_return ON COMMIT DROP AS
SELECT c.return_id FROM apply_candidate c
 WHERE c.return_id IS NOT NULL
 GROUP BY c.return_id
HAVING bool_and(NOT c.was_held AND NOT c.held AND c.occurred_at IS NOT NULL AND c.event_id IS NOT NULL AND (
           c.event_type IN ('{EventType.RETURN_CREATED}', '{EventType.IN_TRANSIT}')
           OR (c.line IS NOT NULL AND CASE c.event_type
                   WHEN '{EventType.RECEIVED}' THEN c.quantity IS NOT NULL
                   WHEN '{EventType.GRADED}' THEN c.grade IN ({_GRADES})
                   WHEN '{EventType.DISPOSITIONED}' THEN c.disposition IN ({_DISPOSITIONS})
                   ELSE false END)))
"""

# returns that need the per-event path after all: what the rules' table cannot see
_NOT_COMMON_SQL = """
WITH blocked AS ({blocked})
DELETE FROM set_return s USING (
    SELECT return_id FROM blocked
    UNION SELECT return_id FROM ledger.exception WHERE status = 'open'
    UNION SELECT return_id FROM ledger.held_event
    UNION SELECT return_id FROM ledger.return_line WHERE credit_quantity IS NOT NULL
    UNION SELECT c.return_id FROM apply_candidate c
            LEFT JOIN ledger.return_line l ON l.return_id = c.return_id AND l.line = c.line
           WHERE c.event_type IN ('RECEIVED', 'GRADED', 'DISPOSITIONED') AND l.return_id IS NULL
    UNION SELECT c.return_id FROM apply_candidate c
           WHERE c.event_type IN ('RECEIVED', 'GRADED', 'DISPOSITIONED')
           GROUP BY c.return_id, c.line, c.event_id HAVING count(*) > 1) bad
 WHERE bad.return_id = s.return_id
"""
_NO_LINES_SQL = """
DELETE FROM set_return s WHERE NOT EXISTS (SELECT 1 FROM ledger.return_line l WHERE l.return_id = s.return_id)
"""

# each line's events in the order the per-event path applies them: the return's milestones first, by time
# (then arrival), then the line's own events by lifecycle.replay's key (time, lifecycle order, event id)
_STEPS_SQL = f"""
CREATE TEMP TABLE set_step ON COMMIT DROP AS
SELECT rid, ln, (row_number() OVER (PARTITION BY rid, ln
                                    ORDER BY phase, occurred_at, ord, eid COLLATE "C", raw_id))::int AS seq,
       raw_id, event_id, type, occurred_at, quantity, grade, disposition
  FROM (SELECT l.return_id AS rid, l.line AS ln, 0 AS phase, 0 AS ord, '' AS eid, c.raw_id, c.event_id,
               c.event_type AS type, c.occurred_at, c.quantity, c.grade, c.disposition
          FROM apply_candidate c JOIN set_return s USING (return_id)
          JOIN ledger.return_line l USING (return_id)
         WHERE c.event_type IN ('RETURN_CREATED', 'IN_TRANSIT')
        UNION ALL
        SELECT c.return_id, c.line, 1, {_ORDER_SQL}, c.event_id, c.raw_id, c.event_id, c.event_type,
               c.occurred_at, c.quantity, c.grade, c.disposition
          FROM apply_candidate c JOIN set_return s USING (return_id)
         WHERE c.event_type IN ('RECEIVED', 'GRADED', 'DISPOSITIONED')) x
"""

_WALK_SQL = f"""
CREATE TEMP TABLE set_walk ON COMMIT DROP AS
WITH RECURSIVE walk (rid, ln, seq, state, qa, qr, grade, disp, frs, tos, acts, raw_id, event_id, type,
                     occurred_at) AS (
    SELECT l.return_id, l.line, 0, l.state, l.quantity_announced, l.quantity_received, l.grade,
           l.disposition, NULL::text[], NULL::text[], NULL::text[], NULL::bigint, NULL::text, NULL::text,
           NULL::timestamptz
      FROM ledger.return_line l JOIN set_return USING (return_id)
    UNION ALL
    SELECT w.rid, w.ln, e.seq, t.to_state, w.qa, {NEXT_FIELDS_SQL}, t.frs, t.tos, t.acts, e.raw_id,
           e.event_id, e.type, e.occurred_at
      FROM walk w JOIN set_step e ON e.rid = w.rid AND e.ln = w.ln AND e.seq = w.seq + 1
      JOIN set_transition t ON t.from_state = w.state AND t.type = e.type AND t.cond = ({CONDITION_SQL})
)
SELECT * FROM walk
"""

# a return any of whose line-events has no row in the table (held, ignored, recounted, raised) goes back
_INCOMPLETE_SQL = """
DELETE FROM set_return s WHERE s.return_id IN (
    SELECT e.rid FROM set_step e LEFT JOIN set_walk w ON w.rid = e.rid AND w.ln = e.ln AND w.seq = e.seq
     WHERE w.rid IS NULL)
"""

_HISTORY_SQL = """
INSERT INTO ledger.line_history (return_id, line, from_state, to_state, event_id, cause, batch_id, at)
SELECT w.rid, w.ln, h.f, h.t, w.event_id, w.type, %(batch)s, %(at)s
  FROM set_walk w JOIN set_return s ON s.return_id = w.rid
 CROSS JOIN LATERAL unnest(w.frs, w.tos) WITH ORDINALITY AS h(f, t, n)
 WHERE w.seq > 0
 ORDER BY w.rid, w.ln, w.seq, h.n
"""

_OUTCOMES_SQL = """
INSERT INTO ledger.event_outcome (raw_id, status, detail, batch_id, decided_at)
SELECT c.raw_id, 'APPLIED', NULL, %(batch)s, %(at)s
  FROM apply_candidate c JOIN set_return s USING (return_id)
 ORDER BY c.raw_id
"""

# the lines a transition moved: their last state, and (as the per-event path keeps them) the time of the
# receipt and of the disposition that moved them, and the last event that moved them
_LINES_SQL = """
UPDATE ledger.return_line l
   SET state = f.state, quantity_received = f.qr, grade = f.grade, disposition = f.disp,
       received_at = COALESCE(m.rat, l.received_at), dispositioned_at = COALESCE(m.dat, l.dispositioned_at),
       updated_at = %(at)s, last_event_id = m.ev
  FROM (SELECT w.rid, w.ln,
               (array_agg(w.occurred_at ORDER BY w.seq DESC) FILTER (WHERE w.type = 'RECEIVED'))[1] AS rat,
               (array_agg(w.occurred_at ORDER BY w.seq DESC)
                    FILTER (WHERE w.type = 'DISPOSITIONED'))[1] AS dat,
               (array_agg(w.event_id ORDER BY w.seq DESC))[1] AS ev
          FROM set_walk w JOIN set_return s ON s.return_id = w.rid
         WHERE cardinality(w.frs) > 0
         GROUP BY w.rid, w.ln) m
  JOIN set_final f ON f.rid = m.rid AND f.ln = m.ln
 WHERE l.return_id = m.rid AND l.line = m.ln
"""

# each line's state after its last step
_FINAL_SQL = """
CREATE TEMP TABLE set_final ON COMMIT DROP AS
SELECT DISTINCT ON (w.rid, w.ln) w.rid, w.ln, w.state, w.qa, w.qr, w.grade, w.disp
  FROM set_walk w JOIN set_return s ON s.return_id = w.rid
 ORDER BY w.rid, w.ln, w.seq DESC
"""

# the lines that earned an Amazon action: their final state and what a submission needs of them
_ACTIONS_SQL = """
SELECT a.rid, a.ln, a.kinds, f.state, f.qa, f.qr, f.grade, f.disp, l.sku, k.asin, k.unit_cost,
       o.returns_notice
  FROM (SELECT w.rid, w.ln, array_agg(x.kind ORDER BY w.seq) AS kinds
          FROM set_walk w JOIN set_return s ON s.return_id = w.rid
         CROSS JOIN LATERAL unnest(w.acts) AS x(kind)
         GROUP BY w.rid, w.ln) a
  JOIN set_final f ON f.rid = a.rid AND f.ln = a.ln
  JOIN ledger.return_line l ON l.return_id = a.rid AND l.line = a.ln
  JOIN ledger.return_order o ON o.return_id = a.rid
  LEFT JOIN ledger.sku k ON k.sku = l.sku
"""


def apply_common(conn, policy, blocked: str, *, batch_id: str, at: datetime) -> dict:
    """Apply the returns whose events are all common transitions; names them in the temp table
    ``set_return``. Returns the counts, and under ``actions``/``lines``/``info`` what the submissions of
    these lines need (as ``write_submissions`` takes them)."""
    conn.execute("""CREATE TEMP TABLE set_transition (from_state text, type text, cond text, to_state text,
                    frs text[], tos text[], acts text[]) ON COMMIT DROP""")
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO set_transition VALUES (%s, %s, %s, %s, %s, %s, %s)", common_transitions(policy)
        )
    conn.execute(_RETURNS_SQL)
    conn.execute(_NOT_COMMON_SQL.format(blocked=blocked))
    conn.execute(_NO_LINES_SQL)
    conn.execute("ANALYZE set_return")
    conn.execute(_STEPS_SQL)
    conn.execute("CREATE INDEX ON set_step (rid, ln, seq)")
    conn.execute(_WALK_SQL)
    conn.execute(_INCOMPLETE_SQL)
    conn.execute("ANALYZE set_return")
    params = {"batch": batch_id, "at": at}
    conn.execute(_FINAL_SQL)
    history = conn.execute(_HISTORY_SQL, params).rowcount
    events = conn.execute(_OUTCOMES_SQL, params).rowcount
    changed = conn.execute(_LINES_SQL, params).rowcount
    actions: list[tuple[str, int, ActionKind]] = []
    lines: dict[tuple[str, int], lifecycle.LineView] = {}
    info: dict[tuple[str, int], tuple] = {}
    for rid, ln, kinds, state, qa, qr, grade, disp, sku, asin, cost, notice in conn.execute(_ACTIONS_SQL):
        actions.extend((rid, ln, _ACTIONS[k]) for k in kinds)
        lines[(rid, ln)] = lifecycle.LineView(_STATES[state], qa, qr, grade, disp)
        info[(rid, ln)] = (sku, asin, cost, notice)
    return {
        "set_applied": events,
        "set_lines_changed": changed,
        "set_history": history,
        "actions": actions,
        "lines": lines,
        "info": info,
    }
