-- The auth service's tables (portable SQL: the same file runs on Postgres and SQLite).
-- Times are Unix seconds; roles are comma-separated role names.
CREATE TABLE accounts (
    id            TEXT   PRIMARY KEY,
    email         TEXT   NOT NULL UNIQUE,
    password_hash TEXT   NOT NULL,
    display_name  TEXT   NOT NULL,
    roles         TEXT   NOT NULL,
    created_at    BIGINT NOT NULL
);

-- A session is a refresh-token family: every rotation of one login stays in it, and
-- revoking it (logout, reuse of a consumed token) ends all of them.
CREATE TABLE sessions (
    id            TEXT   PRIMARY KEY,
    account_id    TEXT   NOT NULL REFERENCES accounts (id),
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    revoked_at    BIGINT,
    revoke_reason TEXT
);

-- Refresh tokens by SHA-256 of the token; `used_at` set when rotated (consumed).
CREATE TABLE refresh_tokens (
    token_hash TEXT   PRIMARY KEY,
    session_id TEXT   NOT NULL REFERENCES sessions (id),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT
);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);

-- Signing keys. The active key has `retired_at` NULL; retired keys stay published until
-- `expires_at`. `private_pem` is NULL for keys loaded from a file (never stored) and for
-- retired keys.
CREATE TABLE signing_keys (
    kid         TEXT   PRIMARY KEY,
    public_x    TEXT   NOT NULL,
    private_pem TEXT,
    created_at  BIGINT NOT NULL,
    retired_at  BIGINT,
    expires_at  BIGINT
);

-- Device credentials by SHA-256 of the credential; issuing again replaces the row.
CREATE TABLE device_credentials (
    device_id  TEXT   PRIMARY KEY,
    token_hash TEXT   NOT NULL,
    issued_at  BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
