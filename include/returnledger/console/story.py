"""Find a return and tell its whole story: the queries behind the console's "Find a return" pages.

Plain functions taking an open psycopg connection (the console's routes, tests and the bench call them):

* ``search_returns(conn, text, limit=50)`` -> list of dicts, one per return matching ``text`` as its
  return id, order reference, returns notice, RMA, VRET, a SKU of one of its lines, one of its credit-note
  ids or the Amazon return id of a post-hoc (dark) return; newest first, at most ``limit``. Exact match;
  when nothing matches, the text in capitals is tried once more (people type ``rma-71``). Each row has
  ``matched_on`` (which references matched), ``lines``, ``states`` and ``skus``.
* ``return_story(conn, return_id)`` -> dict with ``order``, ``lines``, ``history``, ``events`` (every
  ReBound event of the return as received, with its raw payload and ``did``: what the ledger did with it),
  ``holds``, ``exceptions`` (open and closed, with ``audit``), ``credit_notes``, ``submissions``
  (credit notes and inventory pushes, with Amazon's transaction status), ``send_log``, ``recon`` (each
  close's and the latest daily check's status per line) and ``timeline`` (all of it in time order, each
  entry said in plain words). Raises ``ReturnNotFound`` (a LookupError) for an unknown return.

Every query reads through an index (migration 0021_console_lookup and earlier ones): one return's rows
by ``return_id``, the send log by credit-note id, the reconciliation rows by (period, row key) in the
partitions of the closed months and of the latest daily check.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from returnledger.console.glossary import say
from returnledger.exception_queue.queue import exception_columns, exception_subject
from returnledger.exception_queue.sla import SLA_CTE, sla_params


class ReturnNotFound(LookupError):
    """No return order (and no ReBound event) has this return id."""


_SEARCH_SQL = """
WITH hit (return_id, matched_on) AS (
    (SELECT return_id, 'return id' FROM ledger.return_order WHERE return_id = %(t)s)
    UNION ALL
    (SELECT return_id, 'order reference' FROM ledger.return_order WHERE order_reference = %(t)s
      ORDER BY created_at DESC NULLS LAST LIMIT %(n)s)
    UNION ALL
    (SELECT return_id, 'returns notice' FROM ledger.return_order WHERE returns_notice = %(t)s
      ORDER BY created_at DESC NULLS LAST LIMIT %(n)s)
    UNION ALL
    (SELECT return_id, 'RMA' FROM ledger.return_order WHERE rma_id = %(t)s
      ORDER BY created_at DESC NULLS LAST LIMIT %(n)s)
    UNION ALL
    (SELECT return_id, 'VRET' FROM ledger.return_order WHERE vret = %(t)s
      ORDER BY created_at DESC NULLS LAST LIMIT %(n)s)
    UNION ALL
    (SELECT DISTINCT return_id, 'SKU' FROM ledger.return_line WHERE sku = %(t)s
      ORDER BY return_id DESC LIMIT %(n)s)
    UNION ALL
    (SELECT return_id, 'credit note' FROM ledger.credit_note WHERE credit_note_id = %(t)s)
    UNION ALL
    (SELECT return_id, 'Amazon return' FROM ledger.return_order WHERE amazon_return_id = %(t)s)
), grouped AS (
    SELECT return_id, array_agg(DISTINCT matched_on ORDER BY matched_on) AS matched_on
      FROM hit GROUP BY return_id
)
SELECT o.return_id, o.order_reference, o.returns_notice, o.rma_id, o.vret, o.created_at, o.source,
       g.matched_on, l.lines, l.states, l.skus
  FROM grouped g
  JOIN ledger.return_order o USING (return_id)
  CROSS JOIN LATERAL (
      SELECT count(*) AS lines, array_agg(DISTINCT state ORDER BY state) AS states,
             array_agg(DISTINCT sku ORDER BY sku) AS skus
        FROM ledger.return_line rl WHERE rl.return_id = o.return_id) l
 ORDER BY o.created_at DESC NULLS LAST, o.return_id DESC
 LIMIT %(n)s
"""


def search_returns(conn: psycopg.Connection, text: str, limit: int = 50) -> list[dict]:
    """The returns ``text`` names by any of their references, newest first (see the module docstring)."""
    text = (text or "").strip()
    if not text:
        return []
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(_SEARCH_SQL, {"t": text, "n": limit}).fetchall()
        if not rows and text.upper() != text:
            rows = cur.execute(_SEARCH_SQL, {"t": text.upper(), "n": limit}).fetchall()
    return rows


_ORDER_SQL = """
SELECT return_id, order_reference, created_at, returns_notice, rma_id, vret, source, amazon_return_id
  FROM ledger.return_order WHERE return_id = %(rid)s
"""
_LINES_SQL = """
SELECT line, sku, reason, quantity_announced, quantity_received, credit_quantity, grade, disposition, state,
       received_at, dispositioned_at, updated_at
  FROM ledger.return_line WHERE return_id = %(rid)s ORDER BY line
