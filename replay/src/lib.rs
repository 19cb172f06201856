//! Rainbow's batch layer, which is no separate code: the archive of the log and the replay of
//! it through the processor's own core.
//!
//! * [`archive`]: `rainbow archive`, Kafka → the immutable master dataset ([`master`]) in object
//!   storage (`rainbow_runtime::store`), one Parquet segment per partition, offset range and day.
//! * [`replay`]: `rainbow replay`, master dataset → merge by commit order → `Core` → every
//!   warehouse table as Parquet (`rainbow_schemas::shape::arrow`).

pub mod archive;
pub mod config;
pub mod error;
pub mod master;
pub mod metrics;
pub mod replay;

pub use config::{ArchiveConfig, ReplayConfig};
pub use error::ReplayError;
