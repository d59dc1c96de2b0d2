-- Report's read models and its own copy of every event it handled (the rebuild's history).
-- Every read-model table carries `gen`: rows of report_state.active_gen answer queries; a
-- rebuild writes the next generation beside it (the shadow) and swaps it in.

CREATE TABLE report_state (
    id INTEGER PRIMARY KEY,
    active_gen BIGINT NOT NULL,
    log_seq BIGINT NOT NULL,
    newest_event_us BIGINT,
    building_gen BIGINT,
    CHECK (id = 1)
);
INSERT INTO report_state (id, active_gen, log_seq) VALUES (1, 1, 0);

CREATE TABLE report_event_log (
    seq BIGINT PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    event_type TEXT NOT NULL,
    source TEXT NOT NULL,
    subject TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    event_time_us BIGINT NOT NULL,
    envelope BYTEA NOT NULL
);
CREATE INDEX report_event_log_subject ON report_event_log (subject);
CREATE INDEX report_event_log_correlation ON report_event_log (correlation_id);

CREATE TABLE report_sales_day (
    gen BIGINT NOT NULL,
    day TEXT NOT NULL,
    store_id TEXT NOT NULL,
    currency TEXT NOT NULL,
    order_count BIGINT NOT NULL,
    vend_count BIGINT NOT NULL,
    units_sold BIGINT NOT NULL,
    gross_minor BIGINT NOT NULL,
    discount_minor BIGINT NOT NULL,
    refund_minor BIGINT NOT NULL,
    PRIMARY KEY (gen, day, store_id, currency)
);

CREATE TABLE report_sale_ref (
    gen BIGINT NOT NULL,
    reference_id TEXT NOT NULL,
    store_id TEXT NOT NULL,
    PRIMARY KEY (gen, reference_id)
);

-- Refunds of sales not seen yet (a refund may arrive before its sale: different streams),
-- counted under the online store until the sale names its store.
CREATE TABLE report_refund_unplaced (
    gen BIGINT NOT NULL,
    reference_id TEXT NOT NULL,
    day TEXT NOT NULL,
    currency TEXT NOT NULL,
    amount_minor BIGINT NOT NULL,
    PRIMARY KEY (gen, reference_id, day, currency)
);

CREATE TABLE report_product_day (
    gen BIGINT NOT NULL,
    day TEXT NOT NULL,
    store_id TEXT NOT NULL,
    product_id TEXT NOT NULL,
    currency TEXT NOT NULL,
    units BIGINT NOT NULL,
    revenue_minor BIGINT NOT NULL,
    PRIMARY KEY (gen, day, store_id, product_id, currency)
);

CREATE TABLE report_product_name (
    gen BIGINT NOT NULL,
    product_id TEXT NOT NULL,
    name TEXT NOT NULL,
    PRIMARY KEY (gen, product_id)
);

CREATE TABLE report_stock (
    gen BIGINT NOT NULL,
    location_id TEXT NOT NULL,
    product_id TEXT NOT NULL,
    on_hand BIGINT NOT NULL,
    reserved BIGINT NOT NULL,
    PRIMARY KEY (gen, location_id, product_id)
);

CREATE TABLE report_stock_out_day (
    gen BIGINT NOT NULL,
    location_id TEXT NOT NULL,
    product_id TEXT NOT NULL,
    day TEXT NOT NULL,
    units BIGINT NOT NULL,
    PRIMARY KEY (gen, location_id, product_id, day)
);
