-- Families and products of the catalog, PostgreSQL dialect.
-- `seq` orders rows by creation and is the keyset cursor of every list.
-- Times are microseconds since the Unix epoch.

CREATE TABLE families (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    family_id    TEXT   NOT NULL UNIQUE,
    display_name TEXT   NOT NULL,
    description  TEXT   NOT NULL,
    create_time  BIGINT NOT NULL
);

CREATE TABLE products (
    seq           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    product_id    TEXT   NOT NULL UNIQUE,
    display_name  TEXT   NOT NULL,
    description   TEXT   NOT NULL,
    family_id     TEXT   NOT NULL REFERENCES families (family_id),
    currency_code TEXT   NOT NULL,
    amount_minor  BIGINT NOT NULL CHECK (amount_minor >= 0),
    state         TEXT   NOT NULL CHECK (state IN ('ACTIVE', 'DISCONTINUED')),
    revision      BIGINT NOT NULL,
    create_time   BIGINT NOT NULL,
    update_time   BIGINT NOT NULL
);

CREATE INDEX products_by_family ON products (family_id, seq);
CREATE INDEX products_by_state ON products (state, seq);

-- Idempotency keys of CreateProduct: a retried request finds its product.
CREATE TABLE product_requests (
    request_id  TEXT   PRIMARY KEY,
    fingerprint TEXT   NOT NULL,
    product_id  TEXT   NOT NULL,
    create_time BIGINT NOT NULL
);
