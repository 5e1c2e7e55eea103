-- Issue 26, target 4: the daily rolling check re-matches only the lines whose inputs changed.
--
-- Every write to a table the match reads leaves a row in ledger.recon_change naming what it touched: a
-- return order (every line of it), a line's or an Amazon row's returns notice and SKU, or a catalog SKU.
-- Each row carries its transaction id, so a run finds the changes its last run could not see by comparing
-- them with the snapshot that run took (pg_visible_in_snapshot): a transaction still open then and
-- committed since is found too, which a sequence number could not promise. The match's unit is the
-- returns notice and SKU (its window sums a group's credits and units), so a run re-matches whole groups.
-- ledger.recon_state keeps, per rolling result key, what its rows were computed from: the snapshot, the
-- as-of, what the run covered (Periods rule) and the policy; a run whose coverage or policy differs
-- recomputes everything (returnledger.reconciliation.incremental).

CREATE TABLE IF NOT EXISTS ledger.recon_change (
    xid            xid8 NOT NULL DEFAULT pg_current_xact_id(),
    return_id      text,   -- every line of this return order (under every notice and SKU named for it)
    returns_notice text,   -- with sku and no return_id: the group of an Amazon row
    sku            text    -- alone: every line of this SKU (a catalog change)
);
CREATE INDEX IF NOT EXISTS recon_change_xid_idx ON ledger.recon_change (xid);

CREATE TABLE IF NOT EXISTS ledger.recon_state (
    result_key  text PRIMARY KEY,
    as_of       timestamptz NOT NULL,
    coverage    jsonb NOT NULL,          -- since, end, prior, prior_as_of, report_period of the run
    fingerprint text NOT NULL,           -- the disposition policy and the credit window the rows used
    snapshot    pg_snapshot NOT NULL     -- changes not visible in it are re-matched by the next run
);

-- A line's credit window ends with time, not with a write: the runs find the lines whose window ended
-- between their as-of dates by this index.
CREATE INDEX IF NOT EXISTS return_line_dispositioned_idx ON ledger.return_line (dispositioned_at);

CREATE OR REPLACE FUNCTION ledger.note_recon_change() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'return_line' OR TG_TABLE_NAME = 'amazon_submission' THEN
        IF TG_OP <> 'DELETE' THEN
            INSERT INTO ledger.recon_change (return_id, sku) SELECT DISTINCT return_id, sku FROM new_rows;
        END IF;
        IF TG_OP <> 'INSERT' THEN
            INSERT INTO ledger.recon_change (return_id, sku) SELECT DISTINCT return_id, sku FROM old_rows;
        END IF;
    ELSIF TG_TABLE_NAME = 'return_order' THEN
        IF TG_OP <> 'DELETE' THEN
            INSERT INTO ledger.recon_change (return_id, returns_notice)
            SELECT return_id, returns_notice FROM new_rows;
        END IF;
        IF TG_OP <> 'INSERT' THEN
            INSERT INTO ledger.recon_change (return_id, returns_notice)
            SELECT return_id, returns_notice FROM old_rows;
        END IF;
    ELSIF TG_TABLE_NAME = 'credit_note' THEN
        IF TG_OP <> 'DELETE' THEN
            INSERT INTO ledger.recon_change (return_id) SELECT DISTINCT return_id FROM new_rows;
        END IF;
        IF TG_OP <> 'INSERT' THEN
            INSERT INTO ledger.recon_change (return_id) SELECT DISTINCT return_id FROM old_rows;
        END IF;
    ELSIF TG_TABLE_NAME = 'amazon_return' THEN
        -- its group, and the return order it is linked to (a linked order is no longer ReBound's own)
        IF TG_OP <> 'DELETE' THEN
            INSERT INTO ledger.recon_change (return_id, returns_notice, sku)
            SELECT DISTINCT NULL::text, returns_notice, COALESCE(sku, '') FROM new_rows
            UNION SELECT DISTINCT linked_return_id, NULL, NULL FROM new_rows WHERE linked_return_id IS NOT NULL;
        END IF;
        IF TG_OP <> 'INSERT' THEN
            INSERT INTO ledger.recon_change (return_id, returns_notice, sku)
            SELECT DISTINCT NULL::text, returns_notice, COALESCE(sku, '') FROM old_rows
            UNION SELECT DISTINCT linked_return_id, NULL, NULL FROM old_rows WHERE linked_return_id IS NOT NULL;
        END IF;
    ELSIF TG_TABLE_NAME = 'exception' THEN
        -- only the holding types hold a line (models.HOLDING_TYPES; a test keeps the two lists equal), and
        -- the held events under such an exception name the lines it holds
        IF TG_OP <> 'DELETE' THEN
            INSERT INTO ledger.recon_change (return_id)
            SELECT DISTINCT n.return_id FROM new_rows n
             WHERE n.type IN ('UNMAPPED_REASON_CODE', 'SKU_MISMATCH', 'OUT_OF_SEQUENCE') AND n.return_id IS NOT NULL
            UNION SELECT DISTINCT h.return_id FROM new_rows n JOIN ledger.held_event h ON h.exception_id = n.exception_id
             WHERE n.type IN ('UNMAPPED_REASON_CODE', 'SKU_MISMATCH', 'OUT_OF_SEQUENCE') AND h.return_id IS NOT NULL;
        END IF;
        IF TG_OP <> 'INSERT' THEN
            INSERT INTO ledger.recon_change (return_id)
            SELECT DISTINCT o.return_id FROM old_rows o
             WHERE o.type IN ('UNMAPPED_REASON_CODE', 'SKU_MISMATCH', 'OUT_OF_SEQUENCE') AND o.return_id IS NOT NULL;
        END IF;
    ELSIF TG_TABLE_NAME = 'held_event' THEN
        IF TG_OP <> 'DELETE' THEN
            INSERT INTO ledger.recon_change (return_id)
            SELECT DISTINCT return_id FROM new_rows WHERE return_id IS NOT NULL;
        END IF;
        IF TG_OP <> 'INSERT' THEN
            INSERT INTO ledger.recon_change (return_id)
            SELECT DISTINCT return_id FROM old_rows WHERE return_id IS NOT NULL;
        END IF;
    ELSIF TG_TABLE_NAME = 'sku' THEN
        -- the match reads a SKU's ASIN and unit cost, not its stock (written by every inventory update)
        IF TG_OP = 'UPDATE' THEN
            INSERT INTO ledger.recon_change (sku)
            SELECT n.sku FROM new_rows n JOIN old_rows o ON o.sku = n.sku
             WHERE (n.asin, n.unit_cost) IS DISTINCT FROM (o.asin, o.unit_cost);
        ELSIF TG_OP = 'INSERT' THEN
            INSERT INTO ledger.recon_change (sku) SELECT sku FROM new_rows;
        ELSE
            INSERT INTO ledger.recon_change (sku) SELECT sku FROM old_rows;
        END IF;
    END IF;
    RETURN NULL;
END $$;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['return_line', 'return_order', 'amazon_submission', 'credit_note', 'amazon_return',
                             'exception', 'held_event', 'sku'] LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS recon_change_ins ON ledger.%I', t);
        EXECUTE format('DROP TRIGGER IF EXISTS recon_change_upd ON ledger.%I', t);
        EXECUTE format('DROP TRIGGER IF EXISTS recon_change_del ON ledger.%I', t);
        EXECUTE format('CREATE TRIGGER recon_change_ins AFTER INSERT ON ledger.%I REFERENCING NEW TABLE AS new_rows'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION ledger.note_recon_change()', t);
        EXECUTE format('CREATE TRIGGER recon_change_upd AFTER UPDATE ON ledger.%I'
                       ' REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION ledger.note_recon_change()', t);
        EXECUTE format('CREATE TRIGGER recon_change_del AFTER DELETE ON ledger.%I REFERENCING OLD TABLE AS old_rows'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION ledger.note_recon_change()', t);
    END LOOP;
END $$;

-- A rolling key's rows by returns notice and SKU (the unit a run re-matches); built once when the key's
-- partition is made, as its owner (the runtime role owns no table; migration 0018).
CREATE OR REPLACE FUNCTION ledger.recon_partition_group_index(result_key text) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    name text := ledger.recon_partition_name(result_key);
BEGIN
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON ledger.%I ((COALESCE(returns_notice, %L)), (COALESCE(sku, %L)))',
                   left(name, 50) || '_group', name, '', '');
END $$;
REVOKE ALL ON FUNCTION ledger.recon_partition_group_index(text) FROM PUBLIC;
