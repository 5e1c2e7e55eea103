"""What reconciliation puts in the exception queue: CREDIT_MISSING, CREDIT_MISMATCH, DARK_RETURN and
QUANTITY_MISMATCH, raised once per subject, and the open ones a run shows are settled.

A subject that already has an exception of the type (open, resolved or dismissed) is not raised again: a
person who resolved or dismissed it made a decision; the report keeps showing the status.
"""

from __future__ import annotations

from datetime import datetime

from returnledger.exception_queue.queue import resolve_open
from returnledger.models import ExceptionType
from returnledger.reconciliation.dark_returns import SETTLED_DARK_SQL
from returnledger.reference.owners import default_owners


def _not_raised(type_: str) -> str:
    """No exception of the type (open, resolved or dismissed) was ever raised for the row's subject."""
    return (
        f"NOT EXISTS (SELECT 1 FROM ledger.exception e WHERE e.type = '{type_}'"
        " AND e.subject_key = r.row_key)"
    )


def _text(expr: str) -> str:
    """``expr`` as Python's f-string shows it (a NULL as 'None')."""
    return f"COALESCE(({expr})::text, 'None')"


def _amount(expr: str) -> str:
    """An amount as money.money_text writes it (to the penny), 'n/a' when there is none."""
    return f"COALESCE(round({expr}, 2)::text, 'n/a')"


# Each finding is a row (type, subject, return, line, sku, Amazon row, detail), raised in one INSERT; the
# detail is the exception's text. Parameters: as_of_day ('YYYY-MM-DD') and window_text, as the run prints
# them.
_CREDIT_MISMATCH_SQL = f"""
SELECT 'CREDIT_MISMATCH', r.row_key, r.return_id, r.line, r.sku, r.amazon_return_id,
       format('Amazon charged %%s %%s for returns notice %%s / %%s (export row %%s) but the accepted credit '
              'note %%s credited %%s',
              {_amount("r.charged_amount")}, COALESCE(r.currency, ''), {_text("r.returns_notice")},
              {_text("r.sku")}, {_text("r.amazon_return_id")}, {_text("r.credit_note_id")},
              {_amount("r.credited_amount")})
  FROM candidates r
 WHERE r.recon_status = 'CREDIT_MISMATCH' AND {_not_raised("CREDIT_MISMATCH")}
"""

_CREDIT_MISSING_SQL = f"""
SELECT 'CREDIT_MISSING', r.row_key, r.return_id, r.line, r.sku, NULL,
       format('%%s unit(s) of %%s (returns notice %%s) were dispositioned %%s days before %%s and Amazon has '
              'not accepted a credit within the %%s-day window: %%s',
              {_text("r.quantity_received")}, {_text("r.sku")}, {_text("r.returns_notice")},
              {_text("floor(extract(epoch FROM (%(as_of)s - l.dispositioned_at)) / 86400)::bigint")},
              %(as_of_day)s::text, %(window_text)s::text,
              CASE WHEN r.amazon_status = 'ACCEPTED'
                   THEN format('the ledger marks credit note %%s accepted, but Amazon never confirmed it '
                               '(no Success of its transaction and no duplicate refusal naming it in the '
                               'send log)', {_text("r.credit_note_id")})
                   WHEN COALESCE(r.credit_note_id, '') <> ''
                   THEN format('credit note %%s is %%s', r.credit_note_id, {_text("r.amazon_status")})
                   ELSE 'no credit note was sent' END)
  FROM candidates r
  JOIN ledger.return_line l ON l.return_id = r.return_id AND l.line = r.line
 WHERE r.recon_status = 'CREDIT_MISSING' AND {_not_raised("CREDIT_MISSING")}
"""

_DARK_EXC_SQL = f"""
SELECT 'DARK_RETURN', r.row_key, NULL, NULL, r.sku, r.row_key,
       format('Amazon return %%s (%%s label, returns notice %%s, RMA %%s, %%s x %%s, returned %%s, file %%s) '
              'has no ReBound return; check the parcel at the warehouse',
              r.row_key, {_text("a.label")}, {_text("r.returns_notice")}, COALESCE(NULLIF(r.rma_id, ''), '-'),
              {_text("r.amazon_quantity")}, {_text("r.sku")}, {_text("to_char(a.returned_at, 'YYYY-MM-DD')")},
              {_text("a.source_file")})
  FROM candidates r
  JOIN ledger.amazon_return a ON a.amazon_return_id = r.amazon_return_id
 WHERE r.recon_status = 'DARK_RETURN' AND {_not_raised("DARK_RETURN")}
"""

