-- Orders already in the database when `rainbow cdc` starts: they reach Kafka in its initial
-- snapshot (op 'r'). 20 orders of 1-4 lines at the products' current prices, one per customer and
-- payment method in turn.
INSERT INTO orders (customer_id, payment_id, created_at)
SELECT 1 + (n * 7) % 100, 1 + n % 4, timestamptz '2026-11-02 10:00:00+00' + n * interval '3 hours'
FROM generate_series(1, 20) AS n;

INSERT INTO orderdetails (order_id, product_id, quantity, price, promotion_id)
SELECT o.id, p.id, 1 + (o.id + p.id) % 5, p.price, p.promotion_id
FROM orders AS o
JOIN LATERAL (
  SELECT id, price, promotion_id FROM products
  WHERE id > (o.id * 137) % 2900 ORDER BY id LIMIT 1 + o.id % 4
) AS p ON true;
