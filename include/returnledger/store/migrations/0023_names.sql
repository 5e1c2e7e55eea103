-- Names that say what a column holds (issue 23).

-- sync_run.started_at never held a clock time: the run writes its window end there, the moment the run is
-- as of (a rerun of a day books the same moment). Its name now says so.
ALTER TABLE ledger.sync_run RENAME COLUMN started_at TO started_as_of;
COMMENT ON COLUMN ledger.sync_run.started_as_of IS
    'the moment the run is as of when its row is first written: its window end, not a clock time';

-- A validation failure names the check that failed. The detail is for people and may be reworded; code
-- that needs the check (the sync asking ReBound again for return_known / line_known) reads check_name.
ALTER TABLE ledger.validation_failure ADD COLUMN check_name text;
UPDATE ledger.validation_failure SET check_name = substring(detail FROM '^([a-z_]+):')
 WHERE check_name IS NULL;
COMMENT ON COLUMN ledger.validation_failure.check_name IS
    'the events-suite check that failed (screening.suite), e.g. return_known; detail explains it to people';

-- QUARANTINED is a disposition (ReBound's) and a reconciliation status; no rule ever put a line in a
-- QUARANTINED state (a held line keeps its state while its events wait), so it is no line state.
ALTER TABLE ledger.return_line DROP CONSTRAINT return_line_state_check;
ALTER TABLE ledger.return_line ADD CONSTRAINT return_line_state_check
    CHECK (state IN ('ANNOUNCED', 'IN_TRANSIT', 'RECEIVED', 'GRADED', 'DISPOSITIONED', 'CREDIT_SUBMITTED',
                     'CREDIT_ACCEPTED', 'CLOSED', 'REJECTED'));
