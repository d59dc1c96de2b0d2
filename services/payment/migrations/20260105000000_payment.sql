-- Payments, refunds, the ledger, card tokens and the saga state of orders (portable SQL: the same
-- file runs on Postgres and SQLite). Times are Unix microseconds; money is integer minor units.

-- Card tokens. Never the card number: the provider's reference of the card (for the simulated
-- processor, the outcome class of the test card), its brand and last 4 digits.
CREATE TABLE cards (
    token        TEXT   PRIMARY KEY,
    provider_ref TEXT   NOT NULL,
    brand        TEXT   NOT NULL,
    last4        TEXT   NOT NULL,
    exp_month    BIGINT NOT NULL,
    exp_year     BIGINT NOT NULL,
    created_at   BIGINT NOT NULL
);

-- One payment (charge) per order or vend: order_id is UNIQUE, which makes charges idempotent
-- per order. PENDING rows are the charge work queue: the provider is called outside any
-- transaction with idempotency key = order_id, and the row is finalized by a conditional
-- UPDATE ... WHERE status = 'PENDING'.
CREATE TABLE payments (
    id                 TEXT   PRIMARY KEY,
    order_id           TEXT   NOT NULL UNIQUE,
    customer_id        TEXT   NOT NULL,
    currency           TEXT   NOT NULL,
    amount_minor       BIGINT NOT NULL CHECK (amount_minor >= 0),
    -- Refunds PENDING or SUCCEEDED: what may still be refunded is amount - refund_held.
    refund_held_minor  BIGINT NOT NULL DEFAULT 0,
    refunded_minor     BIGINT NOT NULL DEFAULT 0,
    status             TEXT   NOT NULL,
    decline_reason     BIGINT NOT NULL DEFAULT 0,
    decline_message    TEXT   NOT NULL DEFAULT '',
    card_token         TEXT   NOT NULL,
    card_brand         TEXT   NOT NULL,
    card_last4         TEXT   NOT NULL,
    provider_reference TEXT   NOT NULL DEFAULT '',
    description        TEXT   NOT NULL DEFAULT '',
    traceparent        TEXT   NOT NULL DEFAULT '',
    attempts           BIGINT NOT NULL DEFAULT 0,
    next_attempt_at    BIGINT NOT NULL,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL,
    CHECK (refunded_minor <= refund_held_minor AND refund_held_minor <= amount_minor)
);
CREATE INDEX payments_due ON payments (status, next_attempt_at);

-- Refunds; PENDING rows are the refund work queue (provider idempotency key = refund id).
CREATE TABLE refunds (
    id                 TEXT   PRIMARY KEY,
    payment_id         TEXT   NOT NULL REFERENCES payments (id),
    idempotency_key    TEXT   NOT NULL,
    currency           TEXT   NOT NULL,
    amount_minor       BIGINT NOT NULL CHECK (amount_minor > 0),
    reason             TEXT   NOT NULL,
    status             TEXT   NOT NULL,
    provider_reference TEXT   NOT NULL DEFAULT '',
    traceparent        TEXT   NOT NULL DEFAULT '',
    attempts           BIGINT NOT NULL DEFAULT 0,
    next_attempt_at    BIGINT NOT NULL,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL,
    UNIQUE (payment_id, idempotency_key)
);
CREATE INDEX refunds_due ON refunds (status, next_attempt_at);

-- The append-only ledger: one row per finished charge or refund (signed amount).
CREATE TABLE transactions (
    id                 TEXT   PRIMARY KEY,
    payment_id         TEXT   NOT NULL,
    order_id           TEXT   NOT NULL,
    customer_id        TEXT   NOT NULL,
    kind               TEXT   NOT NULL,
    currency           TEXT   NOT NULL,
    amount_minor       BIGINT NOT NULL,
    status             TEXT   NOT NULL,
    reason             TEXT   NOT NULL,
    provider_reference TEXT   NOT NULL,
    created_at         BIGINT NOT NULL
);
CREATE INDEX transactions_by_time ON transactions (created_at, id);
CREATE INDEX transactions_by_payment ON transactions (payment_id);
CREATE INDEX transactions_by_order ON transactions (order_id);

-- What the saga told payment about each order, in whatever order the events came: the amount
-- and card once order.created arrived (known = 1), whether stock is reserved, whether the order
-- was cancelled (a tombstone: a later inventory.reserved never charges).
CREATE TABLE saga_orders (
    order_id     TEXT   PRIMARY KEY,
    known        BIGINT NOT NULL DEFAULT 0,
    customer_id  TEXT   NOT NULL DEFAULT '',
    currency     TEXT   NOT NULL DEFAULT '',
    amount_minor BIGINT NOT NULL DEFAULT 0,
    card_token   TEXT   NOT NULL DEFAULT '',
    reserved     BIGINT NOT NULL DEFAULT 0,
    cancelled    BIGINT NOT NULL DEFAULT 0,
    updated_at   BIGINT NOT NULL
);

-- The simulated card processor's own records (it stands for an external system; its state lives
-- here so that its idempotency survives restarts): one row per idempotency key.
CREATE TABLE sim_processor_ops (
    idempotency_key TEXT   PRIMARY KEY,
    kind            TEXT   NOT NULL,
    charge_ref      TEXT   NOT NULL DEFAULT '',
    outcome         TEXT   NOT NULL,
    reference       TEXT   NOT NULL,
    currency        TEXT   NOT NULL,
    amount_minor    BIGINT NOT NULL,
    created_at      BIGINT NOT NULL
);
CREATE INDEX sim_processor_ops_by_charge ON sim_processor_ops (charge_ref);
CREATE INDEX sim_processor_ops_by_reference ON sim_processor_ops (reference);
