-- Idempotency keys of create calls (agora_platform::db::UnitOfWork::claim):
-- a retried request finds the resource its first attempt created.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    request_id  TEXT    PRIMARY KEY,
    fingerprint TEXT    NOT NULL,
    resource_id TEXT    NOT NULL,
    create_time BIGINT NOT NULL
);
