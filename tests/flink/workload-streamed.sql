-- The changes `rainbow cdc` streams (ops c, u, d): inserts, updates, deletes and primary-key
-- changes of orders, order lines and payment methods, in several transactions. Every statement
-- changes what v_total_sales or v_payment_methods shows.

-- Inserts: 30 orders of 1-5 lines in one transaction, and a new payment method with orders.
BEGIN;
INSERT INTO orders (customer_id, payment_id, created_at)
SELECT 1 + (n * 13) % 100, 1 + n % 4, timestamptz '2026-11-10 08:00:00+00' + n * interval '97 minutes'
FROM generate_series(1, 30) AS n;
INSERT INTO orderdetails (order_id, product_id, quantity, price, promotion_id)
SELECT o.id, p.id, 1 + (o.id * 3 + p.id) % 7, p.price, p.promotion_id
FROM orders AS o
JOIN LATERAL (
  SELECT id, price, promotion_id FROM products
  WHERE id > (o.id * 211) % 2900 ORDER BY id LIMIT 1 + o.id % 5
) AS p ON true
WHERE NOT EXISTS (SELECT 1 FROM orderdetails AS d WHERE d.order_id = o.id);
COMMIT;

INSERT INTO payments (method) VALUES ('Flink test voucher');
INSERT INTO orders (customer_id, payment_id, created_at)
SELECT 42, (SELECT id FROM payments WHERE method = 'Flink test voucher'), timestamptz '2026-11-20 12:00:00+00'
FROM generate_series(1, 3);
INSERT INTO orderdetails (order_id, product_id, quantity, price)
SELECT o.id, 500 + o.id % 50, 2, 125000.50
FROM orders AS o WHERE o.payment_id = (SELECT id FROM payments WHERE method = 'Flink test voucher');

-- An order without lines (counted by v_payment_methods, nothing in v_total_sales).
INSERT INTO orders (id, customer_id, payment_id, created_at)
VALUES (900001, 7, 2, timestamptz '2026-11-21 09:30:00+00');

-- Updates: quantities and captured prices of lines, an order's payment method, a method's name.
UPDATE orderdetails SET quantity = quantity + 3 WHERE order_id % 5 = 0;
UPDATE orderdetails SET price = price + 1234.56 WHERE order_id % 7 = 1;
UPDATE orders SET payment_id = 1 + payment_id % 4 WHERE id IN (SELECT id FROM orders WHERE id < 900000 ORDER BY id LIMIT 3);
UPDATE payments SET method = method || ' (renamed)' WHERE id = 3;

-- Deletes: single lines, then whole orders (their lines go by ON DELETE CASCADE).
DELETE FROM orderdetails
WHERE (order_id, product_id) IN (SELECT order_id, product_id FROM orderdetails ORDER BY order_id, product_id LIMIT 4);
DELETE FROM orders WHERE id IN (SELECT id FROM orders WHERE id < 900000 ORDER BY id DESC LIMIT 2);

-- Primary-key changes (delete + tombstone + create in Debezium's encoding): an order's id (the
-- order without lines: orderdetails' foreign key has no ON UPDATE CASCADE), a line moved to another
-- product, and a line moved to another order.
UPDATE orders SET id = 900002 WHERE id = 900001;
UPDATE orderdetails SET product_id = 2999
WHERE (order_id, product_id) = (SELECT order_id, product_id FROM orderdetails
                                WHERE order_id <> 5 AND product_id <> 2999 ORDER BY order_id, product_id LIMIT 1);
UPDATE orderdetails SET order_id = 5
WHERE (order_id, product_id) = (SELECT order_id, product_id FROM orderdetails AS d
                                WHERE order_id > 10
                                  AND NOT EXISTS (SELECT 1 FROM orderdetails AS e WHERE e.order_id = 5 AND e.product_id = d.product_id)
                                ORDER BY order_id DESC, product_id LIMIT 1);
