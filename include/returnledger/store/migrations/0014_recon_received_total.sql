-- The units received for a line's returns notice and SKU, over all the period's lines of that notice and SKU,
-- once every one of them is received (NULL before). The QUANTITY_MISMATCH finding compares it with Amazon's
-- quantity without a second pass over a million result rows.
ALTER TABLE ledger.recon_result ADD COLUMN IF NOT EXISTS received_total integer;
