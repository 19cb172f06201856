//! Rainbow's replay, the batch layer, which is no separate code: the master dataset that the
//! archiver (`rainbow-archive`) keeps, run through the processor's own engine and core into every
//! warehouse table as Parquet (`rainbow replay`, [`replay`]).

pub mod config;
pub mod error;
pub mod replay;

pub use config::ReplayConfig;
pub use error::ReplayError;
