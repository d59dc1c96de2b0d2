-- What auth keeps from the user service's events (portable SQL, Postgres and SQLite).
-- An erased account (user.deleted) is disabled: `disabled_at` set, its email replaced by
-- `erased-<id>@erased.invalid`, its display name and password hash emptied, its sessions ended.
ALTER TABLE accounts ADD COLUMN disabled_at BIGINT;

-- The stores a staff member works at, from `user.updated` snapshots (comma-separated shop store
-- ids; `version` is the profile's, so an older snapshot never overwrites a newer one). Access
-- tokens of staff carry them as the `stores` claim.
CREATE TABLE account_stores (
    account_id TEXT   PRIMARY KEY,
    store_ids  TEXT   NOT NULL,
    version    BIGINT NOT NULL
);
