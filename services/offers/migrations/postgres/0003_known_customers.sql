-- What offers knows of customers: whether each is registered or was
-- deleted. Kept from customers' change feed, and from customers' answer when
-- a new personal offer names a customer the feed has not brought yet. A
-- deleted customer never comes back, so a row only ever goes from
-- registered to deleted, and a deletion is kept even for a customer offers
-- had not heard of (a tombstone): a late answer cannot bring them back.

CREATE TABLE known_customers (
    customer_id TEXT    PRIMARY KEY,
    deleted     BOOLEAN NOT NULL
);
