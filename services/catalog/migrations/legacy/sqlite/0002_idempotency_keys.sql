-- The idempotency keys of CreateProduct move to the table every service
-- shares the shape of (agora_platform::idempotency).
ALTER TABLE product_requests RENAME TO idempotency_keys;
ALTER TABLE idempotency_keys RENAME COLUMN product_id TO resource_id;
