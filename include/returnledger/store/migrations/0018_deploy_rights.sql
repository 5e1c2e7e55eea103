-- Issue 21, findings 4 and 8.
--
-- 1. An event whose return order ReBound could not be read (an outage of the order lookup, an answer
--    without its `returns` list) fails the check `return_order_read`: it is held under the SYNC_STALLED
--    that names the order (subject `order-fetch:RID`) until the sync reads the order.
DO $$
DECLARE
    vals text[];
BEGIN
    -- the allowed values, extended not restated, whichever form the constraint has now: quoted values
    -- (ARRAY['A'::text, ...], as 0006 wrote it) or an array literal ('{A,B}'::text[], as 0012 wrote it)
    SELECT array_agg(v) INTO vals FROM (
        SELECT m[1] AS v
          FROM pg_constraint c, regexp_matches(pg_get_constraintdef(c.oid), '''([A-Za-z_]+)''', 'g') AS m
         WHERE c.conrelid = 'ledger.validation_failure'::regclass
           AND c.conname = 'validation_failure_exception_type_check'
        UNION ALL
        SELECT unnest(string_to_array(m[1], ','))
          FROM pg_constraint c, regexp_matches(pg_get_constraintdef(c.oid), '\{([A-Za-z_,]*)\}', 'g') AS m
         WHERE c.conrelid = 'ledger.validation_failure'::regclass
           AND c.conname = 'validation_failure_exception_type_check'
    ) x WHERE v <> '';
    SELECT array_agg(DISTINCT v ORDER BY v) INTO vals FROM unnest(COALESCE(vals, '{}') || '{SYNC_STALLED}') AS v;
    ALTER TABLE ledger.validation_failure DROP CONSTRAINT IF EXISTS validation_failure_exception_type_check;
    EXECUTE format('ALTER TABLE ledger.validation_failure ADD CONSTRAINT validation_failure_exception_type_check'
                   ' CHECK (exception_type = ANY (%L::text[]))', vals);
END $$;

-- 2. Deployment rights (finding 8). The ledger is owned by a role nobody logs in as (`migrate --owner`);
--    the DAGs, workers and the console use a runtime role (`migrate --runtime-role`) that reads and writes
--    rows but owns nothing, so it can neither alter nor drop a table nor disable or drop the append-only
--    triggers. The few schema changes the runs themselves make (a reconciliation key's result partition,
--    fresh statistics) go through these functions, which run as the owner and do exactly that one thing.
--    EXECUTE is granted to the runtime role by the migration tooling (returnledger.store.migrate), not to
--    PUBLIC.
CREATE FUNCTION ledger.recon_partition_create(result_key text) RETURNS text
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    name text := ledger.recon_partition_name(result_key);
BEGIN
    EXECUTE format('CREATE TABLE ledger.%I (LIKE ledger.recon_result INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                   name);
    -- the caller fills the bare table before it is attached (afterwards the parent's rights apply)
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON ledger.%I TO %I', name, session_user);
    RETURN name;
END $$;

CREATE FUNCTION ledger.recon_partition_attach(result_key text) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    name text := ledger.recon_partition_name(result_key);
BEGIN
    EXECUTE format('ALTER TABLE ledger.%I ADD PRIMARY KEY (period, row_key)', name);
    EXECUTE format('ALTER TABLE ledger.%I ADD CHECK (period = %L)', name, result_key);
    EXECUTE format('ALTER TABLE ledger.recon_result ATTACH PARTITION ledger.%I FOR VALUES IN (%L)', name,
                   result_key);
END $$;

CREATE FUNCTION ledger.recon_partition_drop(result_key text) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    name text;
BEGIN
    SELECT c.relname INTO name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
     WHERE i.inhparent = 'ledger.recon_result'::regclass
       AND pg_get_expr(c.relpartbound, c.oid) = format('FOR VALUES IN (%L)', result_key);
    IF name IS NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('DROP TABLE ledger.%I', name);
    RETURN true;
END $$;

CREATE FUNCTION ledger.analyze_table(tbl regclass) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = tbl)
       IS DISTINCT FROM 'ledger' THEN
        RAISE EXCEPTION 'ledger.analyze_table analyzes ledger tables only, not %', tbl;
    END IF;
    EXECUTE format('ANALYZE %s', tbl);
END $$;

REVOKE ALL ON FUNCTION ledger.recon_partition_create(text), ledger.recon_partition_attach(text),
    ledger.recon_partition_drop(text), ledger.analyze_table(regclass) FROM PUBLIC;
