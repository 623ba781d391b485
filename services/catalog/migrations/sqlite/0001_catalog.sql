-- Families and products of the catalog, SQLite dialect.
-- `seq` orders rows by creation and is the keyset cursor of every list.
-- Times are microseconds since the Unix epoch.

CREATE TABLE families (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    family_id    TEXT    NOT NULL UNIQUE,
    display_name TEXT    NOT NULL,
    description  TEXT    NOT NULL,
    create_time  INTEGER NOT NULL
);

CREATE TABLE products (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    product_id    TEXT    NOT NULL UNIQUE,
    display_name  TEXT    NOT NULL,
    description   TEXT    NOT NULL,
    family_id     TEXT    NOT NULL REFERENCES families (family_id),
    currency_code TEXT    NOT NULL,
    amount_minor  INTEGER NOT NULL CHECK (amount_minor >= 0),
    state         TEXT    NOT NULL CHECK (state IN ('ACTIVE', 'DISCONTINUED')),
    revision      INTEGER NOT NULL,
    create_time   INTEGER NOT NULL,
    update_time   INTEGER NOT NULL
);

CREATE INDEX products_by_family ON products (family_id, seq);
CREATE INDEX products_by_state ON products (state, seq);
