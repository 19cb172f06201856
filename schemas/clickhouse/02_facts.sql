-- fact_sales: one row per order line (the grain: order id + product id), measures as in the seed:
--   extended_sales_amount    = sales_quantity * regular_unit_price
--   discount_unit_price      = 'Percentage': price_treatment * price / 100; 'Fixed Amount': price_treatment * 1000
--   net_unit_price           = regular_unit_price - discount_unit_price
--   extended_discount_amount = sales_quantity * discount_unit_price
-- Dimension keys are those of the versions valid when the order committed (as-of join).
-- An update or delete of a line writes the same (order_transaction, product_id) with a higher version.
CREATE TABLE IF NOT EXISTS {db}.fact_sales (
    date_key UInt32,
    product_key String,
    seller_key String,
    promotion_key String,
    customer_key String,
    payment_key String,
    order_transaction Int64,
    product_id Int64,
    sales_quantity Int64,
    regular_unit_price Decimal(18, 2),
    discount_unit_price Decimal(18, 2),
    net_unit_price Decimal(18, 2),
    extended_sales_amount Decimal(18, 2),
    extended_discount_amount Decimal(18, 2),
    version UInt64,
    is_deleted UInt8
) ENGINE = ReplacingMergeTree(version) ORDER BY (order_transaction, product_id);
