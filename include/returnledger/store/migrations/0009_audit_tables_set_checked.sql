-- line_history and event_outcome are append-only audit tables that the sync fills in bulk (a first
-- backfill writes over a million rows). Their foreign keys were checked by a trigger per row, which
-- measured as 19 s of a 90 s apply over 626k events (bench/bench_sync.py). The sync writes these rows
-- only for lines and raw events it read in the same transaction, and the rows they point at are
-- never deleted: that is now enforced on the referenced tables themselves (below), and
-- ledger.audit_orphans() lists any row that points nowhere (the tests assert it stays empty).
ALTER TABLE ledger.line_history DROP CONSTRAINT IF EXISTS line_history_return_id_line_fkey;
ALTER TABLE ledger.event_outcome DROP CONSTRAINT IF EXISTS event_outcome_raw_id_fkey;

CREATE OR REPLACE FUNCTION ledger.forbid_removal() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger.% keeps every row: % is not allowed', TG_TABLE_NAME, TG_OP
        USING HINT = 'raw events and return lines are the audit trail; correct them with new rows';
END $$;

DROP TRIGGER IF EXISTS raw_event_keeps_rows ON ledger.raw_event;
CREATE TRIGGER raw_event_keeps_rows BEFORE DELETE OR TRUNCATE ON ledger.raw_event
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.forbid_removal();
DROP TRIGGER IF EXISTS return_line_keeps_rows ON ledger.return_line;
CREATE TRIGGER return_line_keeps_rows BEFORE DELETE OR TRUNCATE ON ledger.return_line
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.forbid_removal();

CREATE OR REPLACE FUNCTION ledger.audit_orphans()
RETURNS TABLE (table_name text, row_key text) LANGUAGE sql STABLE AS $$
    SELECT 'line_history', h.history_id::text FROM ledger.line_history h
    WHERE NOT EXISTS (SELECT 1 FROM ledger.return_line l WHERE l.return_id = h.return_id AND l.line = h.line)
    UNION ALL
    SELECT 'event_outcome', o.raw_id::text FROM ledger.event_outcome o
    WHERE NOT EXISTS (SELECT 1 FROM ledger.raw_event r WHERE r.raw_id = o.raw_id)
$$;
