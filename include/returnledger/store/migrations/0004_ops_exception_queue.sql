-- Operating model: indexes for the exception console, the operating digests and
-- the exception detail page (raw payloads of a return, audit trail of an exception).

-- list and digest queries filter open exceptions by owner team and age
CREATE INDEX IF NOT EXISTS exception_owner_status_idx ON ledger.exception (owner, status, opened_at);
-- weekly trend: opened / resolved per week
CREATE INDEX IF NOT EXISTS exception_opened_idx ON ledger.exception (opened_at);
CREATE INDEX IF NOT EXISTS exception_resolved_idx ON ledger.exception (resolved_at) WHERE resolved_at IS NOT NULL;
-- exception detail: every raw payload ReBound delivered for the return
CREATE INDEX IF NOT EXISTS raw_event_return_idx ON ledger.raw_event ((payload ->> 'return_id'));
-- exception detail: who did what to one exception (subject 'exception:<id>')
CREATE INDEX IF NOT EXISTS audit_log_subject_idx ON ledger.audit_log (subject, at);
-- stalled-flow checks: pending / submitted Amazon actions by age
CREATE INDEX IF NOT EXISTS amazon_submission_line_idx ON ledger.amazon_submission (return_id, line);
CREATE INDEX IF NOT EXISTS held_event_held_at_idx ON ledger.held_event (held_at);
