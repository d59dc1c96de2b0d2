-- Stores, the vending machine registry and each machine's last known status (portable SQL: the
-- same file runs on Postgres and SQLite). Registration times are Unix seconds; status times are
-- Unix microseconds (heartbeats come often, and reports must be ordered).
CREATE TABLE stores (
    store_id      TEXT   PRIMARY KEY,
    display_name  TEXT   NOT NULL,
    address_lines TEXT   NOT NULL,
    locality      TEXT   NOT NULL,
    region_code   TEXT   NOT NULL,
    time_zone     TEXT   NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);
CREATE INDEX stores_by_region ON stores (region_code, store_id);

CREATE TABLE machines (
    machine_id           TEXT             PRIMARY KEY,
    store_id             TEXT             NOT NULL REFERENCES stores (store_id),
    model                TEXT             NOT NULL,
    slot_count           BIGINT           NOT NULL CHECK (slot_count BETWEEN 1 AND 200),
    latitude             DOUBLE PRECISION NOT NULL,
    longitude            DOUBLE PRECISION NOT NULL,
    location_description TEXT             NOT NULL,
    firmware_version     TEXT             NOT NULL,
    -- UNSPECIFIED (never seen), ONLINE or OFFLINE.
    connectivity         TEXT             NOT NULL,
    last_heartbeat_us    BIGINT           NOT NULL,
    -- Active fault codes, sorted, joined by ','; empty when healthy.
    faults               TEXT             NOT NULL,
    temperature_celsius  DOUBLE PRECISION NOT NULL,
    door_open            BIGINT           NOT NULL,
    session_id           TEXT             NOT NULL,
    -- update_time of the last report applied (older reports are ignored).
    status_updated_us    BIGINT           NOT NULL,
    created_at           BIGINT           NOT NULL,
    updated_at           BIGINT           NOT NULL
);
CREATE INDEX machines_by_store ON machines (store_id, machine_id);
CREATE INDEX machines_by_connectivity ON machines (connectivity, machine_id);
