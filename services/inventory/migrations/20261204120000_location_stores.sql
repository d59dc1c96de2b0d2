-- Which store a location belongs to besides the stores' own locations (location id = store id):
-- vending machines (location id = machine id), from shop's `machine.registered`. Store staff
-- read and change only the stock of their stores' locations (docs/identity.md).
CREATE TABLE location_stores (
    location_id TEXT PRIMARY KEY,
    store_id    TEXT NOT NULL
);
CREATE INDEX location_stores_by_store ON location_stores (store_id);
