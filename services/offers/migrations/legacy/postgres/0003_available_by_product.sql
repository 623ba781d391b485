-- ListAvailableOffers for one product: without this index the planner reads
-- every active offer of the customer and of everyone, then sorts them.
CREATE INDEX offers_available_by_product ON offers (product_id, state, end_time);