"""
_HISTORY_SQL = """
SELECT history_id, line, from_state, to_state, event_id, cause, batch_id, at, detail
  FROM ledger.line_history WHERE return_id = %(rid)s ORDER BY at, history_id
"""
_EVENTS_SQL = """
SELECT r.raw_id, r.event_key, r.event_id, r.event_type, r.line, r.occurred_at, r.delivered_at,
       r.received_at, r.batch_id, r.deliveries, r.payload, r.body_problem,
       encode(r.body, 'escape') AS body_as_received,
       COALESCE(o.status, 'NEW') AS outcome, o.detail AS outcome_detail, o.decided_at,
       v.exception_type AS failed_check, v.detail AS failure_detail,
       c.raw_id IS NOT NULL AS in_conflict, c.chosen AS conflict_chosen, c.decided_by AS conflict_decided_by,
       h.reason AS held_for, h.exception_id AS held_by_exception
  FROM ledger.raw_event r
  LEFT JOIN ledger.event_outcome o USING (raw_id)
  LEFT JOIN ledger.validation_failure v USING (raw_id)
  LEFT JOIN ledger.event_conflict c USING (raw_id)
  LEFT JOIN ledger.held_event h USING (raw_id)
 WHERE r.return_id = %(rid)s
 ORDER BY r.delivered_at NULLS LAST, r.raw_id
"""
_HOLDS_SQL = """
SELECT raw_id, line, reason, exception_id, held_at FROM ledger.held_event
 WHERE return_id = %(rid)s ORDER BY held_at, raw_id
"""
_EXCEPTIONS_SQL = f"""
WITH {SLA_CTE}
SELECT {exception_columns("e")}, sla.sla_days, sla.what_to_do
  FROM ledger.exception e LEFT JOIN sla ON sla.type = e.type
 WHERE e.return_id = %(rid)s
    OR (e.type = 'DARK_RETURN' AND e.subject_key = %(amazon_return_id)s)
 ORDER BY e.opened_at, e.exception_id
"""
_AUDIT_SQL = """
SELECT audit_id, at, actor, action, subject, detail FROM ledger.audit_log
 WHERE subject = ANY(%(subjects)s) ORDER BY at, audit_id
"""
_NOTES_SQL = """
SELECT credit_note_id, returns_notice, created_at, created_batch, first_transaction_id, held_transaction_id,
       confirmed_by, confirmed_at
  FROM ledger.credit_note WHERE return_id = %(rid)s ORDER BY created_at, credit_note_id
"""
_SUBMISSIONS_SQL = """
SELECT submission_id, kind, line, sku, asin, quantity, unit_amount, currency, document_id, status,
       transaction_id, attempts, last_error, created_at, created_batch, submitted_at, resolved_at
  FROM ledger.amazon_submission WHERE return_id = %(rid)s ORDER BY line, kind
"""
_SEND_LOG_SQL = """
SELECT attempt_id, kind, document_id, attempt, http_status, outcome, transaction_id, errors, batch_id, at,
       sent_at
  FROM ledger.submission_attempt WHERE document_id = ANY(%(notes)s) ORDER BY attempt_id
"""
_RECON_SQL = """
SELECT r.period, r.row_key, r.line, r.recon_status, r.amount_owed, r.credited_quantity, r.credited_amount,
       r.currency, r.credit_note_id, r.amazon_status, r.first_reported, r.computed_at,
       c.version AS close_version, c.as_of AS close_as_of
  FROM ledger.recon_result r
  LEFT JOIN ledger.period_close c ON c.period = r.period AND c.reopened_at IS NULL
 WHERE r.period = ANY(%(periods)s) AND r.row_key = ANY(%(keys)s)
 ORDER BY r.period, r.line NULLS FIRST
