-- The order saga's memory in inventory, one row per order id (portable SQL): what inventory did
-- for the order, so a business fact arriving twice under different event ids (or out of order)
-- has one effect. state: RESERVED (reservation_id set), REJECTED (out of stock), CANCELLED (the
-- order was cancelled; a tombstone when it came before order.created, so nothing is reserved
-- later), COMMITTED.
CREATE TABLE saga_orders (
    order_id       TEXT   PRIMARY KEY,
    state          TEXT   NOT NULL,
    reservation_id TEXT   NOT NULL,
    updated_at     BIGINT NOT NULL
);
