-- Raw events become strictly append-only: what happened to each event (applied, held, invalid,
-- ignored as a repeat) is recorded beside it, once, instead of rewriting the raw row. An event
-- without an outcome is new. (Rewriting 600k raw rows cost ~20 s of a month's load, and the raw
-- table is the audit record of what ReBound sent.)
CREATE TABLE ledger.event_outcome (
    raw_id     bigint PRIMARY KEY REFERENCES ledger.raw_event (raw_id),
    status     text NOT NULL CHECK (status IN ('APPLIED', 'HELD', 'INVALID', 'IGNORED')),
    detail     text,
    batch_id   text NOT NULL,
    decided_at timestamptz NOT NULL
);
CREATE INDEX event_outcome_held_idx ON ledger.event_outcome (raw_id) WHERE status = 'HELD';

INSERT INTO ledger.event_outcome (raw_id, status, detail, batch_id, decided_at)
SELECT raw_id, status, status_detail, batch_id, received_at FROM ledger.raw_event WHERE status <> 'NEW';

DROP INDEX IF EXISTS ledger.raw_event_status_idx;
ALTER TABLE ledger.raw_event DROP COLUMN status, DROP COLUMN status_detail;

-- For people (console, SQL): every raw event with its processing status.
CREATE VIEW ledger.raw_event_status AS
SELECT r.raw_id, r.event_key, r.event_id, r.batch_id, r.received_at,
       COALESCE(o.status, 'NEW') AS status, o.detail AS status_detail, o.decided_at
FROM ledger.raw_event r LEFT JOIN ledger.event_outcome o USING (raw_id);
