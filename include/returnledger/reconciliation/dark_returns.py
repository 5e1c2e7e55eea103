"""Dark returns: Amazon return records (prepaid labels) with no ReBound return, and the post-hoc ReBound
returns created for them so the warehouse can process the parcel."""

from __future__ import annotations

import logging
from datetime import datetime

from returnledger.store import audit
from returnledger.store.db import connect

log = logging.getLogger(__name__)

#: a return order that belongs to ReBound's own flow (not a post-hoc record made for a dark return)
REBOUND_ORDER = """
    o.source = 'REBOUND' AND o.amazon_return_id IS NULL
    AND NOT EXISTS (SELECT 1 FROM ledger.amazon_return x WHERE x.linked_return_id = o.return_id)
"""

#: an Amazon record ``ar`` whose returns notice and SKU has a ReBound return line
_HAS_REBOUND_RETURN = f"""
EXISTS (SELECT 1 FROM ledger.return_order o JOIN ledger.return_line l ON l.return_id = o.return_id
         WHERE o.returns_notice = ar.returns_notice AND l.sku = ar.sku AND {REBOUND_ORDER})
"""

# Amazon return records with no ReBound return line for their returns notice and SKU that the run covers
# (scenarios/README.md, "Periods"): returned before the period's end and since the earlier close's month,
# or returned before it but imported after that close (a late export row); a dark return an earlier close
# reported is not reported again. Still reported after a post-hoc record exists. The rows in the column
# order of ledger.recon_result (reconciliation.match.RESULT_COLUMNS).
# The test is an anti-join the planner plans by the row counts: a hash anti-join when the run has many Amazon
# rows (1M x 1M: 0.7 s, where asking it per Amazon row through the notice index took 5.5 s), index lookups
# when few. It needs the inputs' statistics: with none (a ledger never analyzed) it joined every Amazon row of
# a 2,000-returns month with every ReBound line ever kept (119M comparisons, 8.8 s instead of 0.06 s), which
# is why reconcile first analyzes the inputs with missing or stale statistics (reconciliation.planner_stats).
DARK_ROWS_SQL = f"""
SELECT %(key)s, ar.amazon_return_id, NULL, NULL, ar.amazon_return_id, ar.sku, ar.asin, NULL, NULL, NULL,
       NULL, NULL, NULL, NULL, NULL, 'DARK_RETURN', %(as_of)s,
       ar.returns_notice, ar.rma_id, ar.vret, ar.quantity, ar.charged_amount, ar.linked_return_id, %(batch)s,
       NULL, %(report_period)s, ar.returned_at, NULL::numeric
  FROM ledger.amazon_return ar
 WHERE ((ar.returned_at >= %(since_day)s AND ar.returned_at < %(end_day)s)
        OR (ar.returned_at < %(since_day)s AND ar.imported_at > %(prior_as_of)s))
   AND NOT {_HAS_REBOUND_RETURN}
   AND NOT EXISTS (SELECT 1 FROM ledger.recon_carry k
                    WHERE k.row_key = ar.amazon_return_id AND k.first_period <= %(prior)s)
"""

#: open DARK_RETURN exceptions that a ReBound return now explains (few: only the open ones are read)
SETTLED_DARK_SQL = f"""
SELECT ar.amazon_return_id FROM ledger.exception e
  JOIN ledger.amazon_return ar ON ar.amazon_return_id = e.subject_key
 WHERE e.type = 'DARK_RETURN' AND e.status = 'open'
   AND {_HAS_REBOUND_RETURN}
"""

_UNLINKED_DARK_SQL = f"""
SELECT ar.amazon_return_id, ar.returns_notice, ar.rma_id, ar.vret, ar.sku, ar.asin, ar.quantity,
       ar.returned_at
  FROM ledger.amazon_return ar
 WHERE ar.linked_return_id IS NULL
   AND EXISTS (SELECT 1 FROM ledger.exception e
                WHERE e.type = 'DARK_RETURN' AND e.subject_key = ar.amazon_return_id)
   AND NOT EXISTS (SELECT 1 FROM ledger.exception e
                    WHERE e.type = 'DARK_RETURN' AND e.subject_key = ar.amazon_return_id
                      AND e.status = 'dismissed')
   AND NOT {_HAS_REBOUND_RETURN}
 ORDER BY ar.amazon_return_id
"""

_LINK_SQL = """
WITH o AS (
    INSERT INTO ledger.return_order (return_id, created_at, returns_notice, rma_id, vret, source,
                                     amazon_return_id, payload)
    VALUES (%(return_id)s, %(at)s, %(notice)s, %(rma)s, %(vret)s, 'POST_HOC', %(arid)s, %(payload)s)
    ON CONFLICT (return_id) DO NOTHING
)
UPDATE ledger.amazon_return SET linked_return_id = %(return_id)s
 WHERE amazon_return_id = %(arid)s AND linked_return_id IS NULL
"""


def create_post_hoc_returns(dsn: str, rebound_client, *, at: datetime, batch_id: str) -> int:
    """Create a ReBound return for every dark return not linked yet; returns how many were linked.

    Only Amazon records that reconciliation flagged (a DARK_RETURN exception
    that nobody dismissed) and that still have no ReBound return qualify.
    ReBound's post-hoc endpoint is idempotent on the Amazon return id and each
    link is committed on its own, so a retry after a failure resumes where it
    stopped and never creates a record twice.
    """
    from psycopg.types.json import Jsonb

    linked = 0
    with connect(dsn) as conn:
        todo = conn.execute(_UNLINKED_DARK_SQL).fetchall()
        conn.commit()
        for arid, notice, rma, vret, sku, asin, qty, returned_at in todo:
            answer = rebound_client.create_post_hoc_return(
                amazon_return_id=arid,
                returns_notice=notice,
                rma_id=rma,
                sku=sku,
                asin=asin,
                quantity=qty,
                returned_at=returned_at.isoformat() if returned_at else None,
            )
            return_id = str(answer["return_id"])
            payload = Jsonb({"batch_id": batch_id, "rebound": answer})
            with conn.transaction():
                cur = conn.execute(
                    _LINK_SQL,
                    {
                        "return_id": return_id,
                        "at": at,
                        "notice": notice,
                        "rma": rma,
                        "vret": vret or None,
                        "arid": arid,
                        "payload": payload,
                    },
                )
                if cur.rowcount:
                    linked += 1
                    audit.record_one(
                        conn,
                        at=at,
                        actor=f"reconciliation:{batch_id}",
                        action="create_post_hoc_return",
                        subject=arid,
                        detail={"return_id": return_id},
                    )
    log.info("post-hoc ReBound returns linked: %s of %s dark returns", linked, len(todo))
    return linked
