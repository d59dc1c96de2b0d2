-- The runtime's own tables (see the Postgres twin): the transactional outbox, which is also the
-- service's audit trail, and the ids of events its consumers have handled. SQLite has a single
-- writer, so it needs no relay partitions.
CREATE TABLE mesh_outbox (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id       TEXT    NOT NULL UNIQUE,
    event_type     TEXT    NOT NULL,
    subject        TEXT    NOT NULL,
    sequence       INTEGER NOT NULL,
    part           INTEGER NOT NULL,
    occurred_at_us INTEGER NOT NULL,
    envelope       BLOB    NOT NULL,
    sent_at_us     INTEGER,
    UNIQUE (subject, sequence)
);
CREATE INDEX mesh_outbox_unsent ON mesh_outbox (seq) WHERE sent_at_us IS NULL;
CREATE INDEX mesh_outbox_sent ON mesh_outbox (sent_at_us) WHERE sent_at_us IS NOT NULL;

CREATE TABLE mesh_handled_events (
    consumer      TEXT    NOT NULL,
    event_id      TEXT    NOT NULL,
    handled_at_us INTEGER NOT NULL,
    PRIMARY KEY (consumer, event_id)
);
