-- The number of an order's last status-history entry, kept on the order: a transition advances
-- it in its conditional UPDATE and numbers its entry with it, so the update and the entry can
-- be one statement (a MAX over the history in that statement would read the statement's
-- snapshot, stale under a concurrent transition that committed while this one waited for the
-- row lock).
ALTER TABLE orders ADD COLUMN history_seq BIGINT NOT NULL DEFAULT 1;
UPDATE orders SET history_seq = (
    SELECT COALESCE(MAX(h.seq), 1) FROM order_status_history h WHERE h.order_id = orders.id
);
