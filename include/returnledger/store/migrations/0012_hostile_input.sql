-- Hostile input (issue 12): nothing ReBound sends stops the sync, and nothing is silently lost.
--
-- 1. Every delivery is stored, even bytes jsonb cannot hold: `body` keeps the exact bytes when the
--    payload column cannot hold them as received (not UTF-8, a lone surrogate or NUL escape, a number
--    PostgreSQL refuses); `payload` is then the readable part, or null when nothing is readable.
--    `body_problem` says why such an event cannot be read (it is reported as INVALID_EVENT).
ALTER TABLE ledger.raw_event
    ALTER COLUMN payload DROP NOT NULL,
    ADD COLUMN IF NOT EXISTS body bytea,
    ADD COLUMN IF NOT EXISTS body_problem text;
ALTER TABLE ledger.raw_event ADD CONSTRAINT raw_event_kept CHECK (payload IS NOT NULL OR body IS NOT NULL);
COMMENT ON COLUMN ledger.raw_event.body IS
    'the exact bytes ReBound sent, kept when payload cannot hold them as received; null: payload is the event as received';
COMMENT ON COLUMN ledger.raw_event.body_problem IS
    'why the delivery cannot be read as an event (not UTF-8, lone surrogate escape, refused by jsonb); null: readable';

-- 2. Two new exception types (owners in include/reference/owners.yaml), a hold reason of each, and
--    SUPERSEDED: the outcome of a body that lost an EVENT_CONFLICT. The allowed values are extended,
--    not restated, so another migration that extended them too keeps its values.
CREATE OR REPLACE FUNCTION ledger._extend_check(tbl regclass, con text, col text, extra text[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    vals text[];
BEGIN
    SELECT array_agg(DISTINCT m[1]) INTO vals
      FROM pg_constraint c, regexp_matches(pg_get_constraintdef(c.oid), '''([A-Za-z_]+)''', 'g') AS m
     WHERE c.conrelid = tbl AND c.conname = con;
    SELECT array_agg(DISTINCT v ORDER BY v) INTO vals FROM unnest(COALESCE(vals, '{}') || extra) AS v;
    EXECUTE format('ALTER TABLE %s DROP CONSTRAINT IF EXISTS %I', tbl, con);
    EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I CHECK (%I = ANY (%L::text[]))', tbl, con, col, vals);
END $$;

SELECT ledger._extend_check('ledger.exception', 'exception_type_check', 'type',
                            ARRAY['EVENT_CONFLICT', 'INVALID_RETURN_ORDER']);
SELECT ledger._extend_check('ledger.validation_failure', 'validation_failure_exception_type_check',
                            'exception_type', ARRAY['EVENT_CONFLICT', 'INVALID_RETURN_ORDER']);
SELECT ledger._extend_check('ledger.event_outcome', 'event_outcome_status_check', 'status', ARRAY['SUPERSEDED']);
DROP FUNCTION ledger._extend_check(regclass, text, text, text[]);

-- an event held for a conflict may name no usable return (its bytes are all there is)
ALTER TABLE ledger.held_event ALTER COLUMN return_id DROP NOT NULL;

-- 3. An event id delivered with more than one body: every body is a raw event of its own (the first
--    keeps the event id as its key, later ones 'event_id#<hash of the body>'), listed here. While any
--    version is undecided (chosen null) the lines the versions name wait; a person picks one body
--    (chosen true), the others are superseded (chosen false).
CREATE TABLE IF NOT EXISTS ledger.event_conflict (
    raw_id      bigint PRIMARY KEY REFERENCES ledger.raw_event (raw_id),
    event_id    text NOT NULL,
    chosen      boolean,
    detected_at timestamptz NOT NULL,
    batch_id    text NOT NULL,
    decided_at  timestamptz,
    decided_by  text
);
CREATE INDEX IF NOT EXISTS event_conflict_event_idx ON ledger.event_conflict (event_id);
CREATE INDEX IF NOT EXISTS event_conflict_open_idx ON ledger.event_conflict (raw_id) WHERE chosen IS NULL;

-- 4. Return orders that failed their own checks, kept as ReBound returned them (each distinct version
--    once). While a return has an uncleared row its events wait (INVALID_RETURN_ORDER); a later fetch
--    that passes the checks clears it.
CREATE TABLE IF NOT EXISTS ledger.return_order_rejected (
    rejected_id   bigserial PRIMARY KEY,
    return_id     text,                      -- null: the order names no usable return id
    body          bytea NOT NULL,            -- the order as returned, JSON-encoded
    payload       jsonb,                     -- the same, where jsonb can hold it
    body_md5      text NOT NULL,
    problems      text NOT NULL,
    first_seen_at timestamptz NOT NULL,
    last_seen_at  timestamptz NOT NULL,
    batch_id      text NOT NULL,
    cleared_at    timestamptz,
    UNIQUE NULLS NOT DISTINCT (return_id, body_md5)
);
CREATE INDEX IF NOT EXISTS return_order_rejected_open_idx ON ledger.return_order_rejected (return_id)
    WHERE cleared_at IS NULL;
