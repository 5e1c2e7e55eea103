-- Money path (issue 11): credit notes as rows of their own, claims, a send log, over-receipt holds.

-- 1. A credit note is a row: its id is what Amazon sees, unique by construction, and it belongs to one
--    return. Several returns booked under one Amazon returns notice each get their own notes.
CREATE TABLE IF NOT EXISTS ledger.credit_note (
    credit_note_id       text PRIMARY KEY,             -- the invoice id sent to Amazon ('CN-<return>-<line>')
    return_id            text NOT NULL REFERENCES ledger.return_order (return_id),
    returns_notice       text,
    created_at           timestamptz NOT NULL,
    created_batch        text NOT NULL,
    first_transaction_id text,                          -- transaction of the first submission answered 202
    held_transaction_id  text,                          -- the transaction through which Amazon holds the note
    confirmed_by         text CHECK (confirmed_by IN ('SUCCESS', 'DUPLICATE', 'LEGACY')),
    confirmed_at         timestamptz,
    UNIQUE (credit_note_id, return_id)
);

-- Repair: before this migration a note id was 'CN-<notice>-<first line>', so two returns under one
-- notice could share an id and only the first reached Amazon. Give the later return's rows an id of
-- their own and send them again (PENDING): Amazon never took them in under their own id.
WITH owner AS (
    SELECT DISTINCT ON (document_id) document_id, return_id
      FROM ledger.amazon_submission
     WHERE kind = 'CREDIT_NOTE' AND document_id IS NOT NULL
     ORDER BY document_id, submission_id
), stray AS (
    SELECT s.submission_id, 'CN-' || s.return_id || '-' ||
           min(s.line) OVER (PARTITION BY s.return_id, s.document_id) AS new_id
      FROM ledger.amazon_submission s JOIN owner o USING (document_id)
     WHERE s.kind = 'CREDIT_NOTE' AND s.return_id <> o.return_id
)
UPDATE ledger.amazon_submission s
   SET document_id = stray.new_id, status = 'PENDING', transaction_id = NULL, submitted_at = NULL,
       resolved_at = NULL, last_error = 'credit-note id was shared with another return; sent again under its own id'
  FROM stray WHERE s.submission_id = stray.submission_id;

INSERT INTO ledger.credit_note (credit_note_id, return_id, returns_notice, created_at, created_batch,
                                first_transaction_id, held_transaction_id, confirmed_by, confirmed_at)
SELECT DISTINCT ON (s.document_id) s.document_id, s.return_id, o.returns_notice, s.created_at, s.created_batch,
       s.transaction_id, CASE WHEN s.status = 'ACCEPTED' THEN s.transaction_id END,
       CASE WHEN s.status = 'ACCEPTED' THEN 'LEGACY' END, s.resolved_at
  FROM ledger.amazon_submission s JOIN ledger.return_order o USING (return_id)
 WHERE s.kind = 'CREDIT_NOTE' AND s.document_id IS NOT NULL
 ORDER BY s.document_id, s.submission_id
ON CONFLICT (credit_note_id) DO NOTHING;

ALTER TABLE ledger.amazon_submission
    ADD CONSTRAINT amazon_submission_credit_note_fk FOREIGN KEY (document_id, return_id)
        REFERENCES ledger.credit_note (credit_note_id, return_id);

-- 2. Claims: a row is SENDING while one pusher holds it. claim_key is a PostgreSQL advisory lock the
--    claiming session holds for as long as it lives, so a claim left by a dead process is recognised
--    (its lock is free) and taken over, while a slow but living pusher keeps its claim.
ALTER TABLE ledger.amazon_submission DROP CONSTRAINT IF EXISTS amazon_submission_status_check;
ALTER TABLE ledger.amazon_submission ADD CONSTRAINT amazon_submission_status_check
    CHECK (status IN ('PENDING', 'SENDING', 'SUBMITTED', 'ACCEPTED', 'FAILED'));
ALTER TABLE ledger.amazon_submission ADD COLUMN IF NOT EXISTS claim_key bigint;
ALTER TABLE ledger.amazon_submission ADD COLUMN IF NOT EXISTS claimed_by text;
CREATE INDEX IF NOT EXISTS amazon_submission_document_idx ON ledger.amazon_submission (document_id);

-- 3. The send log: every HTTP attempt of every submission, append-only.
CREATE TABLE IF NOT EXISTS ledger.submission_attempt (
    attempt_id      bigserial PRIMARY KEY,
    kind            text NOT NULL CHECK (kind IN ('CREDIT_NOTE', 'INVENTORY')),
    document_id     text,                       -- the credit-note id; NULL for inventory
    submission_ids  bigint[] NOT NULL,
    attempt         integer NOT NULL CHECK (attempt > 0),   -- HTTP attempt number within one send
    request_sha256  text NOT NULL,
    http_status     integer,                    -- NULL: no answer (timeout, connection lost)
    transaction_id  text,
    errors          jsonb,
    outcome         text NOT NULL,              -- ACCEPTED_202, RETRY, REFUSED, NO_ANSWER
    claimed_by      text,
    batch_id        text NOT NULL,
    at              timestamptz NOT NULL,       -- the run's moment (data interval end)
    sent_at         timestamptz NOT NULL DEFAULT clock_timestamp()   -- wall clock, for the audit only
);
CREATE INDEX IF NOT EXISTS submission_attempt_document_idx ON ledger.submission_attempt (document_id);
CREATE INDEX IF NOT EXISTS submission_attempt_tx_idx ON ledger.submission_attempt (transaction_id);

CREATE OR REPLACE FUNCTION ledger.refuse_change_to_send_log() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger.submission_attempt is append-only (% refused)', TG_OP;
END $$;
DROP TRIGGER IF EXISTS submission_attempt_append_only ON ledger.submission_attempt;
CREATE TRIGGER submission_attempt_append_only BEFORE UPDATE OR DELETE ON ledger.submission_attempt
    FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change_to_send_log();
DROP TRIGGER IF EXISTS submission_attempt_no_truncate ON ledger.submission_attempt;
CREATE TRIGGER submission_attempt_no_truncate BEFORE TRUNCATE ON ledger.submission_attempt
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change_to_send_log();

-- 4. Over-receipt: the quantity the warehouse chose to credit when it resolved the QUANTITY_MISMATCH.
ALTER TABLE ledger.return_line ADD COLUMN IF NOT EXISTS credit_quantity integer
    CHECK (credit_quantity IS NULL OR credit_quantity >= 0);
COMMENT ON COLUMN ledger.return_line.credit_quantity IS
    'units to credit, chosen by the warehouse for a receipt above the announced quantity';
