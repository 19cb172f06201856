-- Sold counts applied in batches instead of by every order.
--
-- Each order used to add its quantities to `products.sold_count` in its own statement, which held
-- the row lock of every product it sold until its commit was flushed: orders that share a popular
-- product queued on it one commit after another. An order now appends its quantities here (no
-- shared row is written, so orders share products without waiting for each other), and the API
-- adds what is pending to `products.sold_count` every `api.sold_count_interval_ms`, in one
-- transaction that deletes the rows it applied: each quantity is counted exactly once, a moment
-- after its order commits. The table is not captured: the CDC sees the products' updates.
CREATE TABLE api_sold_count_pending (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    product_id  BIGINT NOT NULL,
    quantity    INTEGER NOT NULL CHECK (quantity > 0)
);
