-- Refunds of confirmed orders (docs/saga.md, "Refunds"): one row per refund, unique per
-- (order, idempotency key), with the request's fingerprint (the same key with another request
-- is refused); its lines with their amounts and stock dispositions (RESTOCK / WRITE_OFF); the
-- units of each order line refunded so far (never more than bought); the order's refunded sum.
-- status: the order.v1.RefundStatus names REQUESTED, COMPLETED, FAILED.
ALTER TABLE order_lines ADD COLUMN refunded_quantity BIGINT NOT NULL DEFAULT 0;
ALTER TABLE orders ADD COLUMN refunded_minor BIGINT NOT NULL DEFAULT 0;

CREATE TABLE order_refunds (
    id                TEXT   PRIMARY KEY,
    order_id          TEXT   NOT NULL REFERENCES orders (id),
    idempotency_key   TEXT   NOT NULL,
    request_hash      TEXT   NOT NULL,
    amount_minor      BIGINT NOT NULL,
    reason            TEXT   NOT NULL,
    status            TEXT   NOT NULL,
    payment_refund_id TEXT   NOT NULL,
    created_at_us     BIGINT NOT NULL,
    updated_at_us     BIGINT NOT NULL,
    UNIQUE (order_id, idempotency_key)
);

CREATE TABLE order_refund_lines (
    refund_id    TEXT   NOT NULL REFERENCES order_refunds (id),
    line_no      BIGINT NOT NULL,
    product_id   TEXT   NOT NULL,
    quantity     BIGINT NOT NULL CHECK (quantity > 0),
    amount_minor BIGINT NOT NULL,
    disposition  TEXT   NOT NULL,
    PRIMARY KEY (refund_id, line_no)
);
