"""The planner's statistics of the tables the match reads, made fresh before a run plans its queries.

A ledger whose inputs were never analyzed (a server with autovacuum off, as this project's CI and bench
server) or that a large load changed since (a month's export, a month of returns) plans the match from
defaults: the close's dark-return anti-join then estimated one ReBound order and compared every Amazon
row of the run with every ReBound line ever kept (119M comparisons, 8.8 s for a 2,000-returns month after
twelve months, 0.06 s with statistics), and the re-match's index lookups copied a month's credit
submissions by a nested loop over all of them (10.4 s). Fresh statistics cost one catalog query.
"""

from __future__ import annotations

from returnledger.reconciliation import results

#: the tables the match reads
MATCH_INPUTS = (
    "ledger.return_order", "ledger.return_line", "ledger.amazon_submission", "ledger.credit_note",
    "ledger.amazon_return", "ledger.recon_carry", "ledger.recon_late_order", "ledger.exception",
    "ledger.held_event", "ledger.sku",
)  # fmt: skip
# Those of them whose statistics are missing or stale, by autovacuum's own rule (more rows written since the
# last ANALYZE than 50 + 10 % of the table)
_STALE_SQL = """
SELECT quote_ident(s.schemaname) || '.' || quote_ident(s.relname)
  FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
 WHERE s.relid = ANY(%(tables)s::regclass[])
   AND (COALESCE(s.last_analyze, s.last_autoanalyze) IS NULL
        OR s.n_mod_since_analyze > 50 + 0.1 * greatest(c.reltuples, 0)
        -- analyzed, but its statistics are gone (the ANALYZE of a run that then rolled back)
        OR (c.reltuples <> 0
            AND NOT EXISTS (SELECT 1 FROM pg_stats p
                             WHERE p.schemaname = s.schemaname AND p.tablename = s.relname)))
"""


def refresh(conn) -> list[str]:
    """ANALYZE the match's inputs whose statistics are missing or stale; returns the tables analyzed."""
    stale = [r[0] for r in conn.execute(_STALE_SQL, {"tables": list(MATCH_INPUTS)}).fetchall()]
    for table in stale:
        results.analyze(conn, table)
    return stale
