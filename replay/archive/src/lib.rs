//! Rainbow's archiver: the batch layer's input, which is nothing but the log kept for ever.
//!
//! * [`archiver`]: `rainbow archive`, every record of the CDC topics into the immutable master
//!   dataset in object storage (`rainbow_runtime::store`), exactly once per offset;
//! * [`writers`]: the threads that append the archiver's segments to the changelog tables;
//! * [`master`]: the master dataset's format, one Parquet segment per partition, offset range and
//!   day: what the archiver writes and the replay (`rainbow-replay`) reads.

pub mod archiver;
pub mod config;
pub mod error;
pub mod master;
pub mod metrics;
pub mod writers;

pub use config::ArchiveConfig;
pub use error::ArchiveError;