"""
_MONTH = re.compile(r"^\d{4}-\d{2}$")


def recon_keys(conn: psycopg.Connection) -> list[str]:
    """The reconciliations a story shows: every month with results (a close) and the latest daily check."""
    from returnledger.reconciliation.results import partitions

    keys = list(partitions(conn))
    months = sorted(k for k in keys if _MONTH.match(k))
    daily = sorted(k for k in keys if k.startswith("daily:"))
    return months + daily[-1:]


def return_story(conn: psycopg.Connection, return_id: str) -> dict[str, Any]:
    """Everything the ledger knows about one return, each part in time order (see the module docstring)."""
    p: dict[str, Any] = {"rid": return_id}
    with conn.cursor(row_factory=dict_row) as cur:
        order = cur.execute(_ORDER_SQL, p).fetchone()
        events = cur.execute(_EVENTS_SQL, p).fetchall()
        if order is None and not events:
            raise ReturnNotFound(f"no return {return_id!r} in the ledger")
        p["amazon_return_id"] = order["amazon_return_id"] if order else None
        lines = cur.execute(_LINES_SQL, p).fetchall()
        history = cur.execute(_HISTORY_SQL, p).fetchall()
        holds = cur.execute(_HOLDS_SQL, p).fetchall()
        exceptions = cur.execute(_EXCEPTIONS_SQL, {**p, **sla_params()}).fetchall()
        subjects = [exception_subject(x["exception_id"]) for x in exceptions]
        audit = cur.execute(_AUDIT_SQL, {"subjects": subjects}).fetchall() if subjects else []
        notes = cur.execute(_NOTES_SQL, p).fetchall()
        submissions = cur.execute(_SUBMISSIONS_SQL, p).fetchall()
        note_ids = [n["credit_note_id"] for n in notes]
        send_log = cur.execute(_SEND_LOG_SQL, {"notes": note_ids}).fetchall() if note_ids else []
        keys = [f"{return_id}|{ln['line']}" for ln in lines] + (
            [p["amazon_return_id"]] if order and p["amazon_return_id"] else []
        )
        periods = recon_keys(conn) if keys else []
        recon = cur.execute(_RECON_SQL, {"periods": periods, "keys": keys}).fetchall() if periods else []
    for e in events:
        e["did"] = _did(e)
    for x in exceptions:
        x["audit"] = [a for a in audit if a["subject"] == exception_subject(x["exception_id"])]
    story = {
        "order": order,
        "lines": lines,
        "history": history,
        "events": events,
        "holds": holds,
        "exceptions": exceptions,
        "credit_notes": notes,
        "submissions": submissions,
        "send_log": send_log,
        "recon": recon,
    }
    story["timeline"] = timeline(story)
    return story


def _did(event: dict) -> str:
    """What the ledger did with one event, as a code of the glossary's ``event_outcome``."""
    if event["in_conflict"] and event["conflict_chosen"] is None:
        return "CONFLICT"
    return event["outcome"]


#: the order of things that happened at the same moment (one run does several)
_RANK = {
    k: i
    for i, k in enumerate(
        (
            "order",
            "event",
            "exception_opened",
            "transition",
            "credit_note",
            "attempt",
            "confirmed",
            "inventory",
            "exception_closed",
            "recon",
        )
    )
}


def _entry(at, kind: str, line, code, code_kind: str | None, words: str, ref: str = "") -> dict:
    return {
        "at": at,
        "kind": kind,
        "what": say("story", kind),
        "line": line,
        "code": code or "",
        "words": words if code_kind is None else " ".join(w for w in (say(code_kind, code), words) if w),
        "ref": ref,
    }


def timeline(story: dict) -> list[dict]:
    """Every dated thing of the story as one list in time order, each entry in plain words."""
    out: list[dict] = []
    order = story["order"]
    if order and order["created_at"]:
        out.append(_entry(order["created_at"], "order", None, order["source"], None, "return created"))
    for e in story["events"]:
        words = say("event_type", e["event_type"]) or "event without a readable type"
        out.append(
            _entry(
                e["delivered_at"] or e["received_at"],
                "event",
                e["line"],
                e["did"],
                None,
                f"{e['event_type'] or '?'}: {words}; {say('event_outcome', e['did'])}",
                f"event-{e['raw_id']}",
            )
        )
    for h in story["history"]:
        words = f"(was {h['from_state'] or 'new'}; because of {h['cause']})"
        out.append(_entry(h["at"], "transition", h["line"], h["to_state"], "line_state", words))
    for x in story["exceptions"]:
        ref = f"exception-{x['exception_id']}"
        out.append(
            _entry(x["opened_at"], "exception_opened", x["line"], x["type"], "exception_type", "", ref)
        )
        if x["resolved_at"]:
            how = f"by {x['resolved_by'] or '?'}: {x['resolution'] or ''}".rstrip(": ")
            out.append(
                _entry(
                    x["resolved_at"], "exception_closed", x["line"], x["status"], "exception_status", how, ref
                )
            )
    for n in story["credit_notes"]:
        ref = f"note-{n['credit_note_id']}"
        out.append(
            _entry(
                n["created_at"], "credit_note", None, n["credit_note_id"], None, "credit note created", ref
            )
        )
        if n["confirmed_at"]:
            out.append(
                _entry(n["confirmed_at"], "confirmed", None, n["confirmed_by"], "confirmed_by", "", ref)
            )
    for a in story["send_log"]:
        words = f"{a['document_id']}: HTTP {a['http_status'] or '-'}"
        out.append(
            _entry(
                a["at"], "attempt", None, a["outcome"], "attempt_outcome", words, f"note-{a['document_id']}"
            )
        )
    for s in story["submissions"]:
        if s["kind"] == "INVENTORY":
            words = f"{s['quantity']} x {s['sku']}"
            out.append(
                _entry(s["created_at"], "inventory", s["line"], s["status"], "submission_status", words)
            )
    for r in story["recon"]:
        words = f"{r['period']}: {say('recon_status', r['recon_status'])}"
        out.append(
            _entry(r["close_as_of"] or r["computed_at"], "recon", r["line"], r["recon_status"], None, words)
        )
    far = datetime.max.replace(tzinfo=UTC)
    return sorted(out, key=lambda e: (e["at"] or far, _RANK[e["kind"]]))
