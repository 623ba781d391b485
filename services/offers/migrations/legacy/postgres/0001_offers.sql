-- Timed offers, PostgreSQL dialect. product_id and customer_id are ids owned by
-- the catalog and customers contexts; nothing else of theirs is kept here.
-- customer_id '' means an offer for every customer. Times are microseconds.

CREATE TABLE offers (
    seq              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    offer_id         TEXT    NOT NULL UNIQUE,
    product_id       TEXT    NOT NULL,
    customer_id      TEXT    NOT NULL,
    kind             TEXT    NOT NULL CHECK (kind IN ('SPEED', 'LAST_DAY')),
    discount_percent BIGINT  NOT NULL CHECK (discount_percent BETWEEN 1 AND 90),
    start_time       BIGINT  NOT NULL,
    end_time         BIGINT  NOT NULL,
    state            TEXT    NOT NULL CHECK (state IN ('ACTIVE', 'WITHDRAWN')),
    revision         BIGINT  NOT NULL,
    create_time      BIGINT  NOT NULL,
    update_time      BIGINT  NOT NULL,
    CHECK (start_time < end_time)
);

CREATE INDEX offers_by_product ON offers (product_id, seq);
CREATE INDEX offers_by_state ON offers (state, seq);
-- The core query: active offers of one customer (or of everyone) by end time.
CREATE INDEX offers_available ON offers (state, customer_id, end_time);

CREATE TABLE idempotency_keys (
    request_id  TEXT    PRIMARY KEY,
    fingerprint TEXT    NOT NULL,
    resource_id TEXT    NOT NULL,
    create_time BIGINT  NOT NULL
);
