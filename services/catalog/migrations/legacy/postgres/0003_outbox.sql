-- The change feed (agora_platform::outbox): every domain event, written in
-- the transaction of its change, in commit order. payload is JSON.
CREATE TABLE outbox_events (
    sequence   BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind       TEXT    NOT NULL,
    payload    TEXT    NOT NULL,
    occur_time BIGINT NOT NULL
);
CREATE INDEX outbox_events_by_time ON outbox_events (occur_time);

-- How far pruning went: cursors before it are out of range.
CREATE TABLE outbox_state (
    id             BIGINT PRIMARY KEY CHECK (id = 1),
    pruned_through BIGINT NOT NULL
);
