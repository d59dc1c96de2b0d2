-- One time unit in every service: times move from Unix seconds to Unix microseconds (existing
-- rows converted, columns renamed to say so). Vends written within one second now keep their
-- order in ListVends.
UPDATE planograms SET updated_at = updated_at * 1000000;
ALTER TABLE planograms RENAME COLUMN updated_at TO updated_us;
UPDATE restocks SET created_at = created_at * 1000000;
ALTER TABLE restocks RENAME COLUMN created_at TO created_us;
UPDATE vends SET created_at = created_at * 1000000, updated_at = updated_at * 1000000;
ALTER TABLE vends RENAME COLUMN created_at TO created_us;
ALTER TABLE vends RENAME COLUMN updated_at TO updated_us;
