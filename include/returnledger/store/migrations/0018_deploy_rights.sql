-- Issue 21, findings 4 and 8.
--
-- 1. An event whose return order ReBound could not be read (an outage of the order lookup, an answer
--    without its `returns` list) fails the check `return_order_read`: it is held under the SYNC_STALLED
--    that names the order (subject `order-fetch:RID`) until the sync reads the order.
DO $$
DECLARE
    vals text[];
BEGIN
    SELECT array_agg(DISTINCT m[1] ORDER BY m[1]) INTO vals
      FROM pg_constraint c, regexp_matches(pg_get_constraintdef(c.oid), '''([A-Za-z_]+)''', 'g') AS m
     WHERE c.conrelid = 'ledger.validation_failure'::regclass
       AND c.conname = 'validation_failure_exception_type_check';
    SELECT array_agg(DISTINCT v ORDER BY v) INTO vals FROM unnest(COALESCE(vals, '{}') || '{SYNC_STALLED}') AS v;
    ALTER TABLE ledger.validation_failure DROP CONSTRAINT IF EXISTS validation_failure_exception_type_check;
    EXECUTE format('ALTER TABLE ledger.validation_failure ADD CONSTRAINT validation_failure_exception_type_check'
                   ' CHECK (exception_type = ANY (%L::text[]))', vals);
END $$;
