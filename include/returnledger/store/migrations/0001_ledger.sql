-- The returns ledger: raw events, return orders and lines, reference data,
-- exception queue, Amazon outbox, Amazon-side records, reconciliation.
-- All tables live in the schema "ledger" (search_path is set by the migrator).

CREATE SCHEMA IF NOT EXISTS ledger;

-- Every payload exactly as ReBound delivered it, stored before parsing.
-- Append-only; unique per source event id (an event without id gets a
-- synthetic key from its body hash so it is still kept and reported).
CREATE TABLE ledger.raw_event (
    raw_id        bigserial PRIMARY KEY,
    event_key     text NOT NULL UNIQUE,          -- event_id, or 'noid:'||md5(body)
    event_id      text,                           -- as delivered (may be null)
    payload       jsonb NOT NULL,
    delivered_at  timestamptz,                    -- the feed's delivery time
    received_at   timestamptz NOT NULL,           -- the run window end that fetched it
    batch_id      text NOT NULL,                  -- the sync run that landed it
    deliveries    integer NOT NULL DEFAULT 1 CHECK (deliveries >= 1),
    status        text NOT NULL DEFAULT 'NEW'
                  CHECK (status IN ('NEW', 'APPLIED', 'HELD', 'INVALID', 'IGNORED')),
    status_detail text
);
CREATE INDEX raw_event_status_idx ON ledger.raw_event (status) WHERE status IN ('NEW', 'HELD');
CREATE INDEX raw_event_batch_idx ON ledger.raw_event (batch_id);

