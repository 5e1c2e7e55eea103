-- Per-row validation failures of the sync: written by validate, read by quarantine.
CREATE TABLE ledger.validation_failure (
    raw_id          bigint PRIMARY KEY REFERENCES ledger.raw_event (raw_id),
    batch_id        text NOT NULL,
    exception_type  text NOT NULL CHECK (exception_type IN ('INVALID_EVENT', 'UNMAPPED_REASON_CODE', 'SKU_MISMATCH')),
    detail          text NOT NULL,
    return_id       text,
    line            integer,
    sku             text
);
CREATE INDEX validation_failure_batch_idx ON ledger.validation_failure (batch_id);

-- Parsed fields of each raw event, kept beside the payload so every later
-- step works in sets without re-parsing JSON.
ALTER TABLE ledger.raw_event
    ADD COLUMN event_type  text,
    ADD COLUMN return_id   text,
    ADD COLUMN line        integer,
    ADD COLUMN occurred_at timestamptz;
CREATE INDEX raw_event_line_idx ON ledger.raw_event (return_id, line);
