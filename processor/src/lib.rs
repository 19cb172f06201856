//! Rainbow's stream processor.
//!
//! What happens to one change event: the Kafka source ([`pipeline`]) reads it, [`event::decode`]
//! types it, the [`merge::Merger`] releases it in source commit order once every input has
//! progressed past it, the [`core::Core`] turns it into warehouse rows (SCD2 dimensions,
//! `fact_sales`, dashboard aggregates), and the ClickHouse sink ([`sink`]) writes them in batches.
//! Checkpoints ([`checkpoint`]) store the core's state with every input position.
//!
//! The core and the merger are pure (no I/O, no clock): the replay runs the very same code over
//! the archived log.

pub mod checkpoint;
pub mod config;
pub mod core;
pub mod error;
pub mod event;
pub mod merge;
pub mod metrics;
pub mod pipeline;
pub mod sink;
pub mod workload;

pub use config::ProcessorConfig;
pub use error::ProcessorError;
pub use pipeline::{run, KafkaConnection, RunSummary};
