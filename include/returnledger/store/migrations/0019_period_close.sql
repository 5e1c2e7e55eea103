-- Periods (design.md rule 12, scenarios/README.md "Periods"): a close reports every line no earlier close
-- settled, whatever month it was created in, and a closed month's report is final.

-- Each close of a period, every version kept: the report as written (the CSV gzip-compressed, the HTML as
-- is) with the sha256 of each file as written, and its per-status totals for the trend of later reports.
-- A reopened version gets reopened_at/by/reason and stays; the period's next close writes version + 1.
CREATE TABLE IF NOT EXISTS ledger.period_close (
    period        text NOT NULL CHECK (period ~ '^\d{4}-(0[1-9]|1[0-2])$'),
    version       integer NOT NULL CHECK (version >= 1),
    period_end    timestamptz NOT NULL,
    as_of         timestamptz NOT NULL,          -- the close run's data interval end
    batch_id      text NOT NULL,
    rows          bigint NOT NULL,
    totals        jsonb NOT NULL,                -- {status: {rows, amount_owed, credited_amount}}
    csv_gzip      bytea NOT NULL,
    csv_sha256    text NOT NULL,
    html          bytea NOT NULL,
    html_sha256   text NOT NULL,
    reopened_at   timestamptz,
    reopened_by   text,
    reopen_reason text,
    PRIMARY KEY (period, version)
);
-- a period has at most one version in force
CREATE UNIQUE INDEX IF NOT EXISTS period_close_current_idx ON ledger.period_close (period)
    WHERE reopened_at IS NULL;

-- What closes reported that later closes must know, kept small: only lines a close reported and did not
-- settle (they carry, with the close that first reported them), and dark returns (reported once). A close
-- that settles a carried line sets settled_period; lines settled the first time they are reported never
-- come here (later closes skip them by their return order's date), so the table grows with open lines,
-- not with every line ever settled.
CREATE TABLE IF NOT EXISTS ledger.recon_carry (
    row_key        text PRIMARY KEY,             -- 'RID|LINE' or the amazon_return_id of a dark return
    return_id      text,
    line           integer,
    first_period   text NOT NULL,
    settled_period text
);
CREATE INDEX IF NOT EXISTS recon_carry_open_idx ON ledger.recon_carry (first_period)
    WHERE settled_period IS NULL AND return_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS recon_carry_settled_idx ON ledger.recon_carry (settled_period)
    WHERE settled_period IS NOT NULL;

-- Return orders that reached the ledger after a close of the month they were created in (ReBound
-- delivered them late): no close reported them, so the next close must, although their date lies before
-- its window. Recorded by a statement trigger as orders land; reported_period is the close that reported
-- them.
CREATE TABLE IF NOT EXISTS ledger.recon_late_order (
    return_id       text PRIMARY KEY,
    landed_after    text NOT NULL,               -- the latest close in force when the order landed
    reported_period text
);

CREATE OR REPLACE FUNCTION ledger.note_late_orders() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    latest text;
    latest_end timestamptz;
BEGIN
    SELECT period, period_end INTO latest, latest_end FROM ledger.period_close
     WHERE reopened_at IS NULL ORDER BY period DESC LIMIT 1;
    IF latest IS NOT NULL THEN
        INSERT INTO ledger.recon_late_order (return_id, landed_after)
        SELECT n.return_id, latest FROM landed n
         WHERE n.created_at < latest_end AND n.source = 'REBOUND'
        ON CONFLICT (return_id) DO NOTHING;
    END IF;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS return_order_late ON ledger.return_order;
CREATE TRIGGER return_order_late AFTER INSERT ON ledger.return_order
    REFERENCING NEW TABLE AS landed FOR EACH STATEMENT EXECUTE FUNCTION ledger.note_late_orders();

-- The carry-over columns of a result row: the close that first reported it ('YYYY-MM'; NULL in a daily
-- check for a row no close has reported yet), the day it originates from (the return order's creation,
-- the Amazon row's return date) for its age, and the credit the line is owed (for money at risk).
ALTER TABLE ledger.recon_result
    ADD COLUMN IF NOT EXISTS first_reported text,
    ADD COLUMN IF NOT EXISTS origin_date    date,
    ADD COLUMN IF NOT EXISTS amount_owed    numeric(12, 2);

-- Amazon rows by return date (a close's new rows) and by import time (rows imported after a close for
-- its months).
CREATE INDEX IF NOT EXISTS amazon_return_returned_idx ON ledger.amazon_return (returned_at);
CREATE INDEX IF NOT EXISTS amazon_return_imported_idx ON ledger.amazon_return (imported_at);
