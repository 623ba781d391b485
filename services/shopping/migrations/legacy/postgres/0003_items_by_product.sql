-- The items of one product across every list: a discontinued product's
-- items are found through this index, not by reading every item.
CREATE INDEX list_items_by_product ON list_items (product_id);
