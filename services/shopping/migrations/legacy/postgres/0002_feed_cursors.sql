-- Where each upstream change feed was read up to (agora_platform::feed):
-- moved in the same transaction as the effects of the event it names.
CREATE TABLE feed_cursors (
    feed     TEXT   PRIMARY KEY,
    sequence BIGINT NOT NULL
);
