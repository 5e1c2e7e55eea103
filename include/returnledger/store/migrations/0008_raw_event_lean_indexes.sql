-- The raw table takes every ReBound delivery (hundreds of thousands of rows in a first backfill):
-- keep only the indexes something reads. The exception detail page now finds a return's raw
-- payloads through the typed return_id column (raw_event_line_idx), so the expression index
-- on payload->>'return_id', which cost a JSON lookup per landed row, goes.
DROP INDEX IF EXISTS ledger.raw_event_return_idx;
-- nothing reads raw events by batch (runs are traced through event_outcome and the line history)
DROP INDEX IF EXISTS ledger.raw_event_batch_idx;
