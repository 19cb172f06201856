-- Rainbow's warehouse in ClickHouse: dimensions (SCD Type 2) and the date dimension.
--
-- Every statement here must run on ClickHouse 18.16 (Debian's package, the local stack) and on
-- current ClickHouse (chdb in the test suite): no window functions, no Date32/DateTime64/Bool,
-- ReplacingMergeTree(version) with ORDER BY, FINAL and argMax only.
--
-- Shared conventions of the tables written by the processor:
--   * `<entity>_key`: the surrogate key, a deterministic function of the data (hex of a hash of the
--     natural id and the version's opening commit position), never random;
--   * `version`: monotonic in source commit order (derived from the commit position of the event
--     that produced the row), so re-delivery and replay converge to the same rows;
--   * `is_deleted` = 1 marks a retracted row; readers use FINAL and filter it out;
--   * `valid_to` = 2100-01-01 00:00:00 and `is_current` = 1 for the open version;
--   * times are UTC commit times of the source transaction, never the wall clock;
--   * money: Decimal(18,2) VND per row, Decimal(38,2) for sums.
-- `{db}` is replaced by the configured database name before execution.

CREATE DATABASE IF NOT EXISTS {db};

CREATE TABLE IF NOT EXISTS {db}.dim_customers (
    customer_key String,
    customer_id Int64,
    name String,
    email String,
    phone String,
    address String,
    valid_from DateTime,
    valid_to DateTime,
    is_current UInt8,
    version UInt64,
    is_deleted UInt8
) ENGINE = ReplacingMergeTree(version) ORDER BY customer_key;

CREATE TABLE IF NOT EXISTS {db}.dim_products (
    product_key String,
    product_id Int64,
    name String,
    price Decimal(18, 2),
    original_price Decimal(18, 2),
    rating_average Decimal(9, 2),
    review_count Int64,
    sold_count Int64,
    category String,
    brand String,
    seller_id Int64,
    valid_from DateTime,
    valid_to DateTime,
    is_current UInt8,
    version UInt64,
    is_deleted UInt8
) ENGINE = ReplacingMergeTree(version) ORDER BY product_key;

CREATE TABLE IF NOT EXISTS {db}.dim_sellers (
    seller_key String,
    seller_id Int64,
    name String,
    valid_from DateTime,
    valid_to DateTime,
    is_current UInt8,
    version UInt64,
    is_deleted UInt8
) ENGINE = ReplacingMergeTree(version) ORDER BY seller_key;

CREATE TABLE IF NOT EXISTS {db}.dim_promotions (
    promotion_key String,
    promotion_id Int64,
    name String,
    coupon_type String,
    price_treatment Decimal(18, 2),
    valid_from DateTime,
    valid_to DateTime,
    is_current UInt8,
    version UInt64,
    is_deleted UInt8
) ENGINE = ReplacingMergeTree(version) ORDER BY promotion_key;

CREATE TABLE IF NOT EXISTS {db}.dim_payments (
    payment_key String,
    payment_id Int64,
    method String,
    valid_from DateTime,
    valid_to DateTime,
    is_current UInt8,
    version UInt64,
    is_deleted UInt8
) ENGINE = ReplacingMergeTree(version) ORDER BY payment_key;

-- Generated, one row per calendar day; date_key = YYYYMMDD; day_of_week 1 = Monday .. 7 = Sunday.
CREATE TABLE IF NOT EXISTS {db}.dim_dates (
    date_key UInt32,
    date Date,
    day_of_week UInt8,
    day_name String,
    day_of_month UInt8,
    month UInt8,
    month_name String,
    quarter UInt8,
    year UInt16,
    is_weekend UInt8
) ENGINE = ReplacingMergeTree() ORDER BY date_key;
