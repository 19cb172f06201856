//! Rainbow's contracts, shared by every crate and the `rainbow` binary:
//!
//! * [`wire`]: the contract between the CDC and its consumers: commit positions, op codes, the
//!   `source` fields consumers read, topic naming, the heartbeat header;
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
pub mod wire;

pub use money::{Money, MoneyError, MoneySum};
