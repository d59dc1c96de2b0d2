-- Templates, preferences and the delivery log (portable SQL: the same file runs on Postgres and
-- SQLite). Times are Unix microseconds. Channels are stored by name: LOG, WEBHOOK, EMAIL.

CREATE TABLE templates (
    id         TEXT   PRIMARY KEY,
    event_type TEXT   NOT NULL,
    channel    TEXT   NOT NULL,
    locale     TEXT   NOT NULL,
    subject    TEXT   NOT NULL,
    body       TEXT   NOT NULL,
    enabled    BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (event_type, channel, locale)
);

-- Built-in defaults for the saga's outcomes (replaceable with UpsertTemplate).
INSERT INTO templates (id, event_type, channel, locale, subject, body, enabled, updated_at) VALUES
 ('default-order-confirmed-log', 'order.confirmed', 'LOG', '', 'Order {{order_id}} confirmed', 'Order {{order_id}} of customer {{customer_id}} is confirmed: {{total.amount_minor}} {{total.currency_code}} charged (payment {{payment_id}}).', 1, 0),
 ('default-order-confirmed-webhook', 'order.confirmed', 'WEBHOOK', '', 'Order {{order_id}} confirmed', 'Order {{order_id}} is confirmed: {{total.amount_minor}} {{total.currency_code}} charged.', 1, 0),
 ('default-order-confirmed-email', 'order.confirmed', 'EMAIL', '', 'Your order {{order_id}} is confirmed', 'Thank you! Your order {{order_id}} is confirmed and {{total.amount_minor}} {{total.currency_code}} (minor units) were charged.', 1, 0),
 ('default-order-cancelled-log', 'order.cancelled', 'LOG', '', 'Order {{order_id}} cancelled', 'Order {{order_id}} of customer {{customer_id}} is cancelled: {{reason}} {{detail}}', 1, 0),
 ('default-order-cancelled-webhook', 'order.cancelled', 'WEBHOOK', '', 'Order {{order_id}} cancelled', 'Order {{order_id}} is cancelled: {{reason}} {{detail}}', 1, 0),
 ('default-order-cancelled-email', 'order.cancelled', 'EMAIL', '', 'Your order {{order_id}} was cancelled', 'Your order {{order_id}} was cancelled ({{reason}}). {{detail}} Any amount charged is refunded.', 1, 0);

-- Opt-outs per user; everything is opted in by default. Lists are comma-separated names.
CREATE TABLE preferences (
    user_id            TEXT   PRIMARY KEY,
    opted_out_channels TEXT   NOT NULL,
    muted_event_types  TEXT   NOT NULL,
    email              TEXT   NOT NULL,
    webhook_url        TEXT   NOT NULL,
    updated_at         BIGINT NOT NULL
);

-- The delivery log, which is also the send queue: QUEUED rows are sent by the worker outside
-- any transaction and finished with a conditional UPDATE ... WHERE status = 'QUEUED'.
-- dedupe_key makes one delivery per (event fact, channel): "<event type>:<order id>:<channel>"
-- for events, "send:<idempotency key>:<channel>" for keyed ad hoc sends, NULL otherwise.
CREATE TABLE deliveries (
    id              TEXT   PRIMARY KEY,
    dedupe_key      TEXT   UNIQUE,
    user_id         TEXT   NOT NULL,
    channel         TEXT   NOT NULL,
    recipient       TEXT   NOT NULL,
    event_id        TEXT   NOT NULL,
    event_type      TEXT   NOT NULL,
    template_id     TEXT   NOT NULL,
    subject         TEXT   NOT NULL,
    body            TEXT   NOT NULL,
    status          TEXT   NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    last_error      TEXT   NOT NULL DEFAULT '',
    traceparent     TEXT   NOT NULL DEFAULT '',
    next_attempt_at BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    last_attempt_at BIGINT NOT NULL DEFAULT 0,
    sent_at         BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX deliveries_due ON deliveries (status, next_attempt_at);
CREATE INDEX deliveries_by_time ON deliveries (created_at, id);
CREATE INDEX deliveries_by_user ON deliveries (user_id, created_at);
