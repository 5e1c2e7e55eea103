-- The run for day D covers [D, D+1): keep both ends of the period a sync run covered, so
-- ledger.sync_run says which day a run was for (window_start) and up to when it read (window_end).
ALTER TABLE ledger.sync_run ADD COLUMN IF NOT EXISTS window_start timestamptz;
COMMENT ON COLUMN ledger.sync_run.window_start IS
    'start of the data interval the run covered; events delivered before window_end were read';
COMMENT ON COLUMN ledger.sync_run.window_end IS
    'end (exclusive) of the data interval: the run read every event delivered before it';
