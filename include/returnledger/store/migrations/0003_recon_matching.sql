-- Reconciliation: which export period an Amazon record came from, the Amazon
-- and returns-notice columns the month-end report carries, and the indexes
-- the set-based matching needs at a million lines.

-- The export file an Amazon record was last imported from names its period
-- ('vendor_central_returns_2026-10.csv' -> '2026-10'); dark returns are
-- reported in that period.
ALTER TABLE ledger.amazon_return ADD COLUMN export_period text;
UPDATE ledger.amazon_return
   SET export_period = substring(source_file FROM '(\d{4}-\d{2})')
 WHERE export_period IS NULL;
CREATE INDEX amazon_return_period_idx ON ledger.amazon_return (export_period);
CREATE INDEX amazon_return_linked_idx ON ledger.amazon_return (linked_return_id)
    WHERE linked_return_id IS NOT NULL;

-- A period's lines are the lines of the return orders created in it.
CREATE INDEX return_order_created_idx ON ledger.return_order (created_at);
CREATE INDEX return_order_post_hoc_idx ON ledger.return_order (amazon_return_id)
    WHERE amazon_return_id IS NOT NULL;

-- Report columns beyond the scenario contract: the Amazon references finance
-- quotes when chasing a credit, and Amazon's own figures for the row.
ALTER TABLE ledger.recon_result
    ADD COLUMN returns_notice     text,
    ADD COLUMN rma_id             text,
    ADD COLUMN vret               text,
    ADD COLUMN amazon_quantity    integer,
    ADD COLUMN charged_amount     numeric(12, 2),
    ADD COLUMN post_hoc_return_id text,
    ADD COLUMN batch_id           text;
CREATE INDEX recon_result_status_idx ON ledger.recon_result (period, recon_status);

-- "Has this subject ever been raised?" (any status) when reconciliation
-- decides whether to raise again.
CREATE INDEX exception_type_subject_idx ON ledger.exception (type, subject_key);
