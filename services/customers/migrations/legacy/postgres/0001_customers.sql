-- Customers, PostgreSQL dialect.
-- `seq` orders rows by creation and is the keyset cursor of ListCustomers.
-- `email` is kept as the customer wrote it; `email_key` is its lower-cased
-- form, and its uniqueness is what makes emails unique regardless of case.
-- Times are microseconds since the Unix epoch.

CREATE TABLE customers (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id TEXT   NOT NULL UNIQUE,
    given_name  TEXT   NOT NULL,
    family_name TEXT   NOT NULL,
    email       TEXT   NOT NULL,
    email_key   TEXT   NOT NULL,
    revision    BIGINT NOT NULL,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL,
    -- Named: the store recognises a duplicate email by this name.
    CONSTRAINT customers_email_key_unique UNIQUE (email_key)
);
