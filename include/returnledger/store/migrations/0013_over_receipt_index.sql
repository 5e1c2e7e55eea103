-- apply looks for resolved over-receipts (a chosen credit quantity, no credit yet) on every run: a
-- partial index keeps that a lookup of the few such lines instead of a scan of every return line
CREATE INDEX IF NOT EXISTS return_line_credit_quantity_idx
    ON ledger.return_line (return_id, line) WHERE credit_quantity IS NOT NULL;
