-- Dashboard aggregates, maintained incrementally (with retractions) by the processor.
-- Each processor instance owns a `partition` (its share of the fact topics) and writes one partial
-- row per (partition, group); the v_* views sum the partial rows of all partitions.
-- Labels (names, category) are those of the group's current dimension version; the views take the
-- label with the highest version across partitions.

CREATE TABLE IF NOT EXISTS {db}.agg_total_sales (
    partition Int32,
    total_sales_quantity Int64,
    total_sales_amount Decimal(38, 2),
    total_discount_amount Decimal(38, 2),
    version UInt64
) ENGINE = ReplacingMergeTree(version) ORDER BY partition;

-- day_of_week: 1 = Monday .. 7 = Sunday, of the order's date (created_at, UTC).
CREATE TABLE IF NOT EXISTS {db}.agg_sales_by_day_of_week (
    partition Int32,
    day_of_week UInt8,
    total_sales_quantity Int64,
    total_sales_amount Decimal(38, 2),
    total_discount_amount Decimal(38, 2),
    version UInt64
) ENGINE = ReplacingMergeTree(version) ORDER BY (partition, day_of_week);

CREATE TABLE IF NOT EXISTS {db}.agg_top_sellers (
    partition Int32,
    seller_id Int64,
    seller_name String,
    total_sales_quantity Int64,
    total_sales_amount Decimal(38, 2),
    total_discount_amount Decimal(38, 2),
    version UInt64
) ENGINE = ReplacingMergeTree(version) ORDER BY (partition, seller_id);

CREATE TABLE IF NOT EXISTS {db}.agg_product_profit (
    partition Int32,
    product_id Int64,
    product_name String,
    category String,
    total_sales_quantity Int64,
    total_sales_amount Decimal(38, 2),
    total_discount_amount Decimal(38, 2),
    version UInt64
) ENGINE = ReplacingMergeTree(version) ORDER BY (partition, product_id);

CREATE TABLE IF NOT EXISTS {db}.agg_payment_methods (
    partition Int32,
    payment_id Int64,
    payment_method String,
    order_count Int64,
    total_sales_amount Decimal(38, 2),
    version UInt64
) ENGINE = ReplacingMergeTree(version) ORDER BY (partition, payment_id);

CREATE TABLE IF NOT EXISTS {db}.agg_customer_ranking (
    partition Int32,
    customer_id Int64,
    customer_name String,
    order_count Int64,
    total_sales_quantity Int64,
    total_sales_amount Decimal(38, 2),
    version UInt64
) ENGINE = ReplacingMergeTree(version) ORDER BY (partition, customer_id);
