-- Planograms, slots and vends of the vm service (portable SQL: Postgres and SQLite). Times are
-- Unix seconds.
CREATE TABLE planograms (
    machine_id TEXT   PRIMARY KEY,
    store_id   TEXT   NOT NULL,
    version    BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE slots (
    machine_id  TEXT   NOT NULL,
    code        TEXT   NOT NULL,
    product_id  TEXT   NOT NULL,
    currency    TEXT   NOT NULL,
    price_minor BIGINT NOT NULL,
    quantity    BIGINT NOT NULL CHECK (quantity >= 0),
    capacity    BIGINT NOT NULL CHECK (capacity >= 1),
    PRIMARY KEY (machine_id, code),
    CHECK (quantity <= capacity)
);

-- Restock requests already applied (idempotency keys).
CREATE TABLE restocks (
    machine_id      TEXT   NOT NULL,
    idempotency_key TEXT   NOT NULL,
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (machine_id, idempotency_key)
);

-- One row per vend. `step` is the side effect to perform next (written before it runs), so a
-- restarted service resumes or compensates every PENDING vend from its step.
CREATE TABLE vends (
    id              TEXT   PRIMARY KEY,
    machine_id      TEXT   NOT NULL,
    store_id        TEXT   NOT NULL,
    slot            TEXT   NOT NULL,
    product_id      TEXT   NOT NULL,
    currency        TEXT   NOT NULL,
    price_minor     BIGINT NOT NULL,
    idempotency_key TEXT   NOT NULL,
    customer_id     TEXT   NOT NULL,
    card_token      TEXT   NOT NULL,
    status          TEXT   NOT NULL,
    step            TEXT   NOT NULL,
    failure_reason  TEXT   NOT NULL,
    final_status    TEXT   NOT NULL,
    reservation_id  TEXT   NOT NULL,
    payment_id      TEXT   NOT NULL,
    command_id      TEXT   NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    UNIQUE (machine_id, idempotency_key)
);
CREATE INDEX vends_pending ON vends (status, created_at);
CREATE INDEX vends_by_machine ON vends (machine_id, created_at);
