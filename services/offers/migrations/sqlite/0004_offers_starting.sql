-- The offers that start next: ListAvailableOffers keeps an answer until
-- the first offer that was not available yet starts, and asks for it with
-- the answer.
CREATE INDEX offers_starting ON offers (state, customer_id, start_time);
CREATE INDEX offers_starting_by_product ON offers (product_id, state, start_time);
