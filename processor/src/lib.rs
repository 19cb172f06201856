//! The stream processor: a pure, deterministic core (SCD2 dimensions, facts, aggregates) plus
//! its Kafka source and ClickHouse sink. Not implemented yet; `rainbow process` says so.
