-- What shopping knows of its upstreams' products and customers, kept from
-- their change feeds, and from their answers when a list names a product or
-- a customer the feeds have not brought yet. A new item's product and a
-- new list's customer are checked against these rows, in the transaction
-- that writes the item or the list.
--
-- A product never returns to sale and a deleted customer never comes back,
-- so a row only ever goes from on sale to not, or from registered to
-- deleted; a discontinuation or a deletion is kept even for a product or a
-- customer shopping had not heard of (a tombstone), so a late answer cannot
-- undo it.

CREATE TABLE catalog_products (
    product_id TEXT    PRIMARY KEY,
    on_sale    BOOLEAN NOT NULL
) WITHOUT ROWID;

CREATE TABLE known_customers (
    customer_id TEXT    PRIMARY KEY,
    deleted     BOOLEAN NOT NULL
) WITHOUT ROWID;
