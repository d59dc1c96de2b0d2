-- The catalog (portable SQL: the same file runs on Postgres and SQLite).
CREATE TABLE categories (
    id         TEXT   PRIMARY KEY,
    name       TEXT   NOT NULL,
    parent_id  TEXT   REFERENCES categories (id),
    created_us BIGINT NOT NULL
);
CREATE INDEX categories_by_name ON categories (name, id);

-- Prices in integer minor units of an ISO 4217 currency; attributes as a JSON object.
CREATE TABLE products (
    id           TEXT   PRIMARY KEY,
    sku          TEXT   NOT NULL UNIQUE,
    name         TEXT   NOT NULL,
    description  TEXT   NOT NULL,
    category_id  TEXT   REFERENCES categories (id),
    currency     TEXT   NOT NULL,
    amount_minor BIGINT NOT NULL CHECK (amount_minor >= 0),
    active       BIGINT NOT NULL,
    image_url    TEXT   NOT NULL,
    attributes   TEXT   NOT NULL,
    created_us   BIGINT NOT NULL,
    updated_us   BIGINT NOT NULL
);
CREATE INDEX products_by_name ON products (name, id);
CREATE INDEX products_by_category ON products (category_id, name, id);
