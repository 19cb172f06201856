//! Rainbow's contracts, shared by every crate and the `rainbow` binary:
//!
//! * [`postgres`]: the source schema as sqlx migrations, and the list of captured tables;
//! * [`warehouse`]: the warehouse DDL (dimensions, `fact_sales`, aggregates, dashboard views) and a
//!   connection helper that adapts to the server's capabilities;
//! * [`rows`]: the Rust types of the warehouse rows, as written to ClickHouse;
//! * [`money`]: exact money types (never floating point);
//! * [`pricing`]: the seed's line arithmetic (promotions, discounts, extended amounts);
//! * [`rng`]: a seeded pseudo-random generator for reference data and load generation;
//! * [`seed`]: deterministic reference data shaped like the seed's master dataset.

pub mod money;
pub mod postgres;
pub mod pricing;
pub mod rng;
pub mod rows;
pub mod seed;
pub mod setting;
pub mod warehouse;

pub use money::{Money, MoneyError, MoneySum};

/// Kafka header of the CDC's heartbeat records: a WAL position (decimal) before which every
/// transaction's change events are in Kafka (acknowledged). The processor's merge uses it to
/// learn that an idle partition has nothing earlier to deliver. Debezium has no such header;
/// consumers that do not know it ignore it.
pub const HEARTBEAT_ACKED_LSN_HEADER: &str = "rainbow.acked_lsn";