-- Return orders and their lines as ReBound knows them, plus the line's
-- current lifecycle state.
CREATE TABLE ledger.return_order (
    return_id       text PRIMARY KEY,
    order_reference text,
    created_at      timestamptz,
    returns_notice  text,
    rma_id          text,
    vret            text,
    source          text NOT NULL DEFAULT 'REBOUND' CHECK (source IN ('REBOUND', 'POST_HOC')),
    amazon_return_id text,                        -- for post-hoc (dark) returns
    payload         jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX return_order_notice_idx ON ledger.return_order (returns_notice);

CREATE TABLE ledger.return_line (
    return_id          text NOT NULL REFERENCES ledger.return_order (return_id),
    line               integer NOT NULL CHECK (line >= 1),
    sku                text NOT NULL,
    reason             text NOT NULL,
    quantity_announced integer NOT NULL CHECK (quantity_announced > 0),
    quantity_received  integer CHECK (quantity_received >= 0),
    grade              text CHECK (grade IN ('A', 'B', 'C', 'D')),
    disposition        text CHECK (disposition IN ('RESTOCKED', 'REFURBISH', 'RECYCLE', 'DESTROY',
                                                   'RETURN_TO_SUPPLIER', 'QUARANTINED', 'REJECTED')),
    state              text NOT NULL DEFAULT 'ANNOUNCED'
                       CHECK (state IN ('ANNOUNCED', 'IN_TRANSIT', 'RECEIVED', 'GRADED', 'DISPOSITIONED',
                                        'CREDIT_SUBMITTED', 'CREDIT_ACCEPTED', 'CLOSED',
                                        'QUARANTINED', 'REJECTED')),
    received_at        timestamptz,
    dispositioned_at   timestamptz,
    updated_at         timestamptz,
    last_event_id      text,
    PRIMARY KEY (return_id, line)
);
CREATE INDEX return_line_state_idx ON ledger.return_line (state);
CREATE INDEX return_line_sku_idx ON ledger.return_line (sku);

-- Every transition of a line, with the event that caused it.
CREATE TABLE ledger.line_history (
    history_id  bigserial PRIMARY KEY,
    return_id   text NOT NULL,
    line        integer NOT NULL,
    from_state  text,
    to_state    text NOT NULL,
    event_id    text,                              -- null for system transitions (confirm, release)
    cause       text NOT NULL,                     -- event type or system action
    batch_id    text NOT NULL,
    at          timestamptz NOT NULL,
    detail      jsonb,
    FOREIGN KEY (return_id, line) REFERENCES ledger.return_line (return_id, line),
    -- one transition per event and line: replaying an event cannot write history twice
    UNIQUE (return_id, line, event_id, to_state)
);

-- Reference data ------------------------------------------------------------

CREATE TABLE ledger.reason_mapping (
    rebound_reason text PRIMARY KEY,
    amazon_reason  text NOT NULL CHECK (amazon_reason ~ '^(CR-|UNDELIVERABLE_)[A-Z_]+$'),
    active         boolean NOT NULL DEFAULT true,
    updated_at     timestamptz NOT NULL,
    updated_by     text NOT NULL,
    reviewed_at    timestamptz
);

CREATE TABLE ledger.reason_mapping_history (
    change_id          bigserial PRIMARY KEY,
    rebound_reason     text NOT NULL,
    old_amazon_reason  text,
    new_amazon_reason  text,
    old_active         boolean,
    new_active         boolean,
    changed_at         timestamptz NOT NULL,
    changed_by         text NOT NULL,
    why                text
);

CREATE TABLE ledger.sku (
    sku        text PRIMARY KEY,
    asin       text NOT NULL CHECK (asin <> ''),
    unit_cost  numeric(12, 2) NOT NULL CHECK (unit_cost >= 0),
    available  integer NOT NULL CHECK (available >= 0),
    updated_at timestamptz NOT NULL,
    updated_by text NOT NULL
);

CREATE TABLE ledger.disposition_policy (
    disposition     text PRIMARY KEY
                    CHECK (disposition IN ('RESTOCKED', 'REFURBISH', 'RECYCLE', 'DESTROY',
                                           'RETURN_TO_SUPPLIER', 'QUARANTINED', 'REJECTED')),
    credit_fraction numeric(5, 4) CHECK (credit_fraction >= 0 AND credit_fraction <= 1)  -- null = hold
);

CREATE TABLE ledger.policy_setting (
    name  text PRIMARY KEY,          -- sellable_grades, credit_window_days, currency, ...
    value jsonb NOT NULL
);

CREATE TABLE ledger.owner_team (
    exception_type text PRIMARY KEY,
    owner          text NOT NULL,
    sla_days       integer NOT NULL CHECK (sla_days > 0),
    what_to_do     text NOT NULL DEFAULT ''
);

-- Exceptions ----------------------------------------------------------------

CREATE TABLE ledger.exception (
    exception_id     bigserial PRIMARY KEY,
    type             text NOT NULL CHECK (type IN (
                        'UNMAPPED_REASON_CODE', 'SKU_MISMATCH', 'INVALID_EVENT', 'OUT_OF_SEQUENCE',
                        'QUANTITY_MISMATCH', 'AMAZON_REJECTED', 'CREDIT_MISSING', 'DARK_RETURN',
                        'CREDIT_MISMATCH', 'SYNC_STALLED')),
    owner            text NOT NULL,
    status           text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'resolved', 'dismissed')),
    -- what the exception is about: a line, an Amazon record or a raw event
    subject_key      text NOT NULL,
    return_id        text,
    line             integer,
    sku              text,
    amazon_return_id text,
    raw_id           bigint REFERENCES ledger.raw_event (raw_id),
    detail           text NOT NULL,
    opened_at        timestamptz NOT NULL,
    opened_by_batch  text NOT NULL,
    resolved_at      timestamptz,
    resolved_by      text,
    resolution       text,
    CHECK ((status = 'open') = (resolved_at IS NULL))
);
-- never the same open exception twice
CREATE UNIQUE INDEX exception_open_once ON ledger.exception (type, subject_key) WHERE status = 'open';
CREATE INDEX exception_line_idx ON ledger.exception (return_id, line);

-- Events held back from the lifecycle (quarantine or out of sequence), re-applied on every run.
CREATE TABLE ledger.held_event (
    raw_id       bigint PRIMARY KEY REFERENCES ledger.raw_event (raw_id),
    return_id    text NOT NULL,
    line         integer,
    reason       text NOT NULL,          -- exception type that holds it
    exception_id bigint REFERENCES ledger.exception (exception_id),
    held_at      timestamptz NOT NULL
);
CREATE INDEX held_event_line_idx ON ledger.held_event (return_id, line);

-- Audit log of every change people (or the system) make to exceptions and reference data.
CREATE TABLE ledger.audit_log (
    audit_id bigserial PRIMARY KEY,
    at       timestamptz NOT NULL,
    actor    text NOT NULL,
    action   text NOT NULL,
    subject  text NOT NULL,
    detail   jsonb NOT NULL DEFAULT '{}'::jsonb
);

