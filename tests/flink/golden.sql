-- tests/flink/golden: what real Debezium 3.2.7 wrote for tests/debezium/workload.sql's
-- golden_types table (tests/debezium/golden/*.jsonl), read with the same Flink format and options
-- as job.sql. The numeric columns: amount numeric(15,2), ratio numeric(3,2).
SET 'table.exec.source.cdc-events-duplicate' = 'true';

CREATE TABLE golden_types (
  id BIGINT,
  amount DECIMAL(15, 2),
  ratio DECIMAL(3, 2),
  label STRING,
  PRIMARY KEY (id) NOT ENFORCED
) WITH (
  'connector' = 'kafka',
  'topic' = '${topic}',
  'properties.bootstrap.servers' = '${brokers}',
  'properties.group.id' = '${group}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset',
  'format' = 'debezium-json',
  'debezium-json.schema-include' = 'true'
);

SELECT id, amount, ratio, label FROM golden_types;