# Received units (all lines of a returns notice and SKU, once all are received: the row's received_total,
# counted by the match in the same pass) against Amazon's quantity for that notice and SKU.
_QUANTITY_SQL = f"""
SELECT 'QUANTITY_MISMATCH', r.row_key, r.return_id, r.line, r.sku, r.amazon_return_id,
       format('%%s unit(s) of %%s received for returns notice %%s, Amazon''s returns export %%s shows %%s',
              r.received_total, {_text("r.sku")}, {_text("r.returns_notice")}, {_text("r.amazon_return_id")},
              r.amazon_quantity)
  FROM candidates r
 WHERE r.return_id IS NOT NULL AND r.amazon_quantity IS NOT NULL AND r.received_total <> r.amazon_quantity
   AND {_not_raised("QUANTITY_MISMATCH")}
"""

# The findings raised in one statement, type by type as before (the order of the exception ids); the
# queue's partial unique index keeps one open exception per type and subject. One scan of the period's
# results picks the rows that can raise anything. Returns, per type found, how many were new to the queue.
_RAISE_SQL = f"""
WITH candidates AS MATERIALIZED (
    SELECT * FROM ledger.recon_result r
     WHERE r.period = %(key)s
       AND (r.recon_status IN ('CREDIT_MISMATCH', 'CREDIT_MISSING', 'DARK_RETURN')
            OR (r.return_id IS NOT NULL AND r.amazon_quantity IS NOT NULL
                AND r.received_total <> r.amazon_quantity))
), found (type, subject_key, return_id, line, sku, amazon_return_id, detail) AS MATERIALIZED (
    {_CREDIT_MISMATCH_SQL}
    UNION ALL {_CREDIT_MISSING_SQL}
    UNION ALL {_DARK_EXC_SQL}
    UNION ALL {_QUANTITY_SQL}
), opened AS (
    INSERT INTO ledger.exception (type, owner, subject_key, return_id, line, sku, amazon_return_id,
                                  detail, opened_at, opened_by_batch)
    SELECT f.type, COALESCE(o.owner, d.owner), f.subject_key, f.return_id, f.line, f.sku, f.amazon_return_id,
           f.detail, %(at)s, %(batch)s
      FROM found f
      LEFT JOIN ledger.owner_team o ON o.exception_type = f.type
      LEFT JOIN unnest(%(owner_types)s::text[], %(owners)s::text[]) AS d(type, owner) ON d.type = f.type
    ON CONFLICT (type, subject_key) WHERE status = 'open' DO NOTHING
    RETURNING type
)
SELECT t.type, (SELECT count(*) FROM opened o WHERE o.type = t.type)
  FROM (SELECT DISTINCT type FROM found) t ORDER BY t.type
"""

# Open CREDIT_MISSING exceptions that this run shows are settled: the credit was accepted after all.
_SETTLED_CREDIT_MISSING_SQL = """
SELECT r.row_key FROM ledger.recon_result r
  JOIN ledger.exception e ON e.type = 'CREDIT_MISSING' AND e.status = 'open' AND e.subject_key = r.row_key
 WHERE r.period = %(key)s AND r.return_id IS NOT NULL AND r.recon_status IN ('MATCHED', 'CREDIT_MISMATCH')
"""

