-- The six dashboard views (one per seed chart). They read the aggregates with FINAL, so a row
-- delivered twice counts once. Inner aliases differ from column names on purpose: ClickHouse 18.16
-- resolves an alias equal to a column name inside aggregate functions.

CREATE VIEW IF NOT EXISTS {db}.v_total_sales AS
SELECT
    qty AS total_sales_quantity,
    amount AS total_sales_amount,
    amount - discount AS total_profit
FROM (
    SELECT
        sum(total_sales_quantity) AS qty,
        sum(total_sales_amount) AS amount,
        sum(total_discount_amount) AS discount
    FROM {db}.agg_total_sales FINAL
);

CREATE VIEW IF NOT EXISTS {db}.v_sales_by_day_of_week AS
SELECT
    dow AS day_of_week,
    ['Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday', 'Sunday'][dow] AS day_name,
    qty AS total_sales_quantity,
    amount AS total_sales_amount,
    if(grand_total = 0, 0, round(100 * toFloat64(amount) / grand_total, 3)) AS pct_total_sales_amount
FROM (
    SELECT
        day_of_week AS dow,
        sum(total_sales_quantity) AS qty,
        sum(total_sales_amount) AS amount,
        (SELECT toFloat64(sum(total_sales_amount)) FROM {db}.agg_sales_by_day_of_week FINAL) AS grand_total
    FROM {db}.agg_sales_by_day_of_week FINAL
    GROUP BY day_of_week
)
WHERE qty != 0
ORDER BY total_sales_amount DESC, day_of_week;

CREATE VIEW IF NOT EXISTS {db}.v_top_sellers AS
SELECT
    sid AS seller_id,
    sname AS seller_name,
    qty AS total_sales_quantity,
    amount AS total_sales_amount,
    amount - discount AS total_profit
FROM (
    SELECT
        seller_id AS sid,
        argMax(seller_name, version) AS sname,
        sum(total_sales_quantity) AS qty,
        sum(total_sales_amount) AS amount,
        sum(total_discount_amount) AS discount
    FROM {db}.agg_top_sellers FINAL
    GROUP BY seller_id
)
WHERE qty != 0
ORDER BY total_sales_amount DESC, seller_id;

CREATE VIEW IF NOT EXISTS {db}.v_top_products_by_category AS
SELECT
    cat AS category,
    pid AS product_id,
    pname AS product_name,
    qty AS total_sales_quantity,
    amount AS total_sales_amount,
    amount - discount AS total_profit
FROM (
    SELECT
        product_id AS pid,
        argMax(category, version) AS cat,
        argMax(product_name, version) AS pname,
        sum(total_sales_quantity) AS qty,
        sum(total_sales_amount) AS amount,
        sum(total_discount_amount) AS discount
    FROM {db}.agg_product_profit FINAL
    GROUP BY product_id
)
WHERE qty != 0
ORDER BY category, total_profit DESC, product_id
LIMIT 5 BY category;

CREATE VIEW IF NOT EXISTS {db}.v_payment_methods AS
SELECT
    pid AS payment_id,
    method AS payment_method,
    orders AS order_count,
    amount AS total_sales_amount,
    if(all_orders = 0, 0, round(100 * orders / all_orders, 3)) AS pct_orders
FROM (
    SELECT
        payment_id AS pid,
        argMax(payment_method, version) AS method,
        sum(order_count) AS orders,
        sum(total_sales_amount) AS amount,
        (SELECT toFloat64(sum(order_count)) FROM {db}.agg_payment_methods FINAL) AS all_orders
    FROM {db}.agg_payment_methods FINAL
    GROUP BY payment_id
)
WHERE orders != 0
ORDER BY order_count DESC, payment_id;

-- customer_rank: 1 for the customer with the highest total purchases (ties broken by customer_id).
-- rowNumberInAllBlocks() over an ordered subquery, because 18.16 has no window functions.
CREATE VIEW IF NOT EXISTS {db}.v_customer_ranking AS
SELECT
    toUInt64(rowNumberInAllBlocks() + 1) AS customer_rank,
    customer_id,
    customer_name,
    order_count,
    total_sales_quantity,
    total_sales_amount
FROM (
    SELECT
        cid AS customer_id,
        cname AS customer_name,
        orders AS order_count,
        qty AS total_sales_quantity,
        amount AS total_sales_amount
    FROM (
        SELECT
            customer_id AS cid,
            argMax(customer_name, version) AS cname,
            sum(order_count) AS orders,
            sum(total_sales_quantity) AS qty,
            sum(total_sales_amount) AS amount
        FROM {db}.agg_customer_ranking FINAL
        GROUP BY customer_id
    )
    WHERE orders != 0
    ORDER BY total_sales_amount DESC, customer_id
);
