-- Console lookup (issue 25): the indexes "Find a return", the return's story and the owner teams' queues
-- read through (returnledger.console.story, returnledger.console.teams).

-- Find a return by any of its references (return id and returns notice have theirs already).
CREATE INDEX IF NOT EXISTS return_order_order_reference_idx ON ledger.return_order (order_reference);
CREATE INDEX IF NOT EXISTS return_order_rma_idx ON ledger.return_order (rma_id);
CREATE INDEX IF NOT EXISTS return_order_vret_idx ON ledger.return_order (vret);
-- by SKU: the newest returns of a SKU first, without sorting every line of a popular SKU
CREATE INDEX IF NOT EXISTS return_line_sku_return_idx ON ledger.return_line (sku, return_id);

-- The story of one return: its credit notes (the send log is found through the note id) and its
-- line history in time order.
CREATE INDEX IF NOT EXISTS credit_note_return_idx ON ledger.credit_note (return_id);

-- A team's queue and the navigation's counts: open exceptions of an owner team with the type (for the
-- SLA) and the opening time, read from the index alone.
CREATE INDEX IF NOT EXISTS exception_open_team_idx ON ledger.exception (owner, type, opened_at)
    WHERE status = 'open';
