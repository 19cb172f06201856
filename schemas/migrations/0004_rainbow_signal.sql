-- The signal table: how a user asks `rainbow cdc` for work while it streams, in the shape of
-- Debezium's signal table (id, type, data). It is captured like the other tables, so its rows
-- travel through the log in commit order:
--
--   * a user inserts `execute-snapshot` with data
--     `{"data-collections": ["public.customers"], "type": "incremental"}` to take an on-demand,
--     chunked snapshot of those tables without locking them or pausing the stream;
--   * `rainbow cdc` inserts `snapshot-table-done` (data `{"data-collection": "public.customers",
--     "signal": "<id>"}`) once a table's last chunk is in Kafka, which tells the processor that
--     the table's rows not delivered since the request are gone from the source.

CREATE TABLE rainbow_signal (
    id    VARCHAR(64) PRIMARY KEY,
    type  VARCHAR(32) NOT NULL,
    data  TEXT
);

ALTER TABLE rainbow_signal REPLICA IDENTITY FULL;
