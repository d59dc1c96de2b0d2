-- One time unit in every service: auth's times move from Unix seconds to Unix microseconds
-- (`mesh_runtime::domain::time`); existing rows are converted and the columns renamed to say so.
-- Portable SQL (Postgres and SQLite); NULL stays NULL.
UPDATE accounts SET created_at = created_at * 1000000, disabled_at = disabled_at * 1000000;
ALTER TABLE accounts RENAME COLUMN created_at TO created_us;
ALTER TABLE accounts RENAME COLUMN disabled_at TO disabled_us;
UPDATE sessions SET created_at = created_at * 1000000, expires_at = expires_at * 1000000,
    revoked_at = revoked_at * 1000000;
ALTER TABLE sessions RENAME COLUMN created_at TO created_us;
ALTER TABLE sessions RENAME COLUMN expires_at TO expires_us;
ALTER TABLE sessions RENAME COLUMN revoked_at TO revoked_us;
UPDATE refresh_tokens SET created_at = created_at * 1000000, expires_at = expires_at * 1000000,
    used_at = used_at * 1000000;
ALTER TABLE refresh_tokens RENAME COLUMN created_at TO created_us;
ALTER TABLE refresh_tokens RENAME COLUMN expires_at TO expires_us;
ALTER TABLE refresh_tokens RENAME COLUMN used_at TO used_us;
UPDATE signing_keys SET created_at = created_at * 1000000, retired_at = retired_at * 1000000,
    expires_at = expires_at * 1000000;
ALTER TABLE signing_keys RENAME COLUMN created_at TO created_us;
ALTER TABLE signing_keys RENAME COLUMN retired_at TO retired_us;
ALTER TABLE signing_keys RENAME COLUMN expires_at TO expires_us;
UPDATE device_credentials SET issued_at = issued_at * 1000000, expires_at = expires_at * 1000000;
ALTER TABLE device_credentials RENAME COLUMN issued_at TO issued_us;
ALTER TABLE device_credentials RENAME COLUMN expires_at TO expires_us;
