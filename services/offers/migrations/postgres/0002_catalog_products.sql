-- What offers knows of the catalog's products: whether each is on sale. Kept
-- from the catalog's change feed, and from the catalog's answer when a new
-- offer names a product the feed has not brought yet. A product never
-- returns to sale, so a row only ever goes from on sale to not.

CREATE TABLE catalog_products (
    product_id TEXT    PRIMARY KEY,
    on_sale    BOOLEAN NOT NULL
);
