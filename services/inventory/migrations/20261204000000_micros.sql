-- One time unit in every service: inventory's times move from Unix seconds to Unix
-- microseconds (`mesh_runtime::domain::time`); existing rows are converted and the columns
-- renamed to say so, so a replica still on the old release fails on the old name instead of
-- writing seconds among microseconds. Portable SQL (Postgres and SQLite).
UPDATE stock SET updated_at = updated_at * 1000000;
ALTER TABLE stock RENAME COLUMN updated_at TO updated_us;
UPDATE reservations SET created_at = created_at * 1000000, expires_at = expires_at * 1000000,
    updated_at = updated_at * 1000000;
ALTER TABLE reservations RENAME COLUMN created_at TO created_us;
ALTER TABLE reservations RENAME COLUMN expires_at TO expires_us;
ALTER TABLE reservations RENAME COLUMN updated_at TO updated_us;
UPDATE adjustments SET created_at = created_at * 1000000;
ALTER TABLE adjustments RENAME COLUMN created_at TO created_us;
UPDATE saga_orders SET updated_at = updated_at * 1000000;
ALTER TABLE saga_orders RENAME COLUMN updated_at TO updated_us;
