-- The store an order was placed for (empty: the online channel), and ListOrders by store.
ALTER TABLE orders ADD COLUMN store_id TEXT NOT NULL DEFAULT '';
CREATE INDEX orders_by_store ON orders (store_id, created_at_us, id);
