-- Where each upstream change feed was applied up to (agora_platform::feed):
-- moved in the same transaction as the effects of the event it names.
CREATE TABLE IF NOT EXISTS feed_cursors (
    feed     TEXT   PRIMARY KEY,
    sequence BIGINT NOT NULL
);
