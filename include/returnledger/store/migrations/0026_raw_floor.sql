-- Issue 26, target 2: a ledger that does not slow with its years.
--
-- The sync's readers of unprocessed raw events (the validation frame, the return orders to fetch again)
-- found them by anti-joining every raw event ever landed with event_outcome and validation_failure: a
-- sequential scan of the whole raw table each run, growing with every month kept. ledger.raw_floor keeps
-- one raw_id below which every raw event has been examined (it has an outcome: applied, held, ignored,
-- or invalid once quarantined), so those readers start there (a range of the primary key: the last
-- run's events, not the ledger's years).
-- validate moves the floor up to the lowest event still unexamined (returnledger.store.raw_floor); sending
-- events back through the sync (replay_events) moves it down to them in the same transaction, before their
-- outcomes go. Runs of returns_sync do not overlap (max_active_runs=1), so no event is landed while
-- validate moves the floor.

CREATE TABLE IF NOT EXISTS ledger.raw_floor (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    raw_id   bigint NOT NULL
);
INSERT INTO ledger.raw_floor (raw_id) VALUES (0) ON CONFLICT (only_row) DO NOTHING;
