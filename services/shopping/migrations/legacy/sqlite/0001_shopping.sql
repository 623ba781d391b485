-- Shopping lists, SQLite dialect. customer_id and product_id are ids owned
-- by the customers and catalog contexts; nothing else of theirs is kept here.
-- `seq` orders a customer's lists by creation and is the keyset cursor of
-- ListShoppingLists. Times are microseconds since the Unix epoch.

CREATE TABLE shopping_lists (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    list_id     TEXT    NOT NULL UNIQUE,
    customer_id TEXT    NOT NULL,
    title       TEXT    NOT NULL,
    revision    INTEGER NOT NULL,
    create_time INTEGER NOT NULL,
    update_time INTEGER NOT NULL
);

CREATE INDEX shopping_lists_by_customer ON shopping_lists (customer_id, seq);

-- One row per product on a list. `position` keeps the order in which the
-- products were first added; removing one leaves a gap, which is harmless.
-- `available` is 0 or 1: false once the catalog discontinued the product.
CREATE TABLE list_items (
    list_id    TEXT    NOT NULL REFERENCES shopping_lists (list_id) ON DELETE CASCADE,
    product_id TEXT    NOT NULL,
    quantity   INTEGER NOT NULL CHECK (quantity BETWEEN 1 AND 1000),
    available  INTEGER NOT NULL CHECK (available IN (0, 1)),
    position   INTEGER NOT NULL,
    PRIMARY KEY (list_id, product_id),
    UNIQUE (list_id, position)
);
