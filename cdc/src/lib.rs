//! The Debezium-compatible CDC reader: PostgreSQL logical replication (pgoutput) to Kafka.
//! Not implemented yet; `rainbow cdc` says so.