# After a re-match (reconciliation.incremental), the same for fewer exceptions, without probing the period's
# rows for every open one (43k probes, 0.45 s, at 1M lines): those of the rows the run inserted or updated
# (a row it left as it was had the same status in the last run, which settled what it could), and those
# written since the last run's snapshot (``%(since)s``), which another run (another result key) may have
# opened on a row already matched here. A row's xmin is made a full transaction id by its age from this
# transaction's own (``greatest``: a frozen row's age is the largest int4, from long ago).
_WRITTEN_SINCE = """
    NOT pg_visible_in_snapshot(greatest(pg_current_xact_id()::text::bigint - age(e.xmin), 3)::text::xid8,
                               %(since)s::pg_snapshot)
"""
# The exceptions come first (materialised): a close's partition, just copied from the rolling check and not
# analyzed, was otherwise read whole (807k rows, 1.8 s) to probe the exceptions by subject.
_SETTLED_CREDIT_MISSING_REMATCH_SQL = f"""
WITH since AS MATERIALIZED (
    SELECT e.subject_key FROM ledger.exception e
     WHERE e.type = 'CREDIT_MISSING' AND e.status = 'open' AND {_WRITTEN_SINCE}
)
SELECT r.row_key FROM pg_temp.recon_touched t
  JOIN ledger.recon_result r ON r.period = %(key)s AND r.row_key = t.row_key
  JOIN ledger.exception e ON e.type = 'CREDIT_MISSING' AND e.status = 'open' AND e.subject_key = r.row_key
 WHERE t.kind <> 'gone' AND r.return_id IS NOT NULL AND r.recon_status IN ('MATCHED', 'CREDIT_MISMATCH')
UNION
SELECT r.row_key FROM since x
  JOIN ledger.recon_result r ON r.period = %(key)s AND r.row_key = x.subject_key
 WHERE r.return_id IS NOT NULL AND r.recon_status IN ('MATCHED', 'CREDIT_MISMATCH')
"""

# A re-match (reconciliation.incremental) reads only the rows it inserted or updated: a row it left as it
# was raised what it calls for when it was written, and a subject once raised is not raised again. They are
# found from the run's row keys, one by one (OFFSET 0): a close's partition, just copied from the rolling
# check and not analyzed, was otherwise read whole to find them (0.5 s at 1M rows for none).
_RAISE_TOUCHED_SQL = _RAISE_SQL.replace(
    "SELECT * FROM ledger.recon_result r\n     WHERE r.period = %(key)s\n",
    "SELECT r.* FROM pg_temp.recon_touched t\n"
    "     CROSS JOIN LATERAL (SELECT * FROM ledger.recon_result r\n"
    "                          WHERE r.period = %(key)s AND r.row_key = t.row_key OFFSET 0) r\n"
    "     WHERE t.kind <> 'gone'\n",
    1,
)
if _RAISE_TOUCHED_SQL == _RAISE_SQL:
    raise AssertionError("the findings' candidate scan changed shape: review _RAISE_TOUCHED_SQL")


def raise_found(
    conn, params: dict, *, as_of: datetime, window_days, touched_only: bool = False
) -> dict[str, int]:
    """Raise what a period's fresh results call for; returns, per type found, how many were new to the
    queue. ``params``: the reconciliation's query parameters (the run's batch id among them, ``batch``).
    ``touched_only``: only the rows this run inserted or updated (a rolling check's re-match)."""
    owners = default_owners()
    rows = conn.execute(
        _RAISE_TOUCHED_SQL if touched_only else _RAISE_SQL,
        {
            **params,
            "as_of_day": f"{as_of:%Y-%m-%d}",
            "window_text": str(window_days),
            "at": as_of,
            "owner_types": list(owners),
            "owners": [o.owner for o in owners.values()],
        },
    ).fetchall()
    return {t: n for t, n in rows}


def resolve_settled(conn, params: dict, *, at: datetime, batch_id: str, since: str | None = None) -> int:
    """Resolve open CREDIT_MISSING and DARK_RETURN exceptions this run shows are settled; returns how many.
    ``since``: after a re-match, the snapshot of the run it built on (the CREDIT_MISSING exceptions read are
    then ``_SETTLED_CREDIT_MISSING_REMATCH_SQL``'s)."""
    actor = f"reconciliation:{batch_id}"
    if since is None:
        settled = [r[0] for r in conn.execute(_SETTLED_CREDIT_MISSING_SQL, params)]
    else:
        settled = [
            r[0] for r in conn.execute(_SETTLED_CREDIT_MISSING_REMATCH_SQL, {**params, "since": since})
        ]
    resolved = resolve_open(
        conn,
        ExceptionType.CREDIT_MISSING,
        settled,
        at=at,
        actor=actor,
        resolution="Amazon accepted the credit note",
    )
    found = [r[0] for r in conn.execute(SETTLED_DARK_SQL, params)]
    resolved += resolve_open(
        conn,
        ExceptionType.DARK_RETURN,
        found,
        at=at,
        actor=actor,
        resolution="a ReBound return now exists for this returns notice and SKU",
    )
    return resolved
