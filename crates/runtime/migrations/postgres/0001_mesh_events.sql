-- The runtime's own tables, in every service's schema: the transactional outbox (which is also
-- the service's audit trail) and the ids of events its consumers have handled.
CREATE TABLE mesh_outbox (
    seq            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id       TEXT   NOT NULL UNIQUE,
    event_type     TEXT   NOT NULL,
    subject        TEXT   NOT NULL,
    sequence       BIGINT NOT NULL,
    part           BIGINT NOT NULL,
    occurred_at_us BIGINT NOT NULL,
    envelope       BYTEA  NOT NULL,
    sent_at_us     BIGINT,
    UNIQUE (subject, sequence)
);
CREATE INDEX mesh_outbox_unsent ON mesh_outbox (part, seq) WHERE sent_at_us IS NULL;
CREATE INDEX mesh_outbox_sent ON mesh_outbox (sent_at_us) WHERE sent_at_us IS NOT NULL;

-- One row per relay partition: relays lock partitions with FOR UPDATE SKIP LOCKED, so replicas
-- relay disjoint sets of subjects at once while each subject stays in order.
CREATE TABLE mesh_outbox_partitions (part BIGINT PRIMARY KEY);
INSERT INTO mesh_outbox_partitions (part) SELECT generate_series(0, 15);

CREATE TABLE mesh_handled_events (
    consumer      TEXT   NOT NULL,
    event_id      TEXT   NOT NULL,
    handled_at_us BIGINT NOT NULL,
    PRIMARY KEY (consumer, event_id)
);
