-- One time unit in every service: registration times move from Unix seconds to Unix
-- microseconds like the status times (existing rows converted, columns renamed to say so).
UPDATE stores SET created_at = created_at * 1000000, updated_at = updated_at * 1000000;
ALTER TABLE stores RENAME COLUMN created_at TO created_us;
ALTER TABLE stores RENAME COLUMN updated_at TO updated_us;
UPDATE machines SET created_at = created_at * 1000000, updated_at = updated_at * 1000000;
ALTER TABLE machines RENAME COLUMN created_at TO created_us;
ALTER TABLE machines RENAME COLUMN updated_at TO updated_us;
