-- Customers, SQLite dialect.
-- `seq` orders rows by creation and is the keyset cursor of ListCustomers.
-- `email` is kept as the customer wrote it; `email_key` is its lower-cased
-- form, and its uniqueness is what makes emails unique regardless of case.
-- Times are microseconds since the Unix epoch.

CREATE TABLE customers (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    customer_id TEXT    NOT NULL UNIQUE,
    given_name  TEXT    NOT NULL,
    family_name TEXT    NOT NULL,
    email       TEXT    NOT NULL,
    email_key   TEXT    NOT NULL,
    revision    INTEGER NOT NULL,
    create_time INTEGER NOT NULL,
    update_time INTEGER NOT NULL,
    CONSTRAINT customers_email_key_unique UNIQUE (email_key)
);
