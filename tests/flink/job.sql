-- The Flink SQL job of tests/flink: rainbow cdc's topics read as changelog tables with Flink's own
-- `debezium-json` format (envelopes with the Connect schema: schema-include), and the two figures
-- our dashboard views show for them:
--   total_sales      = v_total_sales   (total_sales_quantity, total_sales_amount)
--   payment_methods  = v_payment_methods (payment_id, payment_method, order_count, total_sales_amount)
-- FlinkCdcTotals runs it: ${name} placeholders are replaced from its --set options, SET lines go
-- to the table configuration, every other statement is executed in order and the last one (the
-- SELECT) is collected.

-- rainbow cdc delivers at least once (a restart may repeat a transaction): Flink's documented
-- setting for such Debezium sources deduplicates on the declared primary keys.
SET 'table.exec.source.cdc-events-duplicate' = 'true';
-- Flink's documented throughput setting for aggregations: buffer input for at most
-- ${minibatch_latency} (rainbow process batches its ClickHouse writes the same way).
SET 'table.exec.mini-batch.enabled' = 'true';
SET 'table.exec.mini-batch.allow-latency' = '${minibatch_latency}';
SET 'table.exec.mini-batch.size' = '5000';

-- Only the columns the figures need; the format ignores the others. DECIMAL columns must arrive as
-- strings or numbers (cdc.decimal_handling_mode = string: see README.md).
CREATE TABLE orders (
  id BIGINT,
  customer_id BIGINT,
  payment_id BIGINT,
  PRIMARY KEY (id) NOT ENFORCED
) WITH (
  'connector' = 'kafka',
  'topic' = '${prefix}.public.orders',
  'properties.bootstrap.servers' = '${brokers}',
  'properties.group.id' = '${group}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = '${bounded_mode}',
  'format' = 'debezium-json',
  'debezium-json.schema-include' = 'true'
);

CREATE TABLE orderdetails (
  order_id BIGINT,
  product_id BIGINT,
  quantity INT,
  price DECIMAL(15, 2),
  PRIMARY KEY (order_id, product_id) NOT ENFORCED
) WITH (
  'connector' = 'kafka',
  'topic' = '${prefix}.public.orderdetails',
  'properties.bootstrap.servers' = '${brokers}',
  'properties.group.id' = '${group}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = '${bounded_mode}',
  'format' = 'debezium-json',
  'debezium-json.schema-include' = 'true'
);

CREATE TABLE payments (
  id BIGINT,
  `method` STRING,
  PRIMARY KEY (id) NOT ENFORCED
) WITH (
  'connector' = 'kafka',
  'topic' = '${prefix}.public.payments',
  'properties.bootstrap.servers' = '${brokers}',
  'properties.group.id' = '${group}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = '${bounded_mode}',
  'format' = 'debezium-json',
  'debezium-json.schema-include' = 'true'
);

-- v_total_sales: every order line's quantity and quantity x captured unit price.
CREATE TEMPORARY VIEW total_sales AS
SELECT
  SUM(CAST(quantity AS BIGINT)) AS total_sales_quantity,
  CAST(SUM(price * quantity) AS DECIMAL(38, 2)) AS total_sales_amount
FROM orderdetails;

-- v_payment_methods: per payment method, its orders (with or without lines) and their lines' amount,
-- labelled with the method's current name.
CREATE TEMPORARY VIEW order_amounts AS
SELECT order_id, SUM(price * quantity) AS amount
FROM orderdetails
GROUP BY order_id;

CREATE TEMPORARY VIEW payment_sums AS
SELECT
  o.payment_id,
  COUNT(*) AS order_count,
  CAST(SUM(COALESCE(a.amount, 0)) AS DECIMAL(38, 2)) AS total_sales_amount
FROM orders AS o
LEFT JOIN order_amounts AS a ON a.order_id = o.id
GROUP BY o.payment_id;

CREATE TEMPORARY VIEW payment_methods AS
SELECT s.payment_id, p.`method` AS payment_method, s.order_count, s.total_sales_amount
FROM payment_sums AS s
LEFT JOIN payments AS p ON p.id = s.payment_id;

-- One job for both figures (the topics are read once): one row per figure and group.
SELECT
  'total_sales' AS figure,
  CAST(NULL AS BIGINT) AS payment_id,
  CAST(NULL AS STRING) AS payment_method,
  CAST(NULL AS BIGINT) AS order_count,
  total_sales_quantity,
  total_sales_amount
FROM total_sales
UNION ALL
SELECT
  'payment_methods',
  payment_id,
  payment_method,
  order_count,
  CAST(NULL AS BIGINT),
  total_sales_amount
FROM payment_methods;
