//! Rainbow's stream processor.
//!
//! What happens to one change event: the Kafka source ([`stream::kafka`]) reads it,
//! [`event::decode`] types it, the [`engine`] merges it into source commit order
//! ([`merge::Merger`]) and applies it to the [`core::Core`], which turns it into warehouse rows
//! (SCD2 dimensions, `fact_sales`, dashboard aggregates), and the ClickHouse sink
//! ([`stream::clickhouse`]) writes them in batches. Checkpoints ([`checkpoint`]) store the core's
//! state with every input position.
//!
//! The engine is the one loop of streaming and replay: `rainbow replay` runs it with an archive
//! source and a Parquet sink. The core and the merger are pure (no I/O, no clock).

pub mod checkpoint;
pub mod config;
pub mod core;
pub mod engine;
pub mod error;
pub mod event;
pub mod merge;
pub mod metrics;
pub mod stream;

pub use config::ProcessorConfig;
pub use error::ProcessorError;
pub use stream::{run, KafkaConnection, RunSummary};