-- Amazon outbox -------------------------------------------------------------

CREATE TABLE ledger.amazon_submission (
    submission_id    bigserial PRIMARY KEY,
    idempotency_key  text NOT NULL UNIQUE,          -- 'credit:RID:LINE' / 'inventory:RID:LINE'
    kind             text NOT NULL CHECK (kind IN ('CREDIT_NOTE', 'INVENTORY')),
    return_id        text NOT NULL,
    line             integer NOT NULL,
    sku              text NOT NULL,
    asin             text,
    quantity         integer NOT NULL CHECK (quantity > 0),
    unit_amount      numeric(12, 2) CHECK (unit_amount >= 0),   -- credit per unit (unit cost x fraction)
    currency         text,
    document_id      text,                           -- credit-note id (several lines may share one)
    status           text NOT NULL DEFAULT 'PENDING'
                     CHECK (status IN ('PENDING', 'SUBMITTED', 'ACCEPTED', 'FAILED')),
    transaction_id   text,
    attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error       text,
    created_at       timestamptz NOT NULL,
    created_batch    text NOT NULL,
    submitted_at     timestamptz,
    resolved_at      timestamptz,
    FOREIGN KEY (return_id, line) REFERENCES ledger.return_line (return_id, line)
);
-- at most one credit note action per line, whatever happens
CREATE UNIQUE INDEX amazon_submission_one_credit_per_line
    ON ledger.amazon_submission (return_id, line) WHERE kind = 'CREDIT_NOTE';
CREATE UNIQUE INDEX amazon_submission_one_restock_per_line
    ON ledger.amazon_submission (return_id, line) WHERE kind = 'INVENTORY';
CREATE INDEX amazon_submission_status_idx ON ledger.amazon_submission (kind, status);

-- Amazon-side records (Vendor Central exports) ------------------------------

CREATE TABLE ledger.amazon_return (
    amazon_return_id text PRIMARY KEY,
    returns_notice   text NOT NULL,
    rma_id           text,
    vret             text,
    asin             text,
    sku              text,
    quantity         integer NOT NULL CHECK (quantity >= 0),
    label            text NOT NULL,
    returned_at      date NOT NULL,
    charged_amount   numeric(12, 2),
    source_file      text NOT NULL,
    imported_at      timestamptz NOT NULL,
    linked_return_id text                          -- post-hoc ReBound return for a dark return
);
CREATE INDEX amazon_return_notice_idx ON ledger.amazon_return (returns_notice, sku);

CREATE TABLE ledger.import_file (
    source_file text PRIMARY KEY,
    sha256      text NOT NULL,
    rows        integer NOT NULL,
    imported_at timestamptz NOT NULL
);

-- Reconciliation ------------------------------------------------------------

CREATE TABLE ledger.recon_result (
    period           text NOT NULL,                 -- YYYY-MM, or 'daily:YYYY-MM-DD'
    row_key          text NOT NULL,                 -- 'RID|LINE' or the amazon_return_id
    return_id        text,
    line             integer,
    amazon_return_id text,
    sku              text,
    asin             text,
    quantity_received integer,
    grade            text,
    disposition      text,
    credit_note_id   text,
    credited_quantity integer,
    credited_amount  numeric(12, 2),
    currency         text,
    amazon_status    text,
    recon_status     text NOT NULL CHECK (recon_status IN (
                        'QUARANTINED', 'PENDING', 'ON_HOLD', 'NO_CREDIT_DUE', 'CREDIT_REJECTED',
                        'CREDIT_MISSING', 'CREDIT_MISMATCH', 'MATCHED', 'DARK_RETURN')),
    computed_at      timestamptz NOT NULL,
    PRIMARY KEY (period, row_key)
);

-- Sync bookkeeping ----------------------------------------------------------

CREATE TABLE ledger.sync_cursor (
    name       text PRIMARY KEY,          -- 'rebound_events'
    position   text NOT NULL,             -- opaque cursor of the feed
    updated_at timestamptz NOT NULL,
    batch_id   text NOT NULL
);

CREATE TABLE ledger.sync_run (
    batch_id      text PRIMARY KEY,        -- e.g. 'returns_sync:2026-10-05'
    window_end    timestamptz NOT NULL,
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz,
    stats         jsonb NOT NULL DEFAULT '{}'::jsonb
);
