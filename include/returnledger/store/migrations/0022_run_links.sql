-- From a run to what it did (issue 25): each exception, credit note and send-log attempt names the Airflow
-- task instance that produced it (dag, run, task, map index, try), so the console shows the run beside each
-- row with a link to the task's log, and a task's extra links open the console filtered to that run.
--
-- The identity comes from the Airflow edge: inside a running task returnledger.airflow.links.run_dsn (called
-- by returnledger.airflow.hooks.ledger_dsn) puts it in the ledger DSN as libpq startup options
-- (-c returnledger.dag_id=... -c returnledger.run_id=... ...), so every connection the task opens carries
-- it, and these columns' defaults write it. Outside Airflow (CLI, tests, bench) the settings are unset and
-- the columns stay NULL: nothing ran them. Rows written before this migration stay NULL too (the defaults
-- are set after the columns are added).

ALTER TABLE ledger.exception
    ADD COLUMN IF NOT EXISTS run_dag_id     text,
    ADD COLUMN IF NOT EXISTS run_id         text,
    ADD COLUMN IF NOT EXISTS run_task_id    text,
    ADD COLUMN IF NOT EXISTS run_map_index  integer,
    ADD COLUMN IF NOT EXISTS run_try_number integer;
ALTER TABLE ledger.credit_note
    ADD COLUMN IF NOT EXISTS run_dag_id     text,
    ADD COLUMN IF NOT EXISTS run_id         text,
    ADD COLUMN IF NOT EXISTS run_task_id    text,
    ADD COLUMN IF NOT EXISTS run_map_index  integer,
    ADD COLUMN IF NOT EXISTS run_try_number integer;
ALTER TABLE ledger.submission_attempt
    ADD COLUMN IF NOT EXISTS run_dag_id     text,
    ADD COLUMN IF NOT EXISTS run_id         text,
    ADD COLUMN IF NOT EXISTS run_task_id    text,
    ADD COLUMN IF NOT EXISTS run_map_index  integer,
    ADD COLUMN IF NOT EXISTS run_try_number integer;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['exception', 'credit_note', 'submission_attempt'] LOOP
        EXECUTE format($f$
            ALTER TABLE ledger.%I
                ALTER COLUMN run_dag_id SET DEFAULT NULLIF(current_setting('returnledger.dag_id', true), ''),
                ALTER COLUMN run_id SET DEFAULT NULLIF(current_setting('returnledger.run_id', true), ''),
                ALTER COLUMN run_task_id SET DEFAULT NULLIF(current_setting('returnledger.task_id', true), ''),
                ALTER COLUMN run_map_index
                    SET DEFAULT NULLIF(current_setting('returnledger.map_index', true), '')::integer,
                ALTER COLUMN run_try_number
                    SET DEFAULT NULLIF(current_setting('returnledger.try_number', true), '')::integer
        $f$, t);
        EXECUTE format('COMMENT ON COLUMN ledger.%I.run_id IS %L', t,
            'the Airflow run (dag_id, run_id, task_id, map_index, try_number in the run_* columns) whose task '
            'wrote this row; NULL when written outside Airflow');
    END LOOP;
END $$;

-- the console's run page and the extra links read a run's rows by (dag, run[, task])
CREATE INDEX IF NOT EXISTS exception_run_idx ON ledger.exception (run_dag_id, run_id, run_task_id)
    WHERE run_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS credit_note_run_idx ON ledger.credit_note (run_dag_id, run_id, run_task_id)
    WHERE run_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS submission_attempt_run_idx
    ON ledger.submission_attempt (run_dag_id, run_id, run_task_id) WHERE run_id IS NOT NULL;
