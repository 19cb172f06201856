//! Rainbow's contracts, shared by every crate and the `rainbow` binary:
//!
//! * [`wire`]: the contract between the CDC and its consumers: commit positions, op codes, the
//!   `source` fields consumers read, topic naming, the heartbeat header;
//! * [`postgres`]: the source schema as sqlx migrations, and the list of captured tables;
//! * [`warehouse`]: the warehouse DDL (dimensions, `fact_sales`, aggregates, dashboard views) and a
//!   connection helper that adapts to the server's capabilities;
//! * [`shape`]: the warehouse's shape, defined once: every table's row type, columns, key and
//!   version, from which the table list, the Arrow form and the data-quality checks derive;
//! * [`money`]: exact money types (never floating point);
//! * [`pricing`]: the seed's line arithmetic (promotions, discounts, extended amounts);
//! * [`rng`]: a seeded pseudo-random generator for reference data and load generation;
//! * [`seed`]: deterministic reference data shaped like the seed's master dataset;
//! * [`time`]: calendar arithmetic of event times, days and dates.

pub mod money;
pub mod postgres;
pub mod pricing;
pub mod rng;
pub mod seed;
pub mod setting;
pub mod shape;
pub mod time;
pub mod warehouse;
pub mod wire;

pub use money::{Money, MoneyError, MoneySum};
