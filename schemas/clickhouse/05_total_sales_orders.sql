-- Migration 5: v_total_sales gains the number of orders and the average order value, for the
-- Total Sales chart.
--   order_count         = live orders: the sum of the processor's per-payment-method order counts
--                         (agg_payment_methods; every order has exactly one payment method, so it is
--                         counted once, and a change of method moves it between groups);
--   average_order_value = total_sales_amount / order_count, truncated to the cent; 0 without orders.
-- The first three columns are unchanged.
--
-- A plain view cannot be replaced in place on ClickHouse 18.16 (no CREATE OR REPLACE VIEW, no
-- DROP VIEW): DROP TABLE IF EXISTS (which drops a view on 18.16 and on current ClickHouse), then
-- CREATE VIEW. Re-runnable after a crash between the two; the view is missing for that moment.
-- ClickHouse evaluates both branches of if(), hence greatest(orders, 1) under the guard.

DROP TABLE IF EXISTS {db}.v_total_sales;

CREATE VIEW {db}.v_total_sales AS
SELECT
    qty AS total_sales_quantity,
    amount AS total_sales_amount,
    amount - discount AS total_profit,
    orders AS order_count,
    if(orders = 0, toDecimal128(0, 2), amount / greatest(orders, 1)) AS average_order_value
FROM (
    SELECT
        sum(total_sales_quantity) AS qty,
        sum(total_sales_amount) AS amount,
        sum(total_discount_amount) AS discount,
        (SELECT sum(order_count) FROM {db}.agg_payment_methods FINAL) AS orders
    FROM {db}.agg_total_sales FINAL
);
