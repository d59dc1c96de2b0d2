-- Profiles of customers and staff, their addresses and store assignments (portable SQL: the same
-- file runs on Postgres and SQLite). Times are Unix microseconds. A profile's id is the auth
-- account id. An erased profile (DeleteUser) keeps its row with every personal field emptied and
-- `erased_at_us` set, so the id stays reserved and a late account event cannot bring it back.
CREATE TABLE profiles (
    id               TEXT   PRIMARY KEY,
    kind             TEXT   NOT NULL,
    display_name     TEXT   NOT NULL,
    given_name       TEXT   NOT NULL,
    family_name      TEXT   NOT NULL,
    email            TEXT   NOT NULL,
    email_verified   BIGINT NOT NULL,
    phone_number     TEXT   NOT NULL,
    locale           TEXT   NOT NULL,
    consent_email    BIGINT NOT NULL,
    consent_sms      BIGINT NOT NULL,
    consent_push     BIGINT NOT NULL,
    consent_source   TEXT   NOT NULL,
    consent_at_us    BIGINT NOT NULL,
    version          BIGINT NOT NULL,
    erased_at_us     BIGINT,
    created_at_us    BIGINT NOT NULL,
    updated_at_us    BIGINT NOT NULL
);
CREATE INDEX profiles_by_time ON profiles (created_at_us, id);

-- Saved postal addresses, in the order the user gave them. The address itself is the encoded
-- common.v1.PostalAddress in base64 (read back whole, never queried).
CREATE TABLE addresses (
    user_id        TEXT   NOT NULL REFERENCES profiles (id),
    position       BIGINT NOT NULL,
    id             TEXT   NOT NULL,
    label          TEXT   NOT NULL,
    postal_address TEXT   NOT NULL,
    is_default     BIGINT NOT NULL,
    PRIMARY KEY (user_id, position)
);

-- The shop stores a staff member works at.
CREATE TABLE store_assignments (
    user_id  TEXT NOT NULL REFERENCES profiles (id),
    store_id TEXT NOT NULL,
    PRIMARY KEY (user_id, store_id)
);
CREATE INDEX store_assignments_by_store ON store_assignments (store_id, user_id);
