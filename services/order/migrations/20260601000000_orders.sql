-- Orders, their lines and status history (portable SQL: the same file runs on Postgres and
-- SQLite). Money is integer minor units of the order's currency; times are Unix microseconds;
-- statuses are the order.v1.OrderStatus names. The shipping address is the encoded
-- common.v1.PostalAddress in base64 (read back whole, never queried).
CREATE TABLE orders (
    id               TEXT   PRIMARY KEY,
    customer_id      TEXT   NOT NULL,
    idempotency_key  TEXT   NOT NULL,
    request_hash     TEXT   NOT NULL,
    status           TEXT   NOT NULL,
    currency_code    TEXT   NOT NULL,
    subtotal_minor   BIGINT NOT NULL,
    discount_minor   BIGINT NOT NULL,
    shipping_minor   BIGINT NOT NULL,
    total_minor      BIGINT NOT NULL,
    shipping_address TEXT   NOT NULL,
    promo_code       TEXT   NOT NULL,
    card_token       TEXT   NOT NULL,
    card_last4       TEXT   NOT NULL,
    payment_id       TEXT   NOT NULL,
    reservation_id   TEXT   NOT NULL,
    cancel_reason    TEXT   NOT NULL,
    created_at_us    BIGINT NOT NULL,
    updated_at_us    BIGINT NOT NULL,
    UNIQUE (customer_id, idempotency_key)
);
CREATE INDEX orders_by_customer ON orders (customer_id, created_at_us, id);
CREATE INDEX orders_by_time ON orders (created_at_us, id);
CREATE INDEX orders_open_by_age ON orders (status, created_at_us);

CREATE TABLE order_lines (
    order_id         TEXT   NOT NULL REFERENCES orders (id),
    line_no          BIGINT NOT NULL,
    product_id       TEXT   NOT NULL,
    sku              TEXT   NOT NULL,
    name             TEXT   NOT NULL,
    quantity         BIGINT NOT NULL CHECK (quantity > 0),
    unit_price_minor BIGINT NOT NULL,
    PRIMARY KEY (order_id, line_no)
);

CREATE TABLE order_status_history (
    order_id TEXT   NOT NULL REFERENCES orders (id),
    seq      BIGINT NOT NULL,
    status   TEXT   NOT NULL,
    reason   TEXT   NOT NULL,
    event_id TEXT   NOT NULL,
    at_us    BIGINT NOT NULL,
    PRIMARY KEY (order_id, seq)
);
