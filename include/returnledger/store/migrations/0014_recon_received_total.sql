-- The units received for a line's returns notice and SKU, over all the period's lines of that notice and SKU,
-- once every one of them is received (NULL before). Finance reads it next to Amazon's quantity, and the
-- QUANTITY_MISMATCH finding compares the two without a second pass over a million result rows.
ALTER TABLE ledger.recon_result ADD COLUMN IF NOT EXISTS received_total integer;
