-- Idempotency keys of the order API (`Idempotency-Key` header on POST /api/v1/orders).
--
-- A key is inserted in the same transaction as the order it creates, so a key exists if and only
-- if its order does. `request` is the validated request in canonical JSON: a retry with the same
-- key must carry an equal request to get the original order back. This table belongs to the API,
-- not to the captured source schema: it is not in the CDC publication.
CREATE TABLE api_idempotency_keys (
    key         TEXT PRIMARY KEY CHECK (length(key) BETWEEN 1 AND 255),
    request     JSONB NOT NULL,
    order_id    BIGINT REFERENCES orders (id) ON DELETE CASCADE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX api_idempotency_keys_order_id_idx ON api_idempotency_keys (order_id);
