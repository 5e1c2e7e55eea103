-- Issue 23: the exception types live in a reference table, not in CHECK lists that needed a migration
-- (and a re-created helper, see 0012 and 0018) for every new type.
--
-- ledger.exception_type holds one row per type of the registry (returnledger.exception_types). The
-- migration tooling (returnledger.store.migrate.seed_exception_types) upserts the registry into it on
-- every `migrate`, after the migration files, so a new type needs no migration. This file seeds the
-- types the old CHECK lists allowed and any the tables hold, so the foreign keys below hold at once.
CREATE TABLE IF NOT EXISTS ledger.exception_type (
    code        text PRIMARY KEY CHECK (code ~ '^[A-Z][A-Z0-9_]*$'),
    subject     text NOT NULL DEFAULT '',
    holds       text NOT NULL DEFAULT '',
    released_by text NOT NULL DEFAULT '',
    summary     text NOT NULL DEFAULT ''
);
COMMENT ON TABLE ledger.exception_type IS
    'exception types of the registry (returnledger.exception_types), upserted by every migrate';

INSERT INTO ledger.exception_type (code)
SELECT DISTINCT v FROM (
    -- the values of the old CHECK lists, whichever form they have: quoted values or an array literal
    SELECT m[1] AS v
      FROM pg_constraint c, regexp_matches(pg_get_constraintdef(c.oid), '''([A-Za-z_]+)''', 'g') AS m
     WHERE (c.conrelid, c.conname) IN (('ledger.exception'::regclass, 'exception_type_check'),
                                       ('ledger.validation_failure'::regclass,
                                        'validation_failure_exception_type_check'))
    UNION ALL
    SELECT unnest(string_to_array(m[1], ','))
      FROM pg_constraint c, regexp_matches(pg_get_constraintdef(c.oid), '\{([A-Za-z_,]*)\}', 'g') AS m
     WHERE (c.conrelid, c.conname) IN (('ledger.exception'::regclass, 'exception_type_check'),
                                       ('ledger.validation_failure'::regclass,
                                        'validation_failure_exception_type_check'))
    UNION ALL SELECT type FROM ledger.exception
    UNION ALL SELECT exception_type FROM ledger.validation_failure
    UNION ALL SELECT reason FROM ledger.held_event
) x WHERE v ~ '^[A-Z][A-Z0-9_]*$'
ON CONFLICT (code) DO NOTHING;

ALTER TABLE ledger.exception DROP CONSTRAINT IF EXISTS exception_type_check;
ALTER TABLE ledger.exception
    ADD CONSTRAINT exception_type_fk FOREIGN KEY (type) REFERENCES ledger.exception_type (code);
ALTER TABLE ledger.validation_failure DROP CONSTRAINT IF EXISTS validation_failure_exception_type_check;
ALTER TABLE ledger.validation_failure
    ADD CONSTRAINT validation_failure_exception_type_fk
    FOREIGN KEY (exception_type) REFERENCES ledger.exception_type (code);
ALTER TABLE ledger.held_event
    ADD CONSTRAINT held_event_reason_fk FOREIGN KEY (reason) REFERENCES ledger.exception_type (code);
