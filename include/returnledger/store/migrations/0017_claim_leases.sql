-- Money path, second pass (issue 21, findings 2 and 3): claims are leases, and the send log writes each
-- HTTP attempt down before it is sent.

-- 1. A claim is a lease held in the rows, not a lock held by one database session: its owner
--    (claim_key, claimed_by) and an expiry the pusher renews while it works. A lost connection (a
--    PostgreSQL restart, pg_terminate_backend, an idle timeout, a pooler) loses nothing; a claim is taken
--    over only once its lease has run out.
ALTER TABLE ledger.amazon_submission ADD COLUMN IF NOT EXISTS lease_until timestamptz;
COMMENT ON COLUMN ledger.amazon_submission.lease_until IS
    'SENDING rows: the claim of claim_key/claimed_by holds until then (database clock); renewed while its pusher works';
-- claims of the advisory-lock scheme cannot be checked any more (their session locks are not in the rows):
-- they are expired now, so the next push takes them over and judges what the send log shows
UPDATE ledger.amazon_submission SET lease_until = now() WHERE status = 'SENDING' AND lease_until IS NULL;
CREATE INDEX IF NOT EXISTS amazon_submission_claims_idx
    ON ledger.amazon_submission (claim_key) WHERE status = 'SENDING';

-- 2. A duplicate refusal being followed: the refused transaction whose `details` named the transaction
--    now polled. If that one ends in Failure the refusal proved nothing (design rule 11).
ALTER TABLE ledger.amazon_submission ADD COLUMN IF NOT EXISTS refused_transaction_id text;

-- 3. The send log: a SENDING row is written (and committed) before each HTTP attempt, its outcome row
--    after it, both under one send_id. A SENDING row without an outcome row is an attempt with no known
--    outcome: Amazon may have taken the note in. A step rerun after a lost connection writes nothing twice.
ALTER TABLE ledger.submission_attempt ADD COLUMN IF NOT EXISTS send_id text;
CREATE UNIQUE INDEX IF NOT EXISTS submission_attempt_once_idx
    ON ledger.submission_attempt (send_id, attempt, outcome) WHERE send_id IS NOT NULL;
COMMENT ON COLUMN ledger.submission_attempt.outcome IS
    'SENDING (written before the HTTP attempt), ACCEPTED_202, RETRY (429/5xx), REFUSED (4xx), NO_ANSWER';

-- 4. Repair: before this migration a duplicate refusal that named no other transaction accepted the note
--    (confirmed_by = 'DUPLICATE', held by the refused transaction itself). That proves nothing (design
--    rule 11): such a note no longer counts as confirmed by Amazon, so the month-end report shows its
--    lines CREDIT_MISSING and raises CREDIT_MISSING (finance) instead of MATCHED.
UPDATE ledger.credit_note SET confirmed_by = NULL, confirmed_at = NULL WHERE confirmed_by = 'DUPLICATE';
