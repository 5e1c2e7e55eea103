-- One partition of ledger.recon_result per result key ('YYYY-MM' for a close, 'daily:YYYY-MM-DD' for a
-- rolling check). A key's first run loads its rows into a bare table, builds the primary key once and
-- attaches it (returnledger.reconciliation.results): for a million rows that is several times cheaper than
-- maintaining the indexes row by row, and expired daily results are dropped with their partition instead of
-- deleted row by row. The (period, recon_status) index goes: every reader names one period, so it reads one
-- partition.

-- the partition table of a result key: readable, and unique through the key's hash
CREATE FUNCTION ledger.recon_partition_name(result_key text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT
    AS $$ SELECT 'recon_result_' || left(regexp_replace(lower(result_key), '[^a-z0-9]+', '_', 'g'), 30)
                 || '_' || left(md5(result_key), 8) $$;

ALTER TABLE ledger.recon_result RENAME TO recon_result_unpartitioned;
ALTER INDEX ledger.recon_result_pkey RENAME TO recon_result_unpartitioned_pkey;
DROP INDEX ledger.recon_result_status_idx;

CREATE TABLE ledger.recon_result (
    LIKE ledger.recon_result_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS,
    PRIMARY KEY (period, row_key)
) PARTITION BY LIST (period);

DO $$
DECLARE
    key text;
BEGIN
    FOR key IN SELECT DISTINCT period FROM ledger.recon_result_unpartitioned LOOP
        EXECUTE format('CREATE TABLE ledger.%I PARTITION OF ledger.recon_result FOR VALUES IN (%L)',
                       ledger.recon_partition_name(key), key);
    END LOOP;
END $$;

INSERT INTO ledger.recon_result SELECT * FROM ledger.recon_result_unpartitioned;
DROP TABLE ledger.recon_result_unpartitioned;
