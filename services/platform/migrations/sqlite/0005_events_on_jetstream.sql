-- Change feeds on NATS JetStream (agora_platform::events), used only with
-- AGORA_EVENTS=jetstream; added tables and a column with a default, so
-- replicas of the release before keep working during a rolling update.

-- The relay's position: the last outbox sequence JetStream acknowledged.
-- Pruning keeps every event after it.
CREATE TABLE IF NOT EXISTS outbox_relay (
    id              BIGINT PRIMARY KEY CHECK (id = 1),
    relayed_through BIGINT NOT NULL
);

-- A partition's place in its stream, beside the last event applied
-- (sequence): where its consumer starts again.
ALTER TABLE feed_cursors ADD COLUMN stream_sequence BIGINT NOT NULL DEFAULT 0;

-- The replicas that share a stream's partitions, each alive while it says
-- so here (PostgreSQL; on SQLite one process consumes every partition).
CREATE TABLE IF NOT EXISTS event_consumers (
    consumer_group TEXT   NOT NULL,
    member         TEXT   NOT NULL,
    seen_at        BIGINT NOT NULL,
    PRIMARY KEY (consumer_group, member)
);
