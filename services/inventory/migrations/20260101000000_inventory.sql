-- Stock per product per location and the reservations that hold it (portable SQL: the same file
-- runs on Postgres and SQLite). Times are Unix seconds. The CHECKs are the last line of defence:
-- the service's conditional updates already keep 0 <= reserved <= on_hand.
CREATE TABLE stock (
    product_id  TEXT   NOT NULL,
    location_id TEXT   NOT NULL,
    on_hand     BIGINT NOT NULL CHECK (on_hand >= 0),
    reserved    BIGINT NOT NULL CHECK (reserved >= 0),
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (product_id, location_id),
    CHECK (reserved <= on_hand)
);
CREATE INDEX stock_by_location ON stock (location_id, product_id);

CREATE TABLE reservations (
    id           TEXT   PRIMARY KEY,
    reference_id TEXT   NOT NULL UNIQUE,
    status       TEXT   NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE INDEX reservations_active_by_expiry ON reservations (status, expires_at);

CREATE TABLE reservation_lines (
    reservation_id TEXT   NOT NULL REFERENCES reservations (id),
    line_no        BIGINT NOT NULL,
    product_id     TEXT   NOT NULL,
    location_id    TEXT   NOT NULL,
    quantity       BIGINT NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (reservation_id, line_no)
);

-- Manual stock changes with their reason; request_id makes AdjustStock idempotent.
CREATE TABLE adjustments (
    id          TEXT   PRIMARY KEY,
    request_id  TEXT   UNIQUE,
    product_id  TEXT   NOT NULL,
    location_id TEXT   NOT NULL,
    delta       BIGINT NOT NULL,
    reason      BIGINT NOT NULL,
    note        TEXT   NOT NULL,
    actor_id    TEXT   NOT NULL,
    on_hand     BIGINT NOT NULL,
    reserved    BIGINT NOT NULL,
    created_at  BIGINT NOT NULL
);
