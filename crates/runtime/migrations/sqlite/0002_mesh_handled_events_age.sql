-- The relay's housekeeping deletes handled-event records by age: index them by it.
CREATE INDEX mesh_handled_events_age ON mesh_handled_events (handled_at_us);
