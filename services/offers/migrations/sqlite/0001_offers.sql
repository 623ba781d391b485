-- Timed offers, SQLite dialect. product_id and customer_id are ids owned by
-- the catalog and customers contexts; nothing else of theirs is kept here.
-- customer_id '' means an offer for every customer. Times are microseconds.

CREATE TABLE offers (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    offer_id         TEXT    NOT NULL UNIQUE,
    product_id       TEXT    NOT NULL,
    customer_id      TEXT    NOT NULL,
    kind             TEXT    NOT NULL CHECK (kind IN ('SPEED', 'LAST_DAY')),
    discount_percent INTEGER NOT NULL CHECK (discount_percent BETWEEN 1 AND 90),
    start_time       INTEGER NOT NULL,
    end_time         INTEGER NOT NULL,
    state            TEXT    NOT NULL CHECK (state IN ('ACTIVE', 'WITHDRAWN')),
    revision         INTEGER NOT NULL,
    create_time      INTEGER NOT NULL,
    update_time      INTEGER NOT NULL,
    CHECK (start_time < end_time)
);

CREATE INDEX offers_by_product ON offers (product_id, seq);
CREATE INDEX offers_by_state ON offers (state, seq);
-- The core query: active offers of one customer (or of everyone) by end time.
CREATE INDEX offers_available ON offers (state, customer_id, end_time);

-- ListAvailableOffers for one product: without this index the planner reads
-- every active offer of the customer and of everyone, then sorts them.
CREATE INDEX offers_available_by_product ON offers (product_id, state, end_time);
